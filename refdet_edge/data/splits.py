"""``<root>/splits.json``: which videos and frame ranges make up each split, and how the data was split.

    {"split_by": "object",
     "train": [{"video_id": "v0", "frames": [0, 84]}, {"video_id": "v1", "frames": [0, 90]}],
     "seen":  [{"video_id": "v0", "frames": [84, 100]}, {"video_id": "v1", "frames": [90, 106]}],
     "val":   [{"video_id": "v2"}],
     "test":  [{"video_id": "v3"}]}

The splits are ``train``, ``val``, ``test`` and ``seen`` (the later frames of the training objects, held out of
training). ``"frames": [start, end]`` is a half-open range of frame indices (``start <= frame < end``); without
it the entry is the whole video. A video may appear in several splits with disjoint ranges.

``"split_by"`` says what the held-out splits measure:

- ``"time"`` (also files without the key): every video is split in time, so val and test are later frames of
  the objects training saw (memory, not search);
- ``"object"``: val and test are whole videos of objects that no train or seen entry names (checked on load),
  and seen is the later frames of the training objects.

:func:`split_kind` turns that into the name a report prints. Without a splits file every split is the whole
dataset (and :class:`~refdet_edge.data.dataset.DroneDataset` warns), so its numbers are on training frames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from refdet_edge.data.annotations import DatasetError, validate_video_id, where

SPLITS_FILE = "splits.json"
SPLIT_NAMES = ("train", "val", "test", "seen")
TIME_SPLITS = ("train", "val", "test")
SPLIT_BY = ("object", "time")
SPLIT_BY_KEY = "split_by"
UNSEEN_OBJECTS, LATER_FRAMES, ALL_FRAMES = "unseen objects", "later frames", "all frames"
Ranges = dict[str, list[tuple[int, int | None]]]  # video_id -> [(start, end or None = to the end)]


def read_splits(path: Path) -> tuple[dict[str, Ranges], str]:
    """Parse and validate a splits file into ``({split: {video_id: [(start, end), ...]}}, split_by)``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where(path)}: not valid JSON ({err})") from None
    except OSError as err:
        raise DatasetError(f"{where(path)}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where(path)}: expected an object with keys {list(SPLIT_NAMES)}")
    split_by = data.pop(SPLIT_BY_KEY, "time")
    if split_by not in SPLIT_BY:
        raise DatasetError(
            f"{where(path, None, SPLIT_BY_KEY)}: expected one of {list(SPLIT_BY)}, got {split_by!r}"
        )
    unknown = sorted(set(data) - set(SPLIT_NAMES))
    if unknown:
        raise DatasetError(
            f"{where(path, None, unknown[0])}: unknown split (expected {list(SPLIT_NAMES)} and {SPLIT_BY_KEY!r})"
        )
    splits = {name: _parse_entries(path, name, entries) for name, entries in data.items()}
    if split_by == "object":
        _check_objects_held_out(path, splits)
    return splits, split_by


def _parse_entries(path: Path, name: str, entries: object) -> Ranges:
    if not isinstance(entries, list):
        raise DatasetError(f"{where(path, None, name)}: expected a list of {{'video_id', 'frames'}} entries")
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
    return ranges


def _check_objects_held_out(path: Path, splits: dict[str, Ranges]) -> None:
    """Under an object split a val or test video is in no other split."""
    for held_out in ("val", "test"):
        for video_id in splits.get(held_out, {}):
            for other in SPLIT_NAMES:
                if other != held_out and video_id in splits.get(other, {}):
                    raise DatasetError(
                        f'{where(path, video_id, held_out)}: with "split_by": "object" a {held_out} video '
                        f"must be in no other split, but it is also in {other!r}"
                    )


def load_splits(path: Path) -> dict[str, Ranges]:
    """The splits of a splits file (see :func:`read_splits`), without ``split_by``."""
    return read_splits(path)[0]


def save_splits(path: Path, splits: dict[str, Ranges], split_by: str = "time") -> Path:
    """Write ``splits`` (as returned by :func:`load_splits`) and ``split_by`` to ``path``."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    data: dict[str, object] = {SPLIT_BY_KEY: split_by}
    for name, ranges in splits.items():
        data[name] = [
            {"video_id": vid, **({"frames": [s, e]} if e is not None else {})}
            for vid, spans in ranges.items()
            for s, e in spans
        ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def split_kind(root: Path, split: str) -> str:
    """What evaluating on ``split`` of the dataset at ``root`` measures.

    ``"unseen objects"`` for val and test of an object split; ``"later frames"`` for seen, for the train split
    (frames of objects training saw) and for every split of a time split; ``"all frames"`` without a splits
    file (every split is then every frame).
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    path = Path(root) / SPLITS_FILE
    if not path.is_file():
        return ALL_FRAMES
    _, split_by = read_splits(path)
    return UNSEEN_OBJECTS if split_by == "object" and split in ("val", "test") else LATER_FRAMES


def temporal_splits(num_frames: dict[str, int], fractions: tuple[float, float, float]) -> dict[str, Ranges]:
    """Split every video in time: its first ``fractions[0]`` of frames train, the next val, the rest test."""
    splits: dict[str, Ranges] = {name: {} for name in TIME_SPLITS}
    for video_id, n in num_frames.items():
        a = round(n * fractions[0])
        b = round(n * (fractions[0] + fractions[1]))
        for name, (s, e) in zip(TIME_SPLITS, ((0, a), (a, b), (b, n)), strict=True):
            if e > s:
                splits[name][video_id] = [(s, e)]
    return splits


def check_objects(known: Iterable[str], val_objects: Iterable[str], test_objects: Iterable[str]) -> None:
    """Raise ``ValueError`` unless every held-out object is known and none is in both val and test."""
    known = set(known)
    val, test = set(val_objects), set(test_objects)
    for name, objects in (("--val-objects", val), ("--test-objects", test)):
        missing = sorted(objects - known)
        if missing:
            raise ValueError(f"{name}: no video or sequence named {missing[0]!r} (there are {sorted(known)})")
    both = sorted(val & test)
    if both:
        raise ValueError(f"{both[0]!r} is in both --val-objects and --test-objects")


def object_splits(
    num_frames: dict[str, int],
    val_objects: Iterable[str],
    test_objects: Iterable[str],
    seen_fraction: float = 0.15,
) -> dict[str, Ranges]:
    """Whole videos of ``val_objects`` / ``test_objects`` make val / test; every other video is a training
    object, split in time into train (its first ``1 - seen_fraction`` of frames) and seen (the rest)."""
    if not 0 <= seen_fraction < 1:
        raise ValueError(f"seen_fraction must be in [0, 1), got {seen_fraction}")
    val, test = list(val_objects), list(test_objects)
    check_objects(num_frames, val, test)
    splits: dict[str, Ranges] = {name: {} for name in SPLIT_NAMES}
    for video_id, n in num_frames.items():
        if video_id in val or video_id in test:
            splits["val" if video_id in val else "test"][video_id] = [(0, None)]
            continue
        a = max(1, round(n * (1 - seen_fraction)))
        splits["train"][video_id] = [(0, a)]
        if a < n:
            splits["seen"][video_id] = [(a, n)]
    return splits
