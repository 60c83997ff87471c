"""The closing lines of `make demo`: per video, where the target was in view on the evaluated split and where
the model reported it, with its hits, false alarms and ST-IoU; then where the figures are, and the annotated
clip with what its boxes hit over the whole video (the ``predictions.json`` that ``refdet predict`` wrote beside
it).

``python -m refdet_edge.demo.summary --eval runs/demo/eval --clip runs/demo/predict/VIDEO.mp4`` reads the
``metrics.json`` and ``predictions.json`` that ``refdet eval`` wrote (and the dataset they name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from refdet_edge.data.annotations import DatasetError, load_annotations, load_detections, where
from refdet_edge.data.splits import SPLITS_FILE, load_splits
from refdet_edge.evaluation.metrics import MATCH_IOU, paired_iou


def frame_runs(frames: Iterable[int]) -> str:
    """Sorted frame numbers as runs: ``"3-5, 9"``; ``"none"`` when empty."""
    runs: list[list[int]] = []
    for frame in sorted(frames):
        if runs and frame == runs[-1][1] + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs) or "none"


def _split_frames(data: Path, split: str, video_id: str, truth: dict[int, object]) -> set[int] | None:
    """The frames of ``video_id`` in ``split`` that hold the target, or None when the split file is absent."""
    path = data / SPLITS_FILE
    if split == "all" or not path.is_file():
        return None
    spans = load_splits(path).get(split, {}).get(video_id, [])
    return {f for f in truth if any(s <= f and (e is None or f < e) for s, e in spans)}


def _spans(data: Path, video_id: str) -> str:
    """Where each split lies in the video: ``"train 0-139, val 140-169, test 170-199"``."""
    path = data / SPLITS_FILE
    if not path.is_file():
        return "no splits"
    parts = [
        f"{name} {start}-{end - 1}" if end is not None else f"{name} {start}-end"
        for name, ranges in load_splits(path).items()
        for start, end in ranges.get(video_id, [])
    ]
    return ", ".join(parts) or "in no split"


def clip_lines(clip: Path, data: Path, truth: dict[int, object]) -> list[str]:
    """Where the clip is and, from its ``predictions.json``, how its boxes compare with ``truth`` (the
    video's ground truth) over every frame."""
    lines = [f"Annotated video: {clip}" + ("" if clip.is_file() else " (missing)")]
    path = clip.parent / "predictions.json"
    if not path.is_file():
        return lines
    video_id = clip.stem
    boxes = {f: b[0][:4] for f, b in load_detections(path).boxes.get(video_id, {}).items()}
    both = sorted(truth.keys() & boxes.keys())
    ious = paired_iou([truth[f] for f in both], [boxes[f] for f in both]) if both else []
    hits = sum(1 for iou in ious if iou >= MATCH_IOU)
    lines.append(
        f"  every frame of {video_id} ({_spans(data, video_id)}): the target in view on {len(truth)}, "
        f"a box on {len(boxes)}: {hits} on the target (IoU >= {MATCH_IOU}), "
        f"{len(boxes.keys() - truth.keys())} on frames without it"
    )
    return lines


def _score_range(scores: list[float]) -> str:
    low, high = f"{min(scores):.2f}", f"{max(scores):.2f}"
    return f" (score {low})" if low == high else f" (scores {low}-{high})"


def summary_lines(eval_dir: Path, clip: Path | None = None) -> list[str]:
    """The summary of the ``refdet eval`` run in ``eval_dir`` (see the module docstring)."""
    metrics_path = eval_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        final, data, split = metrics["final"], Path(metrics["data"]), metrics["split"]
        scores = metrics[final]
    except FileNotFoundError:
        raise DatasetError(f"{where(metrics_path)}: no such file (run refdet eval first)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{where(metrics_path)}: not a metrics file of refdet eval ({err})") from None
    truth = load_annotations(data / "annotations" / "annotations.json")
    reported = load_detections(eval_dir / "predictions.json").boxes
    overall = scores["overall"]
    lines = [
        f"What the model found on the {split} split of {data} ({metrics.get('split_kind', '?')}), "
        f"{final} output at score >= {scores['score_threshold']}:"
    ]
    for video_id, row in sorted(scores["per_video"].items()):
        in_view = _split_frames(data, split, video_id, truth.get(video_id, {}))
        shown = frame_runs(in_view) if in_view is not None else frame_runs(truth.get(video_id, {}))
        boxes = reported.get(video_id, {})
        score_range = _score_range([frame_boxes[0][4] for frame_boxes in boxes.values()]) if boxes else ""
        lines += [
            f"  {video_id}: ST-IoU {row['st_iou']:.2f}; found on {row['true_positives']} of {row['gt_frames']} "
            f"frames in view (IoU >= {scores['match_iou']}), {row['background_false_positives']} false "
            f"alarm(s) on {row['background_frames']} background frames",
            f"    in view on frames {shown}; reported on frames {frame_runs(boxes)}{score_range}",
        ]
    lines += [
        f"  overall: ST-IoU {overall['st_iou']:.3f}, recall {overall['recall']:.3f}, "
        f"{overall['background_false_positives']} false alarm(s) on {overall['background_frames']} "
        "background frames",
        f"Figures: {eval_dir}/pr_curve.png, {eval_dir}/st_iou_per_video.png, {eval_dir}/timelines/*.png; "
        f"every metric in {metrics_path}",
    ]
    if clip is not None:
        lines += clip_lines(clip, data, truth.get(clip.stem, {}))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refdet_edge.demo.summary", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--eval", type=Path, required=True, help="The --out folder of refdet eval.")
    parser.add_argument("--clip", type=Path, help="The annotated video refdet predict wrote.")
    args = parser.parse_args(argv)
    try:
        lines = summary_lines(args.eval, args.clip)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
