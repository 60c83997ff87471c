"""Streaming prediction of one target in one video: the core of ``refdet predict``.

Frames arrive one at a time from a lazy source and are run through a :class:`~refdet_edge.runtime.Runtime`
in small batches; each frame's raw detections are kept (a few boxes per frame) and turned into one box per
frame by the temporal mode:

- ``online``: an :class:`~refdet_edge.evaluation.temporal.OnlineTracker`, whose output for a frame is final
  once ``delay`` more frames have been seen; frames wait in a buffer of that depth (plus one batch) and are
  then handed to ``on_frame`` with their final box. Memory stays bounded whatever the video's length.
- ``off``: each frame's best detection over the threshold, handed on at once.
- ``offline``: the boxes are known only once the whole video has been seen, so ``on_frame`` is never called
  (decode the video again to draw them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from refdet_edge.evaluation.temporal import OnlineTracker, ScoredBox, TemporalConfig, apply_temporal
from refdet_edge.runtime import Runtime

FrameCallback = Callable[[int, np.ndarray | None, ScoredBox | None], None]


@dataclass
class VideoPrediction:
    """What :func:`predict_stream` found: the final box of each frame where the target is reported
    (original frame index -> ``(x1, y1, x2, y2, score)`` in original pixels), every frame's raw detections,
    frames read, unreadable frames, the frame size and the highest raw score (``None``: no detection)."""

    boxes: dict[int, ScoredBox] = field(default_factory=dict)
    raw: dict[int, list[ScoredBox]] = field(default_factory=dict)
    frames: int = 0
    unreadable: list[int] = field(default_factory=list)
    size: tuple[int, int] | None = None
    max_score: float | None = None


def predict_stream(
    runtime: Runtime,
    frames: Iterable[tuple[int, np.ndarray | None]],
    temporal: TemporalConfig,
    batch_size: int = 8,
    on_frame: FrameCallback | None = None,
    progress: Callable[[int], None] | None = None,
    mode: str = "online",
) -> VideoPrediction:
    """Run ``runtime`` (references already set, one target, its ``conf`` at or under
    ``temporal.keep_threshold``) over ``(index, RGB frame or None)`` pairs in increasing index order.

    A frame that is ``None`` or of another size than the first readable one counts as unreadable: no
    detection, listed in ``unreadable``. ``on_frame(index, frame, box)`` is called for every frame, in
    order, once its box is final (not in ``offline`` mode); ``progress(n)`` after each batch.
    """
    if mode not in ("online", "offline", "off"):
        raise ValueError(f"temporal mode: expected online, offline or off, got {mode!r}")
    result = VideoPrediction()
    tracker: OnlineTracker | None = None
    delay = temporal.delay if mode == "online" else 0
    waiting: deque[tuple[int, np.ndarray | None]] = deque()
    batch: list[tuple[int, np.ndarray | None]] = []
    callback = None if mode == "offline" else on_frame

    def release(up_to: float) -> None:
        while waiting and waiting[0][0] <= up_to:
            index, frame = waiting.popleft()
            if callback is not None:
                callback(index, frame, result.boxes.get(index))

    def run_batch() -> None:
        nonlocal tracker
        readable = [frame for _, frame in batch if frame is not None]
        found = iter(runtime(readable) if readable else [])
        for index, frame in batch:
            dets = next(found) if frame is not None else None
            scored = (
                [
                    (*map(float, b), float(s))
                    for b, s in zip(dets.boxes.tolist(), dets.scores.tolist(), strict=True)
                ]
                if dets is not None
                else []
            )
            result.raw[index] = scored
            best = max(scored, key=lambda d: d[4], default=None)
            if best is not None:
                result.max_score = max(result.max_score or 0.0, best[4])
            if mode == "online" and result.size is not None:
                tracker = tracker or OnlineTracker(temporal, result.size)
                result.boxes.update(tracker.update(index, scored))
            elif mode == "off" and best is not None and best[4] >= temporal.score_threshold:
                result.boxes[index] = best
            waiting.append((index, frame))
            release(index - delay)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for index, frame in frames:
        result.frames += 1
        if frame is not None:
            frame_size = (frame.shape[1], frame.shape[0])
            result.size = result.size or frame_size
            if frame_size != result.size:
                frame = None
        if frame is None:
            result.unreadable.append(index)
        batch.append((index, frame))
        if len(batch) >= batch_size:
            run_batch()
    if batch:
        run_batch()
    if tracker is not None:
        result.boxes.update(tracker.finish())
    if mode == "offline":
        result.boxes = apply_temporal(result.raw, "offline", temporal, result.size, frames=result.raw)
    release(float("inf"))
    return result
