"""On-disk cache of resized frames, so training epochs never decode full-resolution video again.

Each video is decoded once, one frame at a time; every frame is resized so that its long side is at most
``size`` pixels and written as a JPEG under ``<cache_dir>/<video_id>/``. A ``meta.json`` written last records
the source's signature, the original frame size, the frame count and the frames that could not be decoded;
the cache is rebuilt when the source changes. Files are written under temporary names and renamed, so
concurrent builders (e.g. two processes) never leave a half-written frame. Reading a cached frame costs one
small JPEG decode and no memory beyond that frame.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from refdet_edge.data.annotations import DatasetError, where
from refdet_edge.data.video import FolderFrames, VideoFileFrames
from refdet_edge.preprocess import encode_jpeg

CACHE_VERSION = 1
JPEG_QUALITY = 95


@dataclass(frozen=True)
class CachedVideo:
    """What the cache knows about one video."""

    video_id: str
    folder: Path
    num_frames: int
    orig_size: tuple[int, int]  # (width, height) of the original frames
    scale: float  # cached pixels per original pixel
    bad_frames: tuple[int, ...]  # frame indices that could not be decoded (skipped)

    def frame_path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.jpg"


def default_cache_dir(root: Path) -> Path:
    """``<root>/.cache`` when the dataset folder is writable, else a per-dataset folder in the user cache."""
    root = root.resolve()
    if os.access(root, os.W_OK):
        return root / ".cache"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "refdet_edge" / f"{root.name}-{digest}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FrameCache:
    """Resized frames of every video of a dataset, at long side ``size``, under ``cache_dir/frames_<size>``."""

    def __init__(self, cache_dir: Path, size: int):
        if size < 32:
            raise ValueError(f"cache size must be at least 32 pixels, got {size}")
        self.size = size
        self.dir = Path(cache_dir) / f"frames_{size}"

    def ensure(self, video_id: str, source: FolderFrames | VideoFileFrames) -> CachedVideo:
        """The cached video, building the cache first if it is missing or stale."""
        folder = self.dir / video_id
        meta_path = folder / "meta.json"
        signature = source.signature()
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("version") == CACHE_VERSION and meta.get("signature") == signature:
                return self._cached(video_id, folder, meta)
        return self._cached(video_id, folder, self._build(video_id, source, folder, meta_path, signature))

    def _cached(self, video_id: str, folder: Path, meta: dict) -> CachedVideo:
        return CachedVideo(
            video_id=video_id,
            folder=folder,
            num_frames=meta["num_frames"],
            orig_size=tuple(meta["orig_size"]),
            scale=meta["scale"],
            bad_frames=tuple(meta["bad_frames"]),
        )

    def _build(
        self,
        video_id: str,
        source: FolderFrames | VideoFileFrames,
        folder: Path,
        meta_path: Path,
        signature: str,
    ) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        orig_size: tuple[int, int] | None = None
        scale = 1.0
        bad: list[int] = []
        for index, frame in source.iter_frames():
            if frame is not None and orig_size is not None and (frame.shape[1], frame.shape[0]) != orig_size:
                frame = None  # a frame of another size than the first one is as good as unreadable
            if frame is None:
                bad.append(index)
                continue
            if orig_size is None:
                orig_size = (frame.shape[1], frame.shape[0])
                scale = min(1.0, self.size / max(orig_size))
            if scale < 1.0:
                new_size = (max(1, round(orig_size[0] * scale)), max(1, round(orig_size[1] * scale)))
                frame = cv2.resize(frame, new_size, interpolation=cv2.INTER_AREA)
            _write_atomic(folder / f"{index:06d}.jpg", encode_jpeg(frame, JPEG_QUALITY))
        if orig_size is None:
            raise DatasetError(f"{where(source.location, video_id, 'frames')}: no frame could be decoded")
        meta = {
            "version": CACHE_VERSION,
            "signature": signature,
            "num_frames": source.num_frames,
            "orig_size": list(orig_size),
            "scale": scale,
            "bad_frames": bad,
        }
        _write_atomic(meta_path, json.dumps(meta).encode())
        return meta

    @staticmethod
    def read(video: CachedVideo, index: int) -> np.ndarray:
        """The cached frame ``index`` as RGB uint8; raises :class:`DatasetError` if it is not cached."""
        path = video.frame_path(index)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(
                f"{where(path, video.video_id, 'frames')}: cached frame {index} is missing or unreadable "
                f"(delete {video.folder} to rebuild the cache)"
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
