"""Temporal post-processing for single-target search: one box per frame, Kalman smoothing, hysteresis.

The detector scores every frame on its own; the target, though, moves smoothly and stays in view for many
frames, while false positives flicker. :class:`SingleTargetTracker` keeps one track at a time:

- a frame's candidates are its detections with ``score >= score_threshold``;
- a live track is advanced by ultralytics' :class:`KalmanFilterXYAH` (constant velocity in centre, aspect
  ratio and height) and continued by the highest-scoring candidate whose centre lies within ``gate`` predicted
  box diagonals of the predicted centre; the reported box is the filter's corrected state (smoothed);
- hysteresis: a track is reported only from its ``min_hits``-th consecutive matched frame on, so a detection
  that does not persist is never reported;
- a reported track that misses up to ``max_gap`` frames keeps coasting on the filter's prediction; when it is
  matched again the missed frames are reported with the predicted boxes (the gap is bridged), otherwise they
  are dropped with the track. Bridged frames carry the score of the track's last matched detection;
- when no track is live (or a tentative one misses), the best candidate of the frame starts a new track.

Outputs are therefore final up to ``max_gap`` frames late, which is what a live system can afford. With
``enabled=False`` the highest-scoring detection of each frame is returned unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYAH

from refdet_edge.evaluation.metrics import DEFAULT_SCORE_THRESHOLD

ScoredBox = tuple[float, float, float, float, float]


@dataclass(frozen=True)
class TemporalConfig:
    """Settings of the temporal post-processing (defaults for 25 fps video)."""

    enabled: bool = True
    score_threshold: float = DEFAULT_SCORE_THRESHOLD  # detections below it neither start nor continue a track
    min_hits: int = 3  # consecutive matched frames before a track is reported
    max_gap: int = 5  # missed frames bridged by the filter's prediction when the track is matched again
    gate: float = 1.0  # max centre distance to the predicted box, in predicted-box diagonals

    def __post_init__(self) -> None:
        if not (isinstance(self.min_hits, int) and self.min_hits >= 1):
            raise ValueError(f"TemporalConfig.min_hits: expected an integer >= 1, got {self.min_hits!r}")
        if not (isinstance(self.max_gap, int) and self.max_gap >= 0):
            raise ValueError(f"TemporalConfig.max_gap: expected an integer >= 0, got {self.max_gap!r}")
        if not (math.isfinite(self.gate) and self.gate > 0):
            raise ValueError(f"TemporalConfig.gate: expected a positive number, got {self.gate!r}")
        if not math.isfinite(self.score_threshold):
            raise ValueError(
                f"TemporalConfig.score_threshold: expected a number, got {self.score_threshold!r}"
            )


def _scored_boxes(detections: object, frame: int) -> list[ScoredBox]:
    """One frame's detections as ``(x1, y1, x2, y2, score)`` tuples, highest score first."""
    arr = np.asarray(detections, dtype=np.float64)
    if arr.size == 0:
        return []
    if (
        arr.ndim != 2
        or arr.shape[1] != 5
        or not np.isfinite(arr).all()
        or (arr[:, 2] <= arr[:, 0]).any()
        or (arr[:, 3] <= arr[:, 1]).any()
    ):
        raise ValueError(
            f"frame {frame}: expected a list of finite (x1, y1, x2, y2, score) boxes with x2 > x1 and "
            f"y2 > y1, got {detections!r}"
        )
    return sorted((tuple(float(v) for v in row) for row in arr), key=lambda d: -d[4])


def _xyah(box: Sequence[float]) -> np.ndarray:
    x1, y1, x2, y2 = box[:4]
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / (y2 - y1), y2 - y1])


class SingleTargetTracker:
    """Streaming form of :func:`apply_temporal`: feed frames in increasing order, collect final boxes.

    ``image_size=(width, height)`` clips reported boxes to the frame (they are always clipped at 0); a box
    that clipping empties is not reported.
    """

    def __init__(self, config: TemporalConfig | None = None, image_size: tuple[int, int] | None = None):
        self.config = config or TemporalConfig()
        self.image_size = image_size
        self._kf = KalmanFilterXYAH()
        self._mean: np.ndarray | None = None
        self._cov: np.ndarray | None = None
        self._hits = 0
        self._misses = 0
        self._score = 0.0
        self._pending: list[tuple[int, ScoredBox]] = []
        self._last_frame: int | None = None

    def update(self, frame: int, detections: object) -> list[tuple[int, ScoredBox]]:
        """Process ``frame`` (``(x1, y1, x2, y2, score)`` boxes); returns the frames made final by it.

        Frames skipped since the previous call count as frames without detections.
        """
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(
                f"frame {frame}: frames must come in increasing order (last was {self._last_frame})"
            )
        out: list[tuple[int, ScoredBox]] = []
        if self._last_frame is not None:
            for skipped in range(self._last_frame + 1, frame):
                out += self._step(skipped, [])
        self._last_frame = frame
        return out + self._step(frame, _scored_boxes(detections, frame))

    def _box(self) -> ScoredBox | None:
        x, y, a, h = self._mean[:4]
        w = a * h
        x1, y1, x2, y2 = max(x - w / 2, 0.0), max(y - h / 2, 0.0), x + w / 2, y + h / 2
        if self.image_size is not None:
            x2, y2 = min(x2, self.image_size[0]), min(y2, self.image_size[1])
        if x2 <= x1 or y2 <= y1:
            return None
        return (float(x1), float(y1), float(x2), float(y2), self._score)

    def _emit(self, frame: int) -> list[tuple[int, ScoredBox]]:
        box = self._box()
        return [] if box is None else [(frame, box)]

    def _step(self, frame: int, detections: list[ScoredBox]) -> list[tuple[int, ScoredBox]]:
        cfg = self.config
        candidates = [d for d in detections if d[4] >= cfg.score_threshold]
        if self._mean is not None:
            self._mean, self._cov = self._kf.predict(self._mean, self._cov)
            x, y, a, h = self._mean[:4]
            reach = cfg.gate * h * math.hypot(a, 1.0)
            match = next((d for d in candidates if math.dist(_xyah(d)[:2], (x, y)) <= reach), None)
            confirmed = self._hits >= cfg.min_hits
            if match is not None:
                self._mean, self._cov = self._kf.update(self._mean, self._cov, _xyah(match))
                self._hits += 1
                self._misses = 0
                self._score = match[4]
                if self._hits < cfg.min_hits:
                    return []
                out, self._pending = self._pending, []
                return out + self._emit(frame)
            if confirmed and self._misses < cfg.max_gap:
                self._misses += 1
                self._pending += self._emit(frame)
                return []
            self._mean = None
            self._pending = []
        if not candidates:
            return []
        best = candidates[0]
        self._mean, self._cov = self._kf.initiate(_xyah(best))
        self._hits, self._misses, self._score = 1, 0, best[4]
        return self._emit(frame) if cfg.min_hits == 1 else []


def apply_temporal(
    detections_by_frame: Mapping[int, object] | Sequence[object],
    config: TemporalConfig | None = None,
    image_size: tuple[int, int] | None = None,
) -> dict[int, ScoredBox]:
    """Post-process one video's detections into at most one box per frame.

    ``detections_by_frame`` maps a frame index to that frame's ``(x1, y1, x2, y2, score)`` boxes (a list or an
    ``(N, 5)`` array), or is a sequence of such lists indexed by frame. Returns ``{frame: (x1, y1, x2, y2,
    score)}`` for the frames where the target is reported, in frame order. With ``config.enabled`` false, the
    highest-scoring box of each frame, unchanged and without any score threshold.
    """
    config = config or TemporalConfig()
    items: Iterable[tuple[int, object]] = (
        detections_by_frame.items()
        if isinstance(detections_by_frame, Mapping)
        else enumerate(detections_by_frame)
    )
    frames = sorted(((int(f), _scored_boxes(d, int(f))) for f, d in items), key=lambda item: item[0])
    if not config.enabled:
        return {f: dets[0] for f, dets in frames if dets}
    tracker = SingleTargetTracker(config, image_size)
    out: dict[int, ScoredBox] = {}
    for frame, dets in frames:
        out.update(tracker.update(frame, dets))
    return out
