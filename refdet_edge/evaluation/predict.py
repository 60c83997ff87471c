"""Streaming prediction of one target in one video: the core of ``refdet predict``.

Frames arrive one at a time from a lazy source and are run through a :class:`~refdet_edge.runtime.Runtime`
in small batches. With temporal post-processing on, each frame's detections feed a
:class:`~refdet_edge.evaluation.temporal.SingleTargetTracker`, whose output for a frame is final once
``max_gap`` more frames have been seen; frames wait in a buffer of that depth (plus one batch) and are then
handed to ``on_frame`` with their final box. Memory stays bounded whatever the video's length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from refdet_edge.evaluation.temporal import ScoredBox, SingleTargetTracker, TemporalConfig
from refdet_edge.runtime import Runtime

FrameCallback = Callable[[int, np.ndarray | None, ScoredBox | None], None]


@dataclass
class VideoPrediction:
    """What :func:`predict_stream` found: the final box of each frame where the target is reported
    (original frame index -> ``(x1, y1, x2, y2, score)`` in original pixels), frames read, unreadable frames."""

    boxes: dict[int, ScoredBox] = field(default_factory=dict)
    frames: int = 0
    unreadable: list[int] = field(default_factory=list)


def predict_stream(
    runtime: Runtime,
    frames: Iterable[tuple[int, np.ndarray | None]],
    temporal: TemporalConfig,
    batch_size: int = 8,
    on_frame: FrameCallback | None = None,
    progress: Callable[[int], None] | None = None,
) -> VideoPrediction:
    """Run ``runtime`` (references already set, one target) over ``(index, RGB frame or None)`` pairs given
    in increasing index order.

    Each frame's box is the tracker's output when ``temporal.enabled``, else its highest-scoring detection
    (the runtime's ``conf`` is the threshold). A frame that is ``None`` or of another size than the first
    readable one counts as unreadable: no detection, listed in ``unreadable``. ``on_frame(index, frame,
    box)`` is called for every frame, in order, once its box is final; ``progress(n)`` after each batch.
    """
    result = VideoPrediction()
    tracker: SingleTargetTracker | None = None
    size: tuple[int, int] | None = None
    delay = temporal.max_gap if temporal.enabled else 0
    waiting: deque[tuple[int, np.ndarray | None]] = deque()
    batch: list[tuple[int, np.ndarray | None]] = []

    def release(up_to: float) -> None:
        while waiting and waiting[0][0] <= up_to:
            index, frame = waiting.popleft()
            if on_frame is not None:
                on_frame(index, frame, result.boxes.get(index))

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
            if temporal.enabled:
                if tracker is None and size is not None:
                    tracker = SingleTargetTracker(temporal, size)
                if tracker is not None:
                    result.boxes.update(tracker.update(index, scored))
            elif scored:
                result.boxes[index] = max(scored, key=lambda d: d[4])
            waiting.append((index, frame))
            release(index - delay)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for index, frame in frames:
        result.frames += 1
        if frame is not None:
            frame_size = (frame.shape[1], frame.shape[0])
            size = size or frame_size
            if frame_size != size:
                frame = None
        if frame is None:
            result.unreadable.append(index)
        batch.append((index, frame))
        if len(batch) >= batch_size:
            run_batch()
    if batch:
        run_batch()
    release(float("inf"))
    return result
