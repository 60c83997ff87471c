"""Frame sources of one video: a ``frames/`` folder of images or a ``drone_video.mp4`` decoded with OpenCV.

Both decode one frame at a time (:meth:`iter_frames`), so a full-resolution video is never held in memory.
A frame that cannot be decoded is yielded as ``None`` (the caller skips and counts it); a video that cannot
be opened, or of which no frame decodes, raises :class:`DatasetError`. A video file is read to its real end:
the frame count in its header is only a hint, often off for valid files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from refdet_edge.data.annotations import DatasetError, where
from refdet_edge.preprocess import ImageReadError, read_image_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_NAME = "drone_video.mp4"
FRAMES_DIR = "frames"


class FolderFrames:
    """``frames/<index>.jpg``: the file stem is the frame index; a missing index counts as unreadable."""

    def __init__(self, folder: Path, video_id: str):
        self.folder, self.video_id = folder, video_id
        self.location = folder
        self.files: dict[int, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not path.stem.isdigit():
                raise DatasetError(f"{where(path, video_id, 'frames')}: frame file name is not a frame index")
            self.files[int(path.stem)] = path
        if not self.files:
            raise DatasetError(f"{where(folder, video_id, 'frames')}: no frame images in the folder")
        self.num_frames = max(self.files) + 1

    def signature(self) -> str:
        """Changes whenever a frame file is added, removed or rewritten."""
        digest = hashlib.sha1()
        for index, path in self.files.items():
            stat = path.stat()
            digest.update(f"{index}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray | None]]:
        for index in range(self.num_frames):
            path = self.files.get(index)
            try:
                yield index, read_image_rgb(path) if path is not None else None
            except ImageReadError:
                yield index, None


class VideoFileFrames:
    """An mp4 (or any container OpenCV reads), decoded sequentially to its real end.

    ``num_frames`` is the header's frame count until :meth:`iter_frames` has read the video through, then the
    number of frames it really holds.
    """

    RETRIES = 5  # failed reads in a row after which the video has ended (fewer: unreadable frames)

    def __init__(self, path: Path, video_id: str):
        self.path, self.video_id = path, video_id
        self.location = path
        capture = cv2.VideoCapture(str(path))
        try:
            ok = capture.isOpened()
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
            ok = ok and capture.grab()
        finally:
            capture.release()
        if not ok:
            raise DatasetError(
                f"{where(path, video_id, 'drone_video.mp4')}: unreadable video (OpenCV cannot open it or "
                "decode its first frame)"
            )
        self.num_frames = max(count, 1)

    def signature(self) -> str:
        stat = self.path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray | None]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index, failed = 0, 0
            while failed <= self.RETRIES:
                ok, frame = capture.read()
                if not ok:
                    failed += 1
                    continue
                for _ in range(failed):  # frames that failed to decode before this one
                    yield index, None
                    index += 1
                failed = 0
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise DatasetError(
                f"{where(self.path, self.video_id, 'drone_video.mp4')}: no frame could be decoded"
            )
        self.num_frames = index


def open_frames(sample_dir: Path, video_id: str) -> FolderFrames | VideoFileFrames:
    """The frame source of ``samples/<video_id>``: ``frames/`` when present, else ``drone_video.mp4``."""
    folder, video = sample_dir / FRAMES_DIR, sample_dir / VIDEO_NAME
    if folder.is_dir():
        return FolderFrames(folder, video_id)
    if video.is_file():
        return VideoFileFrames(video, video_id)
    raise DatasetError(
        f"{where(sample_dir, video_id, 'frames')}: neither {FRAMES_DIR}/ nor {VIDEO_NAME} exists"
    )
