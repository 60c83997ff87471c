"""Video input and output of ``refdet predict``: one video (an .mp4 or a folder of frames) in, annotated mp4 out.

Frames are decoded one at a time by the readers of :mod:`refdet_edge.data.video`, so a video is never held in
memory; the annotated video is written frame by frame with OpenCV's ``VideoWriter`` (mp4v).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from refdet_edge.data.annotations import DatasetError, validate_video_id, where
from refdet_edge.data.video import FRAMES_DIR, VIDEO_NAME, FolderFrames, VideoFileFrames

BOX_COLOUR = (0, 255, 0)  # BGR


def video_id_of(path: Path) -> str:
    """The video id of a video file or frames folder: its name without suffix, or the name of the folder
    holding it when it sits in the dataset layout (``<video_id>/drone_video.mp4``, ``<video_id>/frames/``)."""
    path = Path(path).resolve()
    name = path.name if path.is_dir() else path.stem
    if name in (FRAMES_DIR, Path(VIDEO_NAME).stem):
        name = path.parent.name
    return validate_video_id(name, path, "video id (use --video-id)")


def open_video(path: Path, video_id: str) -> FolderFrames | VideoFileFrames:
    """A lazy frame source for ``path``: a folder of frames named by index, or a video file OpenCV reads."""
    path = Path(path)
    if path.is_dir():
        return FolderFrames(path, video_id)
    if path.is_file():
        return VideoFileFrames(path, video_id)
    raise DatasetError(f"{where(path, video_id, 'video')}: no such video file or frames folder")


def frame_rate(source: FolderFrames | VideoFileFrames, default: float) -> float:
    """The frame rate in a video file's header, else ``default`` (frames folders have none)."""
    if not isinstance(source, VideoFileFrames):
        return default
    capture = cv2.VideoCapture(str(source.path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return float(fps) if math.isfinite(fps) and fps > 0 else default


class AnnotatedVideoWriter:
    """Writes RGB frames with their box and score drawn into an mp4 file, one frame at a time.

    The file is opened on the first readable frame (its size is the video's size). A frame given as ``None``
    (unreadable in the source) is written black, so the output has as many frames as the source.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = Path(path), fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._blank_before_open = 0
        self.frames_written = 0

    def _open(self, size: tuple[int, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
        if not writer.isOpened():
            raise DatasetError(f"{where(self.path)}: OpenCV cannot write an mp4v video here")
        self._writer, self._size = writer, size
        for _ in range(self._blank_before_open):
            self._put(np.zeros((size[1], size[0], 3), np.uint8))

    def _put(self, bgr: np.ndarray) -> None:
        self._writer.write(bgr)
        self.frames_written += 1

    def write(self, frame: np.ndarray | None, box: Sequence[float] | None) -> None:
        """Append one RGB frame (or ``None``) with ``box`` (``x1, y1, x2, y2[, score]``, original pixels)."""
        if frame is None:
            if self._writer is None:
                self._blank_before_open += 1
            else:
                self._put(np.zeros((self._size[1], self._size[0], 3), np.uint8))
            return
        if self._writer is None:
            self._open((frame.shape[1], frame.shape[0]))
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if box is not None:
            x1, y1, x2, y2 = (round(v) for v in box[:4])
            cv2.rectangle(bgr, (x1, y1), (x2, y2), BOX_COLOUR, 2)
            if len(box) > 4:
                cv2.putText(
                    bgr, f"{box[4]:.2f}", (x1, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_COLOUR, 1
                )
        self._put(bgr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
