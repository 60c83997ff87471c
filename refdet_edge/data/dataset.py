"""Reader of the dataset layout of DESIGN.md: videos, reference photos, annotations and splits.

    <root>/samples/<video_id>/object_images/*.jpg     reference photos (at least one)
    <root>/samples/<video_id>/frames/000000.jpg ...   or <root>/samples/<video_id>/drone_video.mp4
    <root>/annotations/annotations.json
    <root>/splits.json                                 optional (see :mod:`refdet_edge.data.splits`)
    <root>/sources.json                                optional (see :mod:`refdet_edge.data.sources`)

Constructing a :class:`DroneDataset` validates everything and builds the resized frame cache of each video
once (see :mod:`refdet_edge.data.cache`); afterwards a frame costs one small JPEG read, and the object holds
only per-video metadata, so it is cheap to copy into DataLoader workers. Each video is one target; its label is
its index in the sorted list of all videos of ``annotations.json`` (the same in every split). A frame may show
another target besides its own (a frame spliced in from that target's video, or a frame of a twin video):
``VideoRecord.shows`` says which, from ``sources.json``, so that samplers never present it as "absent" to the
references of a target it shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from refdet_edge.data.annotations import Box, DatasetError, load_annotations, validate_video_id, where
from refdet_edge.data.cache import CachedVideo, FrameCache, default_cache_dir
from refdet_edge.data.sources import SOURCES_FILE, Sources, load_sources
from refdet_edge.data.splits import SPLIT_NAMES, SPLITS_FILE, load_splits
from refdet_edge.data.video import IMAGE_SUFFIXES, open_frames
from refdet_edge.preprocess import ImageReadError, read_image_rgb

LOGGER = logging.getLogger(__name__)
ANNOTATIONS_PATH = Path("annotations") / "annotations.json"
REFERENCES_DIR = "object_images"


@dataclass(frozen=True)
class VideoRecord:
    """One video (= one target) restricted to the frames of a split."""

    video_id: str
    label: int
    sample_dir: Path
    references: tuple[Path, ...]
    boxes: dict[int, Box]  # original-frame pixels, every annotated frame of the video
    cached: CachedVideo
    frames: tuple[int, ...]  # readable frame indices in this split
    positive_frames: tuple[int, ...]  # those with a box
    background_frames: tuple[int, ...]  # those without
    shows: dict[int, frozenset[int]] = field(default_factory=dict)  # frame -> labels of other targets in it

    def clean_for(self, frame: int, labels: set[int] | frozenset[int]) -> bool:
        """Whether ``frame`` shows none of the targets ``labels`` besides (maybe) its own."""
        return not self.shows.get(frame, frozenset()) & labels


def reference_paths(sample_dir: Path, video_id: str) -> tuple[Path, ...]:
    """The sorted reference images of a video; raises if the folder is missing or holds no image."""
    folder = sample_dir / REFERENCES_DIR
    if not folder.is_dir():
        raise DatasetError(
            f"{where(folder, video_id, REFERENCES_DIR)}: missing (a video needs reference images)"
        )
    paths = tuple(p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DatasetError(f"{where(folder, video_id, REFERENCES_DIR)}: empty (no .jpg/.png reference image)")
    return paths


def read_reference(path: Path, video_id: str) -> np.ndarray:
    """One reference photo as RGB uint8, or :class:`DatasetError` naming file, video and field."""
    try:
        return read_image_rgb(path)
    except ImageReadError as err:
        raise DatasetError(f"{where(path, video_id, f'{REFERENCES_DIR}/{path.name}')}: {err}") from None


class DroneDataset:
    """The videos of ``root`` in one split (``None``: every frame of every video).

    Args:
        root: dataset folder.
        split: ``"train"``, ``"val"``, ``"test"``, ``"seen"`` or ``None``.
        cache_size: long side of the cached frames (use at least the model's ``imgsz``).
        cache_dir: where the frame cache lives (default: ``<root>/.cache`` if writable, else the user cache).
        check_references: decode every reference photo now, so a bad one fails here and not mid-training.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        cache_size: int = 640,
        cache_dir: str | Path | None = None,
        check_references: bool = True,
    ):
        self.root = Path(root)
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES} or None, got {split!r}")
        self.split = split
        samples = self.root / "samples"
        if not samples.is_dir():
            raise DatasetError(f"{where(samples)}: no samples/ folder (is {self.root} a dataset?)")
        self.annotations_path = self.root / ANNOTATIONS_PATH
        all_boxes = load_annotations(self.annotations_path)
        if not all_boxes:
            raise DatasetError(f"{where(self.annotations_path)}: lists no video")
        unlisted = sorted(p.name for p in samples.iterdir() if p.is_dir() and p.name not in all_boxes)
        if unlisted:
            LOGGER.warning(
                "%s: %d video folder(s) not in annotations.json, ignored: %s",
                samples,
                len(unlisted),
                ", ".join(unlisted[:5]),
            )
        self.video_ids = sorted(all_boxes)
        ranges = self._split_ranges()
        self.cache = FrameCache(Path(cache_dir) if cache_dir else default_cache_dir(self.root), cache_size)
        sources = load_sources(self.root)
        labels = {video_id: label for label, video_id in enumerate(self.video_ids)}
        self.twins: dict[int, frozenset[int]] = {}  # label -> labels of the videos with the same frames
        self.videos: list[VideoRecord] = []
        for label, video_id in enumerate(self.video_ids):
            if sources is not None:
                twins = self._labels(sources.group(video_id) - {video_id}, labels)
                if twins:
                    self.twins[label] = twins
            if ranges is None or video_id in ranges:
                spans = None if ranges is None else ranges[video_id]
                record = self._record(video_id, label, all_boxes[video_id], spans, check_references)
                self.videos.append(record if sources is None else self._with_sources(record, sources, labels))
        self.by_label = {v.label: v for v in self.videos}

    def _split_ranges(self) -> dict[str, list[tuple[int, int | None]]] | None:
        if self.split is None:
            return None
        path = self.root / SPLITS_FILE
        if not path.is_file():
            LOGGER.warning(
                "%s: no %s, so the %r split is every frame of every video", self.root, SPLITS_FILE, self.split
            )
            return None
        ranges = load_splits(path).get(self.split, {})
        for video_id in ranges:
            validate_video_id(video_id, path)
            if video_id not in self.video_ids:
                raise DatasetError(
                    f"{where(path, video_id, self.split)}: video not in {self.annotations_path}"
                )
        return ranges

    @staticmethod
    def _labels(names: frozenset[str], labels: dict[str, int]) -> frozenset[int]:
        return frozenset(labels[n] for n in names if n in labels)

    def _with_sources(self, record: VideoRecord, sources: Sources, labels: dict[str, int]) -> VideoRecord:
        """``record`` with ``shows`` from ``sources.json``, whose frame list must match the video."""
        listed = sources.frames.get(record.video_id)
        if listed is not None and len(listed) != record.cached.num_frames:
            raise DatasetError(
                f"{where(self.root / SOURCES_FILE, record.video_id, 'frames')}: {len(listed)} sources for a "
                f"video of {record.cached.num_frames} frames (stale sources.json?)"
            )
        shows = {f: self._labels(s, labels) for f, s in sources.shows(record.video_id).items()}
        return replace(record, shows={f: s for f, s in shows.items() if s})

    def _record(
        self,
        video_id: str,
        label: int,
        boxes: dict[int, Box],
        spans: list[tuple[int, int | None]] | None,
        check_references: bool,
    ) -> VideoRecord:
        sample_dir = self.root / "samples" / video_id
        if not sample_dir.is_dir():
            raise DatasetError(
                f"{where(self.annotations_path, video_id, 'video_id')}: no folder {sample_dir}"
            )
        refs = reference_paths(sample_dir, video_id)
        if check_references:
            for path in refs:
                read_reference(path, video_id)
        cached = self.cache.ensure(video_id, open_frames(sample_dir, video_id))
        width, height = cached.orig_size
        for frame, box in boxes.items():
            field = f"annotations (frame {frame})"
            if frame >= cached.num_frames:
                raise DatasetError(
                    f"{where(self.annotations_path, video_id, field)}: frame index past the end of the video "
                    f"({cached.num_frames} frames)"
                )
            if box[2] > width or box[3] > height:
                raise DatasetError(
                    f"{where(self.annotations_path, video_id, field)}: box {list(box)} outside the "
                    f"{width}x{height} frame"
                )
        if cached.bad_frames:
            LOGGER.warning(
                "video %r: %d unreadable frame(s) skipped (first: %d)",
                video_id,
                len(cached.bad_frames),
                cached.bad_frames[0],
            )
        bad = set(cached.bad_frames)
        frames: list[int] = []
        for start, end in spans or [(0, None)]:
            end = cached.num_frames if end is None else end
            if end > cached.num_frames:
                raise DatasetError(
                    f"{where(self.root / SPLITS_FILE, video_id, f'{self.split}.frames')}: range end {end} is past "
                    f"the end of the video ({cached.num_frames} frames)"
                )
            frames.extend(i for i in range(start, end) if i not in bad)
        frames = sorted(set(frames))
        return VideoRecord(
            video_id=video_id,
            label=label,
            sample_dir=sample_dir,
            references=refs,
            boxes=boxes,
            cached=cached,
            frames=tuple(frames),
            positive_frames=tuple(f for f in frames if f in boxes),
            background_frames=tuple(f for f in frames if f not in boxes),
        )

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def num_frames(self) -> int:
        """Readable frames in this split, over all videos."""
        return sum(len(v.frames) for v in self.videos)

    def load_frame(self, video: VideoRecord, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Cached frame ``index`` (RGB uint8) and its box as float32 xyxy in cached pixels, or ``None``."""
        image = self.cache.read(video.cached, index)
        box = video.boxes.get(index)
        return image, None if box is None else np.asarray(box, dtype=np.float32) * video.cached.scale

    @staticmethod
    def load_references(video: VideoRecord) -> list[np.ndarray]:
        """Every reference photo of ``video`` as RGB uint8, at its own size."""
        return [read_reference(path, video.video_id) for path in video.references]
