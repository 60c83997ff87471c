"""Temporal post-processing for single-target search: one box per frame from a detector's per-frame output.

The detector scores every frame on its own; the target, though, moves smoothly and stays in view for many
frames, while false positives flicker. All settings count frames of the video, and every function takes the
video's own frame indices, so frames left out (every k-th frame scored) change nothing but the sampling.

1. **The best path.** Per observed frame the states are "target absent" and each detection with
   ``score >= keep_threshold``. A path takes one state per frame and scores the sum of

   - each chosen detection's ``logit(score) - logit(score_threshold)`` (absent: 0),
   - ``continuity`` times the IoU of the boxes of consecutive frames (the same object moving on),
   - ``-switch_cost`` each time the target appears or disappears.

   The best path is found exactly (Viterbi). With ``continuity = switch_cost = 0`` it is each frame's best
   detection over the threshold (offline: the video's own, see Modes), the raw output: the weights only add
   what the neighbouring frames say. A strong detection anywhere takes over from a weak one at once (no
   gate locks it out), and a weak detection is kept where its deficit under the threshold costs less than
   leaving and coming back (two switches) plus what ``continuity`` pays for continuing the target.
2. **Presence runs and segments.** The path's boxes form presence runs: boxes anywhere in the frame, across
   gaps of at most ``max_gap`` frames of the video; within a run they form segments: boxes whose centres stay
   within ``gate`` box diagonals. A run is reported only if it holds at least two detections with
   ``score >= score_threshold`` that stand for ``confirm_frames`` frames of the video (each stands for the
   frames since the observed frame before it: 2 detections at stride 1 and at stride 5), so a detection that
   does not persist is never reported. Presence is confirmed per run, not per segment: while the target is
   in view, a frame whose best box jumps elsewhere (to the target found again, or to a look-alike) holds the
   target either way, so its box costs nothing if wrong; a one-frame false positive among background frames
   is a run of its own and is dropped. With ``weak_ends=False`` a confirmed run starts at its first strong
   detection and ends at its last: weak ones carry the target on between them, never into the frames before
   or after, where they may be the target leaving or a look-alike where it was (the default keeps them). A
   reported segment covers every frame from its first detection to its last: its tentative frames and its
   bridged gaps.
3. **The reported box** follows the detector: a weighted (by score) linear fit, in time, of the segment's
   own detections within ``smooth_frames`` frames either side, centred on the frame, so motion and changes
   of size or aspect are followed without lag and a perfect detector is reproduced exactly. A frame inside a
   bridged gap gets the box interpolated between the two sides. Its score is the highest detection score of
   its presence run, so every reported box passes ``score_threshold``, also on a segment of weak boxes
   inside a confirmed run (which the run's presence stands for), and what is scored is what is written.

Modes (:data:`MODES`):

- ``online``: a frame is final once :attr:`TemporalConfig.delay` more frames of the video have been seen
  (5 frames, 0.2 s at 25 fps, with the defaults): fixed-lag decoding, the best path over what is known by
  then (at most :data:`HISTORY` observed frames back). :class:`OnlineTracker` is the streaming form for a
  live system.
- ``offline``: the whole video is known: the best path over all of it, at the video's own threshold:
  ``score_threshold`` raised ``split_weight`` of the way to where the video's per-frame best scores split
  into a background group and a target group (:mod:`refdet_edge.evaluation.video_threshold`). Online, the
  future scores are unknown.
- ``off``: each frame's highest-scoring detection with ``score >= score_threshold``, unchanged (the figure
  that ``raw`` ST-IoU scores).

``continuity``, ``switch_cost``, ``confirm_frames``, ``weak_ends``, ``max_gap``, ``smooth_frames`` and
``split_weight`` were chosen with ``benchmarks/temporal_sweep.py`` on raw detections of frames that no
reported split holds (``real_data/unseen``, never ``test`` or ``seen``): the 4 validation objects (the
two-stage baseline and the verifying mobilenetv2 model at ``verify_scale`` 2) and the training part of the
17 training objects (that model, whose weights training never moved); the others on synthetic streams
(``tests/test_temporal.py``). The chosen ``continuity`` is 0: the path adds only the switch cost to each
frame's detections.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from refdet_edge.evaluation.settings import MODES, TemporalConfig
from refdet_edge.evaluation.video_threshold import video_threshold

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


HISTORY = 250  # observed frames the online mode keeps (10 s at 25 fps): its memory is bounded
EPS = 1e-6


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4) and (N, 4) xyxy boxes -> (M, N) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


@dataclass
class _Step:
    """One observed frame of the forward pass: its candidates (K, 5), best first, the value of the best
    path ending in each state (K + 1; state 0 is "absent") and that path's state at the previous step."""

    frame: int
    boxes: np.ndarray
    value: np.ndarray
    back: np.ndarray


class _Path:
    """Step 1 of the module docstring: the Viterbi forward pass, one observed frame at a time."""

    def __init__(self, config: TemporalConfig, history: int | None = None) -> None:
        self.config = config
        self.steps: deque[_Step] = deque(maxlen=history)

    def observe(self, frame: int, detections: list[ScoredBox]) -> None:
        cfg = self.config
        boxes = np.array([d for d in detections if d[4] >= cfg.keep_threshold], dtype=np.float64)
        boxes = boxes.reshape(-1, 5)
        unary = np.concatenate([[0.0], _logit(boxes[:, 4]) - _logit(cfg.score_threshold)])
        if not self.steps:
            value, back = unary, np.zeros(len(unary), dtype=np.int64)
        else:
            prev = self.steps[-1]
            step = np.zeros((len(prev.boxes) + 1, len(boxes) + 1))
            step[0, 1:] = step[1:, 0] = -cfg.switch_cost
            if len(prev.boxes) and len(boxes):
                step[1:, 1:] = cfg.continuity * _iou_matrix(prev.boxes[:, :4], boxes[:, :4])
            total = prev.value[:, None] + step
            back, value = total.argmax(0), total.max(0) + unary
        self.steps.append(_Step(frame, boxes, value - value.max(), back))

    def best(self) -> list[tuple[int, np.ndarray | None]]:
        """Each kept frame and its detection (x1, y1, x2, y2, score) on the best path (None: absent)."""
        if not self.steps:
            return []
        state, out = int(self.steps[-1].value.argmax()), []
        for step in reversed(self.steps):
            out.append((step.frame, step.boxes[state - 1] if state else None))
            state = int(step.back[state])
        return out[::-1]

    @property
    def last_frame(self) -> int | None:
        return self.steps[-1].frame if self.steps else None


@dataclass
class _Segment:
    """Step 2: consecutive boxes of the path (video frame, box, score) and their evidence."""

    frames: list[int]
    boxes: list[np.ndarray]
    scores: list[float]
    strong_hits: int = 0  # detections >= score_threshold
    coverage: int = 0  # frames of the video they stand for

    @property
    def last(self) -> int:
        return self.frames[-1]

    def add(self, frame: int, det: np.ndarray, previous: int | None, config: TemporalConfig) -> None:
        """Append a detection; ``previous`` is the observed frame before ``frame``."""
        self.frames.append(frame)
        self.boxes.append(np.asarray(det[:4], dtype=np.float64))
        self.scores.append(float(det[4]))
        if det[4] >= config.score_threshold:
            self.strong_hits += 1
            self.coverage += 1 if previous is None else frame - previous

    def keep(self, lo: int, hi: int) -> None:
        """Keep only the detections ``lo:hi``."""
        self.frames, self.boxes, self.scores = self.frames[lo:hi], self.boxes[lo:hi], self.scores[lo:hi]

    def continues(self, det: np.ndarray, missed: int, config: TemporalConfig) -> bool:
        """Whether ``det`` carries on this segment: after a gap whose observed frames without the target
        span ``missed`` frames of the video (frames not observed never end it), within the gate."""
        if missed > config.max_gap:
            return False
        last = self.boxes[-1]
        reach = config.gate * max(math.hypot(last[2] - last[0], last[3] - last[1]), 1e-6)
        centre = (last[:2] + last[2:]) / 2
        return math.hypot(*((det[:2] + det[2:4]) / 2 - centre)) <= reach

    def _fit(self, frame: int, half_width: int) -> np.ndarray:
        """Score-weighted linear fit in time of the detections within ``half_width`` frames, at ``frame``."""
        lo = bisect.bisect_left(self.frames, frame - half_width)
        hi = bisect.bisect_right(self.frames, frame + half_width)
        t = np.asarray(self.frames[lo:hi], dtype=np.float64) - frame
        w = np.asarray(self.scores[lo:hi], dtype=np.float64) + 1e-9  # scores of 0 still count a little
        y = np.stack(self.boxes[lo:hi])
        if len(y) == 1:
            return y[0]
        s0, s1, s2 = w.sum(), (w * t).sum(), (w * t * t).sum()
        det = s0 * s2 - s1 * s1
        if det <= 1e-9 * max(s0 * s2, 1e-12):
            return (w[:, None] * y).sum(0) / s0
        return (s2 * (w[:, None] * y).sum(0) - s1 * (w[:, None] * t[:, None] * y).sum(0)) / det

    def box_at(self, frame: int, smooth: int) -> np.ndarray | None:
        """Step 3: the box at ``frame``: the fit at a frame with a detection, interpolated inside a gap."""
        i = bisect.bisect_left(self.frames, frame)
        if i < len(self.frames) and self.frames[i] == frame:
            return self._fit(frame, smooth)
        if i == 0 or i == len(self.frames):
            return None
        a, b = self.frames[i - 1], self.frames[i]
        u = (frame - a) / (b - a)
        return (1 - u) * self._fit(a, smooth) + u * self._fit(b, smooth)


def _confirmed(run: list[_Segment], config: TemporalConfig) -> bool:
    """Whether a presence run's strong detections, over all its segments, confirm it (step 2)."""
    hits, coverage = sum(s.strong_hits for s in run), sum(s.coverage for s in run)
    return hits >= min(2, config.confirm_frames) and coverage >= config.confirm_frames


def _segments(
    path: list[tuple[int, np.ndarray | None]], config: TemporalConfig
) -> list[tuple[_Segment, float]]:
    """The reported segments of a path (step 2), in frame order: those of a confirmed presence run, each with
    the run's highest detection score (step 3)."""
    runs: list[list[_Segment]] = []
    previous: int | None = None
    first_miss: int | None = None
    for frame, det in path:
        if det is None:
            first_miss = frame if first_miss is None else first_miss
        else:
            missed = 0 if first_miss is None else previous - first_miss + 1
            if not runs or missed > config.max_gap:
                runs.append([])
            if not runs[-1] or not runs[-1][-1].continues(det, missed, config):
                runs[-1].append(_Segment([], [], []))
            runs[-1][-1].add(frame, det, previous, config)
            first_miss = None
        previous = frame
    return [
        (segment, max(score for part in run for score in part.scores))
        for run in runs
        if _confirmed(run, config)
        for segment in (run if config.weak_ends else _trimmed(run, config))
    ]


def _trimmed(run: list[_Segment], config: TemporalConfig) -> list[_Segment]:
    """A confirmed presence run from its first detection with ``score >= score_threshold`` to its last (step
    2): weak detections carry the target on between strong ones, never before the first or after the last."""
    strong = [
        (i, j)
        for i, segment in enumerate(run)
        for j, score in enumerate(segment.scores)
        if score >= config.score_threshold
    ]
    (first_segment, first), (last_segment, last) = strong[0], strong[-1]
    kept = run[first_segment : last_segment + 1]
    kept[-1].keep(0, last + 1)  # first the end: ``first`` counts from the same start either way
    kept[0].keep(first, len(kept[0].frames))
    return kept


def _report(
    segments: list[tuple[_Segment, float]],
    frames: Iterable[int],
    config: TemporalConfig,
    image_size: tuple[int, int] | None,
) -> list[tuple[int, ScoredBox]]:
    """The reported box of each of ``frames`` (in increasing order) that a segment covers, with its run's
    score."""
    out, i = [], 0
    for frame in frames:
        while i < len(segments) and segments[i][0].last < frame:
            i += 1
        if i == len(segments) or segments[i][0].frames[0] > frame:
            continue
        segment, score = segments[i]
        box = segment.box_at(frame, config.smooth_frames)
        if box is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, y1 = max(x1, 0.0), max(y1, 0.0)
        if image_size is not None:
            x2, y2 = min(x2, float(image_size[0])), min(y2, float(image_size[1]))
        if x2 > x1 and y2 > y1:
            out.append((frame, (x1, y1, x2, y2, score)))
    return out


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
        self._path = _Path(self.config, HISTORY)
        self._pending: list[int] = []

    @property
    def delay(self) -> int:
        return self.config.delay

    def update(self, frame: int, detections: object) -> list[tuple[int, ScoredBox]]:
        """Add ``frame``'s ``(x1, y1, x2, y2, score)`` detections; returns the ``(frame, box)`` made final."""
        last = self._path.last_frame
        if last is not None and frame <= last:
            raise ValueError(f"frame {frame}: frames must come in increasing order (last was {last})")
        self._path.observe(frame, _scored_boxes(detections, frame))
        self._pending.append(frame)
        return self._release(frame - self.delay)

    def finish(self) -> list[tuple[int, ScoredBox]]:
        """The boxes of the frames still waiting (the end of the video is known now)."""
        return self._release(math.inf)

    def _release(self, up_to: float) -> list[tuple[int, ScoredBox]]:
        ready = [f for f in self._pending if f <= up_to]
        if not ready:
            return []
        self._pending = self._pending[len(ready) :]
        segments = _segments(self._path.best(), self.config)
        return _report(segments, ready, self.config, self.image_size)


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


def _offline_threshold(observed: list[tuple[int, list[ScoredBox]]], config: TemporalConfig) -> float:
    return video_threshold([dets[0][4] if dets else 0.0 for _, dets in observed], config)


def offline_threshold(
    detections_by_frame: Mapping[int, object] | Sequence[object],
    config: TemporalConfig | None = None,
    frames: Iterable[int] | None = None,
) -> float:
    """The threshold the ``offline`` mode of :func:`apply_temporal` uses on one video (the same arguments):
    :func:`~refdet_edge.evaluation.video_threshold.video_threshold` of each observed frame's best score."""
    return _offline_threshold(_frames_in_order(detections_by_frame, frames), config or TemporalConfig())


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
    config = replace(config, score_threshold=_offline_threshold(observed, config))
    path = _Path(config)
    for frame, dets in observed:
        path.observe(frame, dets)
    return dict(_report(_segments(path.best(), config), [f for f, _ in observed], config, image_size))
