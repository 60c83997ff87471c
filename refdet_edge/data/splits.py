"""``<root>/splits.json``: which videos and frame ranges make up the train, val and test splits.

    {"train": [{"video_id": "v0", "frames": [0, 84]}, {"video_id": "v1"}],
     "val":   [{"video_id": "v0", "frames": [84, 102]}],
     "test":  [{"video_id": "v0", "frames": [102, 120]}]}

``"frames": [start, end]`` is a half-open range of frame indices (``start <= frame < end``); without it the
entry is the whole video. A video may appear in several splits with disjoint ranges. Without a splits file
every split is the whole dataset (and :class:`~refdet_edge.data.dataset.DroneDataset` warns), so validation
and test numbers are then measured on training frames.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from refdet_edge.data.annotations import DatasetError, validate_video_id, where

SPLITS_FILE = "splits.json"
SPLIT_NAMES = ("train", "val", "test")
Ranges = dict[str, list[tuple[int, int | None]]]  # video_id -> [(start, end or None = to the end)]


def load_splits(path: Path) -> dict[str, Ranges]:
    """Parse and validate a splits file into ``{split: {video_id: [(start, end), ...]}}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where(path)}: not valid JSON ({err})") from None
    except OSError as err:
        raise DatasetError(f"{where(path)}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where(path)}: expected an object with keys {list(SPLIT_NAMES)}")
    unknown = sorted(set(data) - set(SPLIT_NAMES))
    if unknown:
        raise DatasetError(f"{where(path, None, unknown[0])}: unknown split (expected {list(SPLIT_NAMES)})")
    splits: dict[str, Ranges] = {}
    for name, entries in data.items():
        if not isinstance(entries, list):
            raise DatasetError(
                f"{where(path, None, name)}: expected a list of {{'video_id', 'frames'}} entries"
            )
        ranges: Ranges = {}
        for i, entry in enumerate(entries):
            field = f"{name}[{i}]"
            if not isinstance(entry, dict) or "video_id" not in entry:
                raise DatasetError(f"{where(path, None, field)}: expected an object with a 'video_id'")
            video_id = validate_video_id(entry["video_id"], path, f"{field}.video_id")
            frames = entry.get("frames")
            if frames is None:
                span: tuple[int, int | None] = (0, None)
            elif (
                isinstance(frames, list)
                and len(frames) == 2
                and all(isinstance(f, int) and not isinstance(f, bool) for f in frames)
                and 0 <= frames[0] < frames[1]
            ):
                span = (frames[0], frames[1])
            else:
                raise DatasetError(
                    f"{where(path, video_id, field + '.frames')}: expected [start, end] with 0 <= start < end, "
                    f"got {json.dumps(frames)}"
                )
            ranges.setdefault(video_id, []).append(span)
        splits[name] = ranges
    return splits


def save_splits(path: Path, splits: dict[str, Ranges]) -> Path:
    """Write ``splits`` (as returned by :func:`load_splits`) to ``path``."""
    data = {
        name: [
            {"video_id": vid, **({"frames": [s, e]} if e is not None else {})}
            for vid, spans in ranges.items()
            for s, e in spans
        ]
        for name, ranges in splits.items()
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def temporal_splits(num_frames: dict[str, int], fractions: tuple[float, float, float]) -> dict[str, Ranges]:
    """Split every video in time: its first ``fractions[0]`` of frames train, the next val, the rest test."""
    splits: dict[str, Ranges] = {name: {} for name in SPLIT_NAMES}
    for video_id, n in num_frames.items():
        a = round(n * fractions[0])
        b = round(n * (fractions[0] + fractions[1]))
        for name, (s, e) in zip(SPLIT_NAMES, ((0, a), (a, b), (b, n)), strict=True):
            if e > s:
                splits[name][video_id] = [(s, e)]
    return splits
