"""Default settings of evaluation, prediction and the temporal post-processing.

A light module (no numpy, torch or OpenCV), so that the command line can show these defaults in ``--help``
without importing the libraries that do the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SCORE_THRESHOLD = 0.25  # the operating point (ultralytics' predict default); small targets score low
RAW_CONF = 0.01  # the raw cut: every detection over it is kept, so mAP sees the whole precision-recall curve
MAX_DET = 10  # detections kept per frame
MODES = ("online", "offline", "off")  # temporal post-processing, see refdet_edge.evaluation.temporal


@dataclass(frozen=True)
class TemporalConfig:
    """Settings of the temporal post-processing, in frames of the video (defaults for 25 fps); the path's
    weights ``continuity`` and ``switch_cost`` are in logits (see :mod:`refdet_edge.evaluation.temporal`)."""

    score_threshold: float = DEFAULT_SCORE_THRESHOLD  # the operating point: a path's boxes must reach it
    keep_fraction: float = 0.6  # detections down to keep_fraction * score_threshold can continue a path
    continuity: float = 0.0  # reward per step of the path, times the IoU of its consecutive boxes
    switch_cost: float = 0.25  # cost of the target appearing or disappearing on the path
    confirm_frames: int = 3  # frames of the video a segment's strong detections stand for to be reported
    max_gap: int = 5  # frames without the target that a segment bridges
    gate: float = 1.0  # max centre distance across a bridged gap, in box diagonals
    smooth_frames: int = 0  # half-width of the linear fit that gives the reported box (0: the detection)
    weak_ends: bool = True  # whether weak detections may lead or trail a reported run (else only bridge)
    split_weight: float = 0.5  # offline: how far each video's threshold rises to the split of its scores

    def __post_init__(self) -> None:
        for name in ("confirm_frames", "max_gap", "smooth_frames"):
            value, least = getattr(self, name), 1 if name == "confirm_frames" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"TemporalConfig.{name}: expected an integer >= {least}, got {value!r}")
        for name in ("continuity", "switch_cost"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TemporalConfig.{name}: expected a number >= 0, got {value!r}")
        if not isinstance(self.weak_ends, bool):
            raise ValueError(f"TemporalConfig.weak_ends: expected true or false, got {self.weak_ends!r}")
        if not (math.isfinite(self.gate) and self.gate > 0):
            raise ValueError(f"TemporalConfig.gate: expected a positive number, got {self.gate!r}")
        if not math.isfinite(self.score_threshold):
            raise ValueError(
                f"TemporalConfig.score_threshold: expected a number, got {self.score_threshold!r}"
            )
        if not (math.isfinite(self.split_weight) and 0 <= self.split_weight <= 1):
            raise ValueError(
                f"TemporalConfig.split_weight: expected a number in [0, 1], got {self.split_weight!r}"
            )
        if not (math.isfinite(self.keep_fraction) and 0 <= self.keep_fraction <= 1):
            raise ValueError(
                f"TemporalConfig.keep_fraction: expected a number in [0, 1], got {self.keep_fraction!r}"
            )

    @property
    def keep_threshold(self) -> float:
        """The weakest detection that can continue a path."""
        return self.keep_fraction * self.score_threshold

    @property
    def delay(self) -> int:
        """Frames of the video the online mode waits before a frame is final: long enough to bridge a gap,
        confirm a segment from its first frame and centre the box fit."""
        return max(self.max_gap, self.confirm_frames - 1, self.smooth_frames)
