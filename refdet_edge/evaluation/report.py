"""What ``refdet eval`` prints and writes: the metrics table, ``metrics.json`` and the figures.

Results come in stages, one :func:`~refdet_edge.evaluation.metrics.evaluate` result each: ``raw`` (every
detection over the raw cut, several per frame; its ST-IoU takes each frame's best), ``online`` and
``offline`` (the temporal post-processing). One stage is the *final* output: the one written as the
prediction file, and the one whose precision, recall, F1 and false positives the table shows. mAP always
comes from ``raw`` (detections at a low threshold see the whole precision-recall curve).

Frame indices: prediction files, final boxes and timelines use the frame numbers of each video; metrics use
positions in the split (0..n-1), as :class:`~refdet_edge.evaluation.validator.Validator` scores them, so a
split that is part of a video scores as a video of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from refdet_edge.data.annotations import DatasetError, where
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.evaluation.plots import plot_pr_curve, plot_st_iou_per_video, plot_timeline

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"
RAW_PREDICTIONS_FILE = "raw_predictions.json"
PR_CURVE_FILE = "pr_curve.png"
ST_IOU_FILE = "st_iou_per_video.png"
TIMELINES_DIR = "timelines"
UNSCORED_MARK = "*"

_RATE_COLUMNS = (
    ("P", "precision", ".3f"),
    ("R", "recall", ".3f"),
    ("F1", "f1", ".3f"),
    ("FP/bg frame", "fp_per_background_frame", ".3f"),
    ("FP/min", "fp_per_minute", ".1f"),
    ("small R", "small_object_recall", ".3f"),
)


def check_frames(dataset: DroneDataset, predictions: Mapping[str, Mapping[int, object]], path: Path) -> None:
    """Raise :class:`DatasetError` naming the file, video and frame for a frame past the end of its video."""
    for video in dataset.videos:
        late = [f for f in predictions[video.video_id] if f >= video.cached.num_frames]
        if late:
            raise DatasetError(
                f"{where(path, video.video_id, f'frame {late[0]}')}: past the end of the video "
                f"({video.cached.num_frames} frames)"
            )


def _cell(value: float | None, fmt: str, mark: str = "") -> str:
    return "-" if value is None else format(value, fmt) + mark


def format_table(stages: Mapping[str, dict], final: str, scored: bool = True) -> str:
    """One row overall and one per video: ST-IoU of every stage, mAP of ``raw``, rates of ``final``.

    ``scored`` false (a prediction file without scores) marks the mAP cells: every box counted as 1.0."""
    names = list(stages)
    raw, last = stages["raw"], stages[final]
    rows = [("overall", raw["overall"]["frames"], "overall")]
    rows += [(vid, m["frames"], vid) for vid, m in raw["per_video"].items()]
    width = max(len("video"), *(len(r[0]) for r in rows))
    mark = "" if scored else UNSCORED_MARK
    columns = [(f"ST-IoU {name}", name, "st_iou", ".3f", "") for name in names]
    columns += [("mAP50", "raw", "map50", ".3f", mark), ("mAP50-95", "raw", "map50_95", ".3f", mark)]
    columns += [(title, final, key, fmt, "") for title, key, fmt in _RATE_COLUMNS]
    widths = [max(len(title), 7) for title, *_ in columns]

    def metrics_of(stage: dict, row_key: str) -> dict:
        return stage["overall"] if row_key == "overall" else stage["per_video"][row_key]

    lines = [
        f"{'video':<{width}} {'frames':>7} "
        + " ".join(f"{c[0]:>{w}}" for c, w in zip(columns, widths, strict=True))
    ]
    for label, frames, key in rows:
        cells = [
            f"{_cell(metrics_of(stages[stage], key)[field], fmt, m):>{w}}"
            for (_, stage, field, fmt, m), w in zip(columns, widths, strict=True)
        ]
        lines.append(f"{label:<{width}} {frames:>7} " + " ".join(cells))
    lines.append(
        f"mAP: raw detections; P, R, F1, false positives, small-object recall (< "
        f"{last['small_object_max_side']:g} px): {final} output at score >= {last['score_threshold']:g}"
    )
    if not scored:
        lines.append(
            f"{UNSCORED_MARK} the prediction file has no scores: every box counts as 1.0, so mAP is one point "
            "of the precision-recall curve, not its area"
        )
    return "\n".join(lines)


def write_report(
    out: Path,
    header: dict,
    stages: Mapping[str, dict],
    final: str,
    dataset: DroneDataset,
    final_boxes: Mapping[str, Mapping[int, object]],
) -> list[Path]:
    """Write ``metrics.json`` (``header`` keys, among them ``"raw_detections"``: the number of raw boxes;
    ``"final"``: the name of the final stage; then one key per stage holding its ``evaluate`` result), the PR curve of ``raw`` (its AP and the final stage's operating
    point), the per-video ST-IoU chart of every stage, and one presence timeline per video (``final_boxes``:
    boxes per frame number of each video). Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_FILE
    metrics_path.write_text(
        json.dumps({**header, "final": final, **stages}, indent=2) + "\n", encoding="utf-8"
    )
    raw, last = stages["raw"]["overall"], stages[final]["overall"]
    point = (
        None if last["recall"] is None or last["precision"] is None else (last["recall"], last["precision"])
    )
    paths = [
        metrics_path,
        plot_pr_curve(
            stages["raw"]["pr_curve"],
            out / PR_CURVE_FILE,
            operating_point=point,
            ap=raw["map50"],
            detections=header["raw_detections"],
            title="Raw detections, IoU 0.5",
            point_label=f"operating point ({final} output)",
        ),
        plot_st_iou_per_video(
            {
                name: {vid: m["st_iou"] for vid, m in stage["per_video"].items()}
                for name, stage in stages.items()
            },
            out / ST_IOU_FILE,
            title=f"ST-IoU per video (final output: {final})",
        ),
    ]
    for video in dataset.videos:
        span = f"frames {video.frames[0]}-{video.frames[-1]}" if video.frames else "no frames"
        paths.append(
            plot_timeline(
                video.boxes,
                final_boxes[video.video_id],
                video.frames,
                out / TIMELINES_DIR / f"{video.video_id}.png",
                title=f"{video.video_id}: target presence, {final} ({len(video.frames)} frames of the split, {span})",
            )
        )
    return paths
