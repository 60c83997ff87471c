"""Metrics of reference-based search in video.

Inputs are plain Python structures, so the model and a prediction file feed the same code:

- ground truth of one video: ``{frame_index: (x1, y1, x2, y2)}``, at most one target box per frame, in
  original-frame pixels;
- predictions of one video: ``{frame_index: value}`` where ``value`` is one box ``(x1, y1, x2, y2)`` (score
  1.0), one scored box ``(x1, y1, x2, y2, score)`` (the output of :mod:`refdet_edge.evaluation.temporal`),
  or a list / ``(N, 4|5)`` array of such boxes (raw detector output, or a prediction file as read by
  :func:`load_predictions`);
- the number of frames of each video, so that frames without a ground-truth box (background frames) are
  known, and its frame rate.

Definitions (all boxes xyxy, IoU on continuous coordinates as in COCO):

- **ST-IoU** of a video: the sum over frames where both ground truth and prediction have a box of their IoU,
  divided by the number of frames where either has a box. The prediction of a frame is its highest-scoring box
  with ``score >= score_threshold``. When neither ever has a box the video scores 1.0 (nothing to find, nothing
  reported). The overall ST-IoU is the unweighted mean over videos.
- **mAP@0.5** and **mAP@0.5:0.95**: faster-coco-eval's COCO bbox evaluation over every prediction (no score
  threshold), each frame of each video its own image, so boxes are matched inside their frame only. A
  prediction on a background frame is a false positive. Undefined (``None``) when there is no ground-truth box.
- **Precision, recall, F1** at the operating point: predictions with ``score >= score_threshold``; in a frame
  with a ground-truth box, one prediction with IoU >= 0.5 is a true positive, every other prediction is a false
  positive; a ground-truth box without such a prediction is a false negative. F1 = 2TP / (2TP + FP + FN).
- **False positives per background frame**: predictions on background frames / number of background frames.
  **False positives per minute**: all false positives (background or mislocalised) / minutes of video.
- **Small-object recall**: recall over ground-truth boxes whose longer side is under 32 px.

A ratio whose denominator is zero is ``None`` (``null`` in JSON), never a made-up number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from refdet_edge.data.annotations import (
    DETECTIONS_KEY,
    Box,
    DatasetError,
    Predictions,
    load_detections,
    save_annotations,
    validate_box,
    where,
)
from refdet_edge.evaluation.settings import DEFAULT_SCORE_THRESHOLD

DEFAULT_FPS = 25.0
MATCH_IOU = 0.5
SMALL_OBJECT_MAX_SIDE = 32.0

Detections = list[tuple[Box, float]]  # one frame's boxes with their scores, highest score first

_COUNT_KEYS = (
    "frames",
    "background_frames",
    "gt_frames",
    "pred_frames",
    "true_positives",
    "false_positives",
    "false_negatives",
    "background_false_positives",
    "small_objects",
    "small_objects_found",
)


def paired_iou(boxes1: np.ndarray | Iterable, boxes2: np.ndarray | Iterable) -> np.ndarray:
    """IoU of each xyxy box in ``boxes1`` with the box at the same position in ``boxes2``: ``(N, 4) -> (N,)``.

    Continuous coordinates as in COCO (no +1 pixel); 0 where both boxes are empty.
    """
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    if a.shape != b.shape:
        raise ValueError(f"paired_iou: {len(a)} boxes against {len(b)}")
    iw = (np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])).clip(min=0)
    ih = (np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])).clip(min=0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _frame_index(frame: object, num_frames: int, source: str, video_id: str) -> int:
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise DatasetError(f"{where(source, video_id, 'frame')}: expected an integer index, got {frame!r}")
    if not 0 <= frame < num_frames:
        raise DatasetError(
            f"{where(source, video_id, f'frame {frame}')}: outside the video's {num_frames} frames"
        )
    return int(frame)


def _detections(value: object, video_id: str, field: str) -> Detections:
    """One frame's prediction value (box, scored box or list of them) as boxes with scores, best first."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(
            f"{where('predictions', video_id, field)}: expected a box, a scored box or a list of them, "
            f"got {value!r}"
        ) from None
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise DatasetError(
            f"{where('predictions', video_id, field)}: expected (x1, y1, x2, y2[, score]) boxes, "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise DatasetError(f"{where('predictions', video_id, field)}: not a finite number in {arr.tolist()}")
    dets = [
        (validate_box(row[:4], "predictions", video_id, field), float(row[4]) if len(row) == 5 else 1.0)
        for row in arr
    ]
    return sorted(dets, key=lambda d: -d[1])


def _prepare_video(
    video_id: str, gt: Mapping, pred: Mapping, num_frames: int
) -> tuple[dict[int, Box], dict[int, Detections]]:
    gt_boxes = {}
    for frame, box in gt.items():
        f = _frame_index(frame, num_frames, "ground truth", video_id)
        coords = np.asarray(box, dtype=np.float64) if isinstance(box, (Sequence, np.ndarray)) else None
        if coords is None or coords.shape != (4,) or not np.isfinite(coords).all():
            raise DatasetError(
                f"{where('ground truth', video_id, f'frame {f}')}: expected 4 finite coordinates, got {box!r}"
            )
        gt_boxes[f] = validate_box(coords, "ground truth", video_id, f"frame {f}")
    dets = {}
    for frame, value in pred.items():
        f = _frame_index(frame, num_frames, "predictions", video_id)
        frame_dets = _detections(value, video_id, f"frame {f}")
        if frame_dets:
            dets[f] = frame_dets
    return gt_boxes, dets


def _top_boxes(dets: Mapping[int, Detections], score_threshold: float) -> dict[int, Box]:
    return {f: d[0][0] for f, d in dets.items() if d[0][1] >= score_threshold}


def _st_iou(gt: Mapping[int, Box], top: Mapping[int, Box]) -> float:
    union = len(gt.keys() | top.keys())
    if union == 0:
        return 1.0
    both = sorted(gt.keys() & top.keys())
    if not both:
        return 0.0
    return float(paired_iou([gt[f] for f in both], [top[f] for f in both]).sum() / union)


def st_iou(
    gt: Mapping[int, Box],
    pred: Mapping[int, object],
    num_frames: int,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    video_id: str = "video",
) -> float:
    """ST-IoU of one video (see the module docstring); ``pred`` values in any of the accepted forms."""
    gt_boxes, dets = _prepare_video(video_id, gt, pred, num_frames)
    return _st_iou(gt_boxes, _top_boxes(dets, score_threshold))


def _counts(
    gt: Mapping[int, Box], dets: Mapping[int, Detections], num_frames: int, score_threshold: float
) -> dict[str, int]:
    kept = {f: [b for b, s in d if s >= score_threshold] for f, d in dets.items()}
    kept = {f: boxes for f, boxes in kept.items() if boxes}
    pairs = [(f, box) for f, boxes in kept.items() if f in gt for box in boxes]
    ious = paired_iou([gt[f] for f, _ in pairs], [box for _, box in pairs])
    hits = {f for (f, _), iou in zip(pairs, ious, strict=True) if iou >= MATCH_IOU}
    small = [f for f, (x1, y1, x2, y2) in gt.items() if max(x2 - x1, y2 - y1) < SMALL_OBJECT_MAX_SIDE]
    tp = len(hits)
    fp = sum(len(boxes) for boxes in kept.values()) - tp
    bg_fp = sum(len(boxes) for f, boxes in kept.items() if f not in gt)
    return {
        "frames": num_frames,
        "background_frames": num_frames - len(gt),
        "gt_frames": len(gt),
        "pred_frames": len(kept),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": len(gt) - tp,
        "background_false_positives": bg_fp,
        "small_objects": len(small),
        "small_objects_found": len(hits.intersection(small)),
    }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _rates(counts: Mapping[str, int], minutes: float) -> dict[str, float | None]:
    tp, fp, fn = counts["true_positives"], counts["false_positives"], counts["false_negatives"]
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "fp_per_background_frame": _ratio(counts["background_false_positives"], counts["background_frames"]),
        "fp_per_minute": _ratio(fp, minutes),
        "small_object_recall": _ratio(counts["small_objects_found"], counts["small_objects"]),
    }


def _coco_eval(
    videos: Iterable[tuple[Mapping[int, Box], Mapping[int, Detections]]],
) -> COCOeval_faster | None:
    """COCO bbox evaluation with one image per frame that has a box (frames with neither add nothing)."""
    images, annotations, results = [], [], []
    for gt, dets in videos:
        for frame in sorted(gt.keys() | dets.keys()):
            image_id = len(images) + 1
            images.append({"id": image_id})
            if frame in gt:
                x1, y1, x2, y2 = gt[frame]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
            for (x1, y1, x2, y2), score in dets.get(frame, []):
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
    if not annotations:
        return None
    coco_gt = COCO(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "target"}]}
    )
    coco_eval = COCOeval_faster(coco_gt, coco_gt.loadRes(results), iouType="bbox", print_function=_silent)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def _silent(*_args: object, **_kwargs: object) -> None:
    """faster-coco-eval's summary table goes nowhere; the figures are returned instead."""


def _map(coco_eval: COCOeval_faster | None) -> dict[str, float | None]:
    if coco_eval is None:
        return {"map50": None, "map50_95": None}
    return {"map50": float(coco_eval.stats[1]), "map50_95": float(coco_eval.stats[0])}


def _pr_curve(coco_eval: COCOeval_faster | None) -> dict[str, list[float]]:
    """Interpolated precision at COCO's 101 recall points, IoU 0.5, all areas, 100 detections per frame."""
    if coco_eval is None:
        return {"recall": [], "precision": [], "score": []}
    return {
        "recall": [float(r) for r in coco_eval.params.recThrs],
        "precision": [float(p) for p in coco_eval.eval["precision"][0, :, 0, 0, -1]],
        "score": [float(s) for s in coco_eval.eval["scores"][0, :, 0, 0, -1]],
    }


def _fps_of(fps: float | Mapping[str, float], video_id: str) -> float:
    value = fps.get(video_id, DEFAULT_FPS) if isinstance(fps, Mapping) else fps
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DatasetError(f"{where('fps', video_id)}: expected a positive frame rate, got {value!r}")
    return float(value)


def evaluate(
    gt_by_video: Mapping[str, Mapping[int, Box]],
    pred_by_video: Mapping[str, Mapping[int, object]],
    num_frames_by_video: Mapping[str, int],
    fps: float | Mapping[str, float] = DEFAULT_FPS,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> dict:
    """Every metric of the module docstring, per video and overall, as a JSON-serialisable dict.

    The videos are the keys of ``num_frames_by_video``; a video missing from ``gt_by_video`` has no target in
    any frame, one missing from ``pred_by_video`` has no prediction. A video named in the ground truth or the
    predictions but not in ``num_frames_by_video``, a frame outside its video, or a malformed box raises
    :class:`~refdet_edge.data.annotations.DatasetError` (a ``ValueError``) naming the video and field.
    ``fps`` is one rate for all videos or a mapping per video (missing videos: 25).

    Returns ``{"score_threshold", "match_iou", "small_object_max_side", "num_videos", "overall", "per_video",
    "pr_curve"}``. ``overall`` and each ``per_video[video_id]`` hold ``st_iou``, ``map50``, ``map50_95``,
    ``precision``, ``recall``, ``f1``, ``fp_per_background_frame``, ``fp_per_minute``, ``small_object_recall``,
    ``minutes`` and the counts behind them (``frames``, ``background_frames``, ``gt_frames``, ``pred_frames``,
    ``true_positives``, ``false_positives``, ``false_negatives``, ``background_false_positives``,
    ``small_objects``, ``small_objects_found``); per video also ``fps``. Overall counts are sums, overall rates
    are computed from the summed counts, overall ``st_iou`` is the mean over videos and overall mAP is one COCO
    evaluation over all frames of all videos. ``pr_curve`` (overall, IoU 0.5) has lists ``recall``,
    ``precision`` and ``score`` (the score at which each recall is reached).
    """
    for kind, mapping in (("ground truth", gt_by_video), ("predictions", pred_by_video)):
        unknown = sorted(set(mapping) - set(num_frames_by_video))
        if unknown:
            raise DatasetError(f"{where(kind, unknown[0])}: not one of the videos being evaluated")
    per_video: dict[str, dict] = {}
    prepared = []
    total_minutes = 0.0
    for video_id, num_frames in num_frames_by_video.items():
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 0:
            raise DatasetError(f"{where('num_frames', video_id)}: expected a non-negative integer")
        rate = _fps_of(fps, video_id)
        gt, dets = _prepare_video(
            video_id, gt_by_video.get(video_id, {}), pred_by_video.get(video_id, {}), int(num_frames)
        )
        prepared.append((gt, dets))
        counts = _counts(gt, dets, int(num_frames), score_threshold)
        minutes = num_frames / rate / 60.0
        total_minutes += minutes
        per_video[video_id] = {
            "st_iou": _st_iou(gt, _top_boxes(dets, score_threshold)),
            **_map(_coco_eval([(gt, dets)])),
            **_rates(counts, minutes),
            "fps": rate,
            "minutes": minutes,
            **counts,
        }
    totals = {key: sum(v[key] for v in per_video.values()) for key in _COUNT_KEYS}
    overall_eval = _coco_eval(prepared)
    return {
        "score_threshold": score_threshold,
        "match_iou": MATCH_IOU,
        "small_object_max_side": SMALL_OBJECT_MAX_SIDE,
        "num_videos": len(per_video),
        "overall": {
            "st_iou": _ratio(sum(v["st_iou"] for v in per_video.values()), len(per_video)),
            **_map(overall_eval),
            **_rates(totals, total_minutes),
            "minutes": total_minutes,
            **totals,
        },
        "per_video": per_video,
        "pr_curve": _pr_curve(overall_eval),
    }


def load_predictions(path: str | Path, video_ids: Iterable[str]) -> Predictions:
    """Read a prediction file (challenge schema, key ``"detections"``, optional ``"score"`` per box) that must
    list exactly ``video_ids``.

    Raises :class:`~refdet_edge.data.annotations.DatasetError` naming the file and the video when the file
    breaks the schema, names a video that is not in ``video_ids`` or leaves one out.
    """
    predictions = load_detections(path)
    expected = set(video_ids)
    unknown = sorted(set(predictions.boxes) - expected)
    if unknown:
        raise DatasetError(f"{where(path, unknown[0], 'video_id')}: not a video of the split being scored")
    missing = sorted(expected - set(predictions.boxes))
    if missing:
        raise DatasetError(
            f"{where(path, missing[0], 'video_id')}: missing (a prediction file lists every video, "
            "with an empty list where nothing was found)"
        )
    return predictions


def save_predictions(
    path: str | Path, pred_by_video: Mapping[str, Mapping[int, object]], every_box: bool = False
) -> Path:
    """Write a prediction file with a score per box: each frame's best box (a final output), or with
    ``every_box`` all of its boxes (a detector's raw output, to post-process later).

    Values may be boxes (score 1.0), scored boxes or lists of them; every video of ``pred_by_video`` is
    listed, with an empty list when it has no box.
    """
    out = {}
    for video_id, pred in pred_by_video.items():
        frames = {}
        for frame, value in pred.items():
            dets = [(*box, score) for box, score in _detections(value, video_id, f"frame {frame}")]
            if dets:
                frames[int(frame)] = dets if every_box else dets[0]
        out[video_id] = frames
    return save_annotations(path, out, key=DETECTIONS_KEY)
