"""The operating point: the score threshold with the best raw ST-IoU on the validation split.

Training chooses it on every validation (``val/conf`` in ``results.csv`` and in ``best.pt``'s metrics), so
``refdet eval`` and ``refdet predict`` on any other split use a threshold that never looked at that split's
labels. The two-stage baseline chooses its own on val the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from refdet_edge.evaluation.metrics import st_iou

THRESHOLDS = tuple(round(0.02 * i, 2) for i in range(50))  # 0.00 ... 0.98


def best_threshold(
    gt: Mapping[str, Mapping[int, object]],
    pred: Mapping[str, Mapping[int, object]],
    frames: Mapping[str, int],
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[float, float]:
    """``(threshold, mean ST-IoU over the videos)`` of the threshold with the best mean raw ST-IoU (each
    frame's best box over it); the lowest threshold wins a tie. ``gt``/``pred`` per video, frames 0..n-1."""
    best: tuple[float, float] | None = None
    for t in thresholds:
        score = float(np.mean([st_iou(gt[vid], pred[vid], frames[vid], t, vid) for vid in pred]))
        if best is None or score > best[1]:
            best = (float(t), score)
    if best is None:
        raise ValueError("no threshold to choose from")
    return best


def choose_operating_point(validator, raw: Mapping[str, Mapping[int, list]]) -> dict[str, float]:
    """``{"conf", "st_iou"}`` on the validator's split, from the raw detections it returned."""
    from refdet_edge.evaluation.validator import positions, scored_frames

    k = validator.config.frame_stride
    videos = {v.video_id: v for v in validator.dataset.videos}
    gt = {vid: positions(v, v.boxes, k) for vid, v in videos.items()}
    pred = {vid: positions(videos[vid], dets, k) for vid, dets in raw.items()}
    frames = {vid: len(scored_frames(v, k)) for vid, v in videos.items()}
    conf, score = best_threshold(gt, pred, frames)
    return {"conf": conf, "st_iou": score}


def checkpoint_conf(weights: str | Path) -> float | None:
    """The operating point a training run chose on its validation split and stored in ``weights``
    (``metrics["val/conf"]``), or None for a checkpoint without one."""
    from refdet_edge.models.checkpoint import read_checkpoint

    value = (read_checkpoint(weights).get("metrics") or {}).get("val/conf")
    return float(value) if value is not None else None
