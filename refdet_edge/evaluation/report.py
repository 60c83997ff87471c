"""What ``refdet eval`` computes beyond the validator, prints and writes.

A model's results come in stages: ``raw`` (every detection over ``conf``, several per frame) and, with
temporal post-processing on, ``temporal`` (at most one box per frame); a prediction file is scored as one
stage, ``file``. The last stage is the *final* output: what the prediction file holds and what precision,
recall, F1 and false positives in the table describe. mAP always comes from the first stage (a model's raw
detections at a low threshold see the whole precision-recall curve).

Frame indices: prediction files and the final boxes use the original frame indices of each video; metrics
and timelines use positions in the split (0..n-1), as :class:`~refdet_edge.evaluation.validator.Validator`
scores them, so a split that is part of a video scores as a video of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from refdet_edge.data.annotations import Box, DatasetError, where
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.evaluation.metrics import evaluate
from refdet_edge.evaluation.plots import plot_pr_curve, plot_st_iou_per_video, plot_timeline
from refdet_edge.evaluation.validator import positions

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"
PR_CURVE_FILE = "pr_curve.png"
ST_IOU_FILE = "st_iou_per_video.png"
TIMELINES_DIR = "timelines"

_RATE_COLUMNS = (
    ("P", "precision", ".3f"),
    ("R", "recall", ".3f"),
    ("F1", "f1", ".3f"),
    ("FP/bg frame", "fp_per_background_frame", ".3f"),
    ("FP/min", "fp_per_minute", ".1f"),
    ("small R", "small_object_recall", ".3f"),
)


def score_file(
    dataset: DroneDataset,
    predictions: Mapping[str, Mapping[int, Box]],
    path: Path,
    fps: float,
    score_threshold: float,
) -> dict:
    """Metrics of a prediction file's boxes (as read by ``load_predictions``) on the dataset's split.

    Raises :class:`DatasetError` naming the file, video and frame for a frame past the end of its video."""
    for video in dataset.videos:
        late = [f for f in predictions[video.video_id] if f >= video.cached.num_frames]
        if late:
            raise DatasetError(
                f"{where(path, video.video_id, f'frame {late[0]}')}: past the end of the video "
                f"({video.cached.num_frames} frames)"
            )
    return evaluate(
        {v.video_id: positions(v, v.boxes) for v in dataset.videos},
        {v.video_id: positions(v, predictions[v.video_id]) for v in dataset.videos},
        {v.video_id: len(v.frames) for v in dataset.videos},
        fps,
        score_threshold,
    )


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(stages: Mapping[str, dict]) -> str:
    """One row overall and one per video: ST-IoU of every stage, mAP of the first, rates of the last."""
    names = list(stages)
    first, last = stages[names[0]], stages[names[-1]]
    rows = [("overall", first["overall"]["frames"], "overall")]
    rows += [(vid, m["frames"], vid) for vid, m in first["per_video"].items()]
    width = max(len("video"), *(len(r[0]) for r in rows))
    columns = [(f"ST-IoU {name}", name, "st_iou", ".3f") for name in names]
    columns += [("mAP50", names[0], "map50", ".3f"), ("mAP50-95", names[0], "map50_95", ".3f")]
    columns += [(title, names[-1], key, fmt) for title, key, fmt in _RATE_COLUMNS]
    widths = [max(len(title), 6) for title, *_ in columns]

    def metrics_of(stage: dict, row_key: str) -> dict:
        return stage["overall"] if row_key == "overall" else stage["per_video"][row_key]

    lines = [
        f"{'video':<{width}} {'frames':>7} "
        + " ".join(f"{c[0]:>{w}}" for c, w in zip(columns, widths, strict=True))
    ]
    for label, frames, key in rows:
        cells = [
            f"{_cell(metrics_of(stages[stage], key)[field], fmt):>{w}}"
            for (_, stage, field, fmt), w in zip(columns, widths, strict=True)
        ]
        lines.append(f"{label:<{width}} {frames:>7} " + " ".join(cells))
    lines.append(
        f"mAP: {names[0]} detections; P, R, F1, false positives, small-object recall (< "
        f"{last['small_object_max_side']:g} px): {names[-1]} output at score >= {last['score_threshold']:g}"
    )
    return "\n".join(lines)


def write_report(
    out: Path,
    header: dict,
    stages: Mapping[str, dict],
    dataset: DroneDataset,
    final: Mapping[str, Mapping[int, object]],
) -> list[Path]:
    """Write ``metrics.json`` (``header`` keys, ``"final"``: the name of the last stage, then one key per
    stage holding its ``evaluate`` result), the PR curve of the first stage (with its operating point), the
    per-video ST-IoU chart of the final stage, and one presence timeline per video (``final``: boxes per
    original frame index). Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    name = list(stages)[-1]
    last = stages[name]
    metrics_path = out / METRICS_FILE
    metrics_path.write_text(
        json.dumps({**header, "final": name, **stages}, indent=2) + "\n", encoding="utf-8"
    )
    first = list(stages.values())[0]
    recall, precision = first["overall"]["recall"], first["overall"]["precision"]
    point = None if recall is None or precision is None else (recall, precision)
    paths = [
        metrics_path,
        plot_pr_curve(first["pr_curve"], out / PR_CURVE_FILE, operating_point=point),
        plot_st_iou_per_video(
            {vid: m["st_iou"] for vid, m in last["per_video"].items()},
            out / ST_IOU_FILE,
            title=f"ST-IoU per video ({name})",
        ),
    ]
    for video in dataset.videos:
        paths.append(
            plot_timeline(
                positions(video, video.boxes),
                positions(video, final[video.video_id]),
                len(video.frames),
                out / TIMELINES_DIR / f"{video.video_id}.png",
                title=f"{video.video_id}: target presence, {name} ({len(video.frames)} frames of the split)",
            )
        )
    return paths
