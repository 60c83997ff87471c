"""Temporal post-processing for single-target search: one box per frame from a detector's per-frame output.

The detector scores every frame on its own; the target, though, moves smoothly and stays in view for many
frames, while false positives flicker. All settings count frames of the video, and every function takes the
video's own frame indices, so frames left out (every k-th frame scored) change nothing but the sampling.

1. **Tracks.** Detections with ``score >= keep_threshold`` are linked into tracks, several at a time: each
   live track predicts its box with ultralytics' :class:`KalmanFilterXYWH` (constant velocity in centre,
   width and height, one step per video frame) and takes the detection nearest to that prediction within
   ``gate`` predicted-box diagonals (one detection per track, ultralytics' ``linear_assignment``). A detection
   left over with ``score >= score_threshold`` starts a new track, wherever the other tracks are. A track
   ends once the scored frames it missed in a row span more than ``max_gap`` frames of the video (frames
   that were not scored never end it by themselves).
2. **Hysteresis.** A track is reported only once it holds at least two detections with
   ``score >= score_threshold`` that stand for ``confirm_frames`` frames of the video (each stands for the
   frames since the observed frame before it: 3 detections at stride 1, 2 at stride 5), so a detection that
   does not persist is never reported. A confirmed track is reported from its first detection on (its
   tentative frames are filled in), and weaker detections (``keep_threshold``) continue it.
3. **One box per frame.** Of the confirmed tracks present at a frame, the one with the highest sum of
   detection scores within ``evidence_frames`` frames either side wins, so a strong new track takes over
   from a weak old one and no track locks the others out.
4. **The reported box** follows the detector: a weighted (by score) linear fit, in time, of the track's own
   detections within ``smooth_frames`` frames either side, centred on the frame, so motion and changes of
   size or aspect are followed without lag and a perfect detector is reproduced exactly. A frame inside a
   bridged gap gets the box interpolated between the two sides. Its score is the track's highest detection
   score, so every reported box passes ``score_threshold``.

Modes (:data:`MODES`):

- ``online``: a frame is final once :attr:`TemporalConfig.delay` more frames of the video have been seen
  (5 frames, 0.2 s at 25 fps, with the defaults); decisions use only what is known by then and the evidence
  window is cut to the delay on both sides. :class:`OnlineTracker` is the streaming form for a live system.
- ``offline``: the whole video is known: every track is complete before any frame is decided.
- ``off``: each frame's highest-scoring detection with ``score >= score_threshold``, unchanged (the figure
  that ``raw`` ST-IoU scores).

The defaults were chosen on synthetic detection streams (as in ``tests/test_temporal.py``) and on the raw
detections of the COCO-pretrained YOLOv8n (the target's class) on five UAV123 sequences kept for validation
(car10, group1_1, person9, truck2, wakeboard3, with absent frames spliced in), never on a test split.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYWH
from ultralytics.trackers.utils.matching import linear_assignment

from refdet_edge.evaluation.settings import MODES, TemporalConfig

ScoredBox = tuple[float, float, float, float, float]


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


def _xywh(box: Sequence[float]) -> np.ndarray:
    x1, y1, x2, y2 = box[:4]
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


@dataclass
class _Track:
    """One track: its detections (video frame, box, score) in frame order and its motion state."""

    frames: list[int]
    boxes: list[np.ndarray]
    scores: list[float]
    mean: np.ndarray
    cov: np.ndarray
    state_frame: int
    peak: float = 0.0
    strong_hits: int = 0  # detections >= score_threshold
    coverage: int = 0  # frames of the video they stand for
    confirmed: bool = False
    first_miss: int | None = None  # first observed frame without a detection since the last one
    alive: bool = True

    @property
    def last(self) -> int:
        return self.frames[-1]

    def add(
        self, frame: int, box: Sequence[float], score: float, previous: int | None, config: TemporalConfig
    ) -> None:
        """Append a detection; ``previous`` is the observed frame before ``frame``."""
        self.frames.append(frame)
        self.boxes.append(np.asarray(box[:4], dtype=np.float64))
        self.scores.append(score)
        self.peak = max(self.peak, score)
        self.first_miss = None
        if score >= config.score_threshold:
            self.strong_hits += 1
            self.coverage += 1 if previous is None else frame - previous
            self.confirmed = self.confirmed or (
                self.strong_hits >= 2 and self.coverage >= config.confirm_frames
            )

    def evidence(self, frame: int, half_width: int) -> float:
        lo = bisect.bisect_left(self.frames, frame - half_width)
        hi = bisect.bisect_right(self.frames, frame + half_width)
        return float(sum(self.scores[lo:hi]))

    def _fit(self, frame: int, half_width: int) -> np.ndarray:
        """Score-weighted linear fit in time of the detections within ``half_width`` frames, at ``frame``."""
        lo = bisect.bisect_left(self.frames, frame - half_width)
        hi = bisect.bisect_right(self.frames, frame + half_width)
        t = np.asarray(self.frames[lo:hi], dtype=np.float64) - frame
        w = np.asarray(self.scores[lo:hi], dtype=np.float64) + 1e-9  # scores of 0 still count a little
        y = np.stack(self.boxes[lo:hi])
        s0, s1, s2 = w.sum(), (w * t).sum(), (w * t * t).sum()
        det = s0 * s2 - s1 * s1
        if det <= 1e-9 * max(s0 * s2, 1e-12):
            return (w[:, None] * y).sum(0) / s0
        return (s2 * (w[:, None] * y).sum(0) - s1 * (w[:, None] * t[:, None] * y).sum(0)) / det

    def box_at(self, frame: int, smooth: int) -> np.ndarray | None:
        """The track's box at ``frame``: the fit at a frame with a detection, interpolated inside a gap."""
        i = bisect.bisect_left(self.frames, frame)
        if i < len(self.frames) and self.frames[i] == frame:
            return self._fit(frame, smooth)
        if i == 0 or i == len(self.frames):
            return None
        a, b = self.frames[i - 1], self.frames[i]
        u = (frame - a) / (b - a)
        return (1 - u) * self._fit(a, smooth) + u * self._fit(b, smooth)


class _TrackSet:
    """Step 1 of the module docstring: links each observed frame's detections into tracks."""

    def __init__(self, config: TemporalConfig) -> None:
        self.config = config
        self.kf = KalmanFilterXYWH()
        self.tracks: list[_Track] = []
        self.last_observed: int | None = None

    def observe(self, frame: int, detections: list[ScoredBox]) -> None:
        cfg = self.config
        candidates = [d for d in detections if d[4] >= cfg.keep_threshold]
        live = [t for t in self.tracks if t.alive]
        cost = np.full((len(live), len(candidates)), np.inf)
        for i, track in enumerate(live):
            for _ in range(frame - track.state_frame):
                track.mean, track.cov = self.kf.predict(track.mean, track.cov)
            track.state_frame = frame
            x, y, w, h = track.mean[:4]
            reach = cfg.gate * math.hypot(max(w, 1e-6), max(h, 1e-6))
            for j, det in enumerate(candidates):
                cx, cy = _xywh(det)[:2]
                distance = math.hypot(cx - x, cy - y) / reach
                if distance <= 1.0:
                    cost[i, j] = distance
        matches, missed, unmatched = linear_assignment(cost, thresh=1.0)
        for i, j in matches:
            track, det = live[i], candidates[j]
            track.mean, track.cov = self.kf.update(track.mean, track.cov, _xywh(det))
            track.add(frame, det, det[4], self.last_observed, cfg)
        for i in missed:
            track = live[i]
            track.first_miss = frame if track.first_miss is None else track.first_miss
            track.alive = frame - track.first_miss + 1 <= cfg.max_gap
        for j in unmatched:
            det = candidates[j]
            if det[4] >= cfg.score_threshold:
                mean, cov = self.kf.initiate(_xywh(det))
                track = _Track([], [], [], mean, cov, frame)
                track.add(frame, det, det[4], self.last_observed, cfg)
                self.tracks.append(track)
        self.last_observed = frame

    def drop_before(self, frame: int) -> None:
        """Forget ended tracks whose last detection is before ``frame``: they have no box there or later."""
        self.tracks = [t for t in self.tracks if t.alive or t.last >= frame]


def _choose(
    tracks: Iterable[_Track],
    frame: int,
    config: TemporalConfig,
    evidence_frames: int,
    image_size: tuple[int, int] | None,
) -> ScoredBox | None:
    """Step 3 and 4: the reported box of ``frame`` from the confirmed tracks, or ``None``."""
    best: tuple[float, np.ndarray, float] | None = None
    for track in tracks:
        if not track.confirmed:
            continue
        box = track.box_at(frame, config.smooth_frames)
        if box is None:
            continue
        evidence = track.evidence(frame, evidence_frames)
        if best is None or evidence > best[0]:
            best = (evidence, box, track.peak)
    if best is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in best[1])
    x1, y1 = max(x1, 0.0), max(y1, 0.0)
    if image_size is not None:
        x2, y2 = min(x2, float(image_size[0])), min(y2, float(image_size[1]))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2, float(best[2]))


class OnlineTracker:
    """The ``online`` mode as a stream: feed the observed frames in increasing order with :meth:`update`,
    collect the boxes it makes final, and call :meth:`finish` after the last frame.

    Frame ``f`` is final once a frame ``>= f + config.delay`` has been fed (or at :meth:`finish`); frames
    never fed are never reported. ``image_size=(width, height)`` clips reported boxes to the frame (always at
    0); a box that clipping empties is not reported.
    """

    def __init__(self, config: TemporalConfig | None = None, image_size: tuple[int, int] | None = None):
        self.config = config or TemporalConfig()
        self.image_size = image_size
        self._tracks = _TrackSet(self.config)
        self._pending: list[int] = []

    @property
    def delay(self) -> int:
        return self.config.delay

    def update(self, frame: int, detections: object) -> list[tuple[int, ScoredBox]]:
        """Add ``frame``'s ``(x1, y1, x2, y2, score)`` detections; returns the ``(frame, box)`` made final."""
        last = self._tracks.last_observed
        if last is not None and frame <= last:
            raise ValueError(f"frame {frame}: frames must come in increasing order (last was {last})")
        self._tracks.observe(frame, _scored_boxes(detections, frame))
        self._pending.append(frame)
        return self._release(frame - self.delay)

    def finish(self) -> list[tuple[int, ScoredBox]]:
        """The boxes of the frames still waiting (the end of the video is known now)."""
        return self._release(math.inf)

    def _release(self, up_to: float) -> list[tuple[int, ScoredBox]]:
        out = []
        half = min(self.config.evidence_frames, self.delay)
        while self._pending and self._pending[0] <= up_to:
            frame = self._pending.pop(0)
            box = _choose(self._tracks.tracks, frame, self.config, half, self.image_size)
            if box is not None:
                out.append((frame, box))
        self._tracks.drop_before(self._pending[0] if self._pending else math.inf)
        return out


def _frames_in_order(
    detections_by_frame: Mapping[int, object] | Sequence[object], frames: Iterable[int] | None
) -> list[tuple[int, list[ScoredBox]]]:
    items = (
        detections_by_frame.items()
        if isinstance(detections_by_frame, Mapping)
        else enumerate(detections_by_frame)
    )
    by_frame = {int(f): _scored_boxes(d, int(f)) for f, d in items}
    observed = sorted(range(max(by_frame, default=-1) + 1) if frames is None else {int(f) for f in frames})
    unknown = sorted(set(by_frame) - set(observed))
    if unknown:
        raise ValueError(f"frame {unknown[0]}: has detections but is not one of the observed frames")
    return [(f, by_frame.get(f, [])) for f in observed]


def apply_temporal(
    detections_by_frame: Mapping[int, object] | Sequence[object],
    mode: str = "online",
    config: TemporalConfig | None = None,
    image_size: tuple[int, int] | None = None,
    frames: Iterable[int] | None = None,
) -> dict[int, ScoredBox]:
    """Post-process one video's detections into at most one box per frame (see the module docstring).

    ``detections_by_frame`` maps a video frame index to that frame's ``(x1, y1, x2, y2, score)`` boxes (a list
    or an ``(N, 5)`` array), or is a sequence of such lists indexed by frame. ``frames`` are the frames that
    were observed (scored), default: every frame from 0 to the last one given; an observed frame without
    detections is one where the detector found nothing, a frame not observed is no evidence either way.
    Returns ``{frame: (x1, y1, x2, y2, score)}`` for the observed frames where the target is reported, in
    frame order.
    """
    if mode not in MODES:
        raise ValueError(f"temporal mode: expected one of {', '.join(MODES)}, got {mode!r}")
    config = config or TemporalConfig()
    observed = _frames_in_order(detections_by_frame, frames)
    if mode == "off":
        return {f: dets[0] for f, dets in observed if dets and dets[0][4] >= config.score_threshold}
    if mode == "online":
        tracker = OnlineTracker(config, image_size)
        out: dict[int, ScoredBox] = {}
        for frame, dets in observed:
            out.update(tracker.update(frame, dets))
        out.update(tracker.finish())
        return out
    tracks = _TrackSet(config)
    for frame, dets in observed:
        tracks.observe(frame, dets)
    by_start = sorted((t for t in tracks.tracks if t.confirmed), key=lambda t: t.frames[0])
    active: list[_Track] = []
    started = 0
    out = {}
    for frame, _ in observed:
        while started < len(by_start) and by_start[started].frames[0] <= frame:
            active.append(by_start[started])
            started += 1
        active = [t for t in active if t.last >= frame]
        box = _choose(active, frame, config, config.evidence_frames, image_size)
        if box is not None:
            out[frame] = box
    return out
