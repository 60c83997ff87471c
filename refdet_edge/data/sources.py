"""``<root>/sources.json``: where each frame and reference photo of an imported dataset came from.

    {"gap": 5,
     "sequences": {"boat1": {"stride": 4}, "Jogging-1": {"stride": 1, "twins": ["Jogging-2"]}, ...},
     "videos": {"boat1": {"frames": [["boat1", 0], ["truck4", 36], ...], "references": [["boat1", 40], ...]}}}

``frames[i]`` is the source of frame ``i`` of the video: a sequence name and the index of the frame in that
sequence's sorted ``img/`` list (before any thinning); ``references[k]`` is the frame reference photo
``img_{k+1}.jpg`` was cut from. ``stride`` is the thinning stride of a sequence and ``gap`` the import's minimum
distance, in imported frames, of an evaluated frame from a reference frame. Twins are sequences with the same
frame files (Jogging-1 and Jogging-2: two people labelled in one recording): a frame of one shows the other's
object too. The SOT importer (:mod:`refdet_edge.data.sot`) writes the file; a dataset without it (recorded
videos, synthetic data) has only its own frames in each video, and references that are separate photos.

It serves two checks: :func:`find_leaks` (no evaluated frame is trained on, is a reference frame or lies
within ``gap`` of one; under an object split no frame of a val/test object is trained on, and held-out
videos hold frames of their own split's objects only), and :meth:`Sources.shows` (which other targets a frame
shows, so that no episode presents such a frame as "absent" to that target's references).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from refdet_edge.data.annotations import DatasetError, validate_video_id, where
from refdet_edge.data.splits import Ranges

SOURCES_FILE = "sources.json"
Source = tuple[str, int]  # (sequence name, frame index in the sequence)


@dataclass(frozen=True)
class Sources:
    gap: int
    strides: dict[str, int]  # sequence -> thinning stride
    twins: dict[str, frozenset[str]]  # sequence -> its twins (without itself); only sequences that have some
    frames: dict[str, list[Source]]  # video_id -> source of each frame
    references: dict[str, list[Source]]  # video_id -> source frame of each reference photo

    def group(self, sequence: str) -> frozenset[str]:
        """The sequence and its twins: every object one of its frames shows."""
        return self.twins.get(sequence, frozenset()) | {sequence}

    def canonical(self, source: Source) -> Source:
        """One name for the same frame file among twins."""
        return min(self.group(source[0])), source[1]

    def shows(self, video_id: str) -> dict[int, frozenset[str]]:
        """Frame index -> the sequences other than ``video_id`` whose object the frame may show (spliced
        frames show their donor's object, frames of a twin show the twin's); frames that show none are left
        out."""
        out = {}
        for index, (sequence, _) in enumerate(self.frames.get(video_id, [])):
            others = self.group(sequence) - {video_id}
            if others:
                out[index] = others
        return out


def save_sources(root: Path, sources: Sources) -> Path:
    """Write ``sources`` to ``root/sources.json``."""
    sequences = {
        name: {"stride": stride, **({"twins": sorted(sources.twins[name])} if name in sources.twins else {})}
        for name, stride in sorted(sources.strides.items())
    }
    videos = {
        vid: {"frames": [list(s) for s in sources.frames[vid]], "references": [list(s) for s in refs]}
        for vid, refs in sorted(sources.references.items())
    }
    path = Path(root) / SOURCES_FILE
    tmp = path.with_name(path.name + ".tmp")
    data = {"gap": sources.gap, "sequences": sequences, "videos": videos}
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_sources(root: Path) -> Sources | None:
    """``root/sources.json`` validated, or ``None`` when the dataset has none."""
    path = Path(root) / SOURCES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as err:
        raise DatasetError(f"{where(path)}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or not {"gap", "sequences", "videos"} <= set(data):
        raise DatasetError(f"{where(path)}: expected an object with 'gap', 'sequences' and 'videos'")
    if not _is_count(data["gap"]):
        raise DatasetError(f"{where(path, None, 'gap')}: expected an integer >= 0, got {data['gap']!r}")
    strides, twins = {}, {}
    for name, info in _mapping(path, "sequences", data["sequences"]).items():
        field = f"sequences.{name}"
        validate_video_id(name, path, field)
        if not isinstance(info, dict) or not _is_count(info.get("stride")) or info["stride"] < 1:
            raise DatasetError(f"{where(path, None, field)}: expected {{'stride': integer >= 1}}")
        strides[name] = info["stride"]
        if info.get("twins"):
            twins[name] = frozenset(validate_video_id(t, path, field + ".twins") for t in info["twins"])
    frames, references = {}, {}
    for video_id, info in _mapping(path, "videos", data["videos"]).items():
        validate_video_id(video_id, path, "videos")
        if not isinstance(info, dict):
            raise DatasetError(f"{where(path, video_id, 'videos')}: expected {{'frames', 'references'}}")
        frames[video_id] = _source_list(path, video_id, "frames", info.get("frames"), strides)
        references[video_id] = _source_list(path, video_id, "references", info.get("references"), strides)
    return Sources(data["gap"], strides, twins, frames, references)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mapping(path: Path, field: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise DatasetError(f"{where(path, None, field)}: expected an object")
    return value


def _source_list(
    path: Path, video_id: str, field: str, value: object, strides: dict[str, int]
) -> list[Source]:
    if not isinstance(value, list):
        raise DatasetError(f"{where(path, video_id, field)}: expected a list of [sequence, frame] pairs")
    out = []
    for i, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 2 and item[0] in strides and _is_count(item[1])):
            raise DatasetError(
                f"{where(path, video_id, f'{field}[{i}]')}: expected [sequence of 'sequences', frame index], "
                f"got {json.dumps(item)}"
            )
        out.append((item[0], item[1]))
    return out


def _frames_of(ranges: Ranges, video_id: str, count: int) -> list[int]:
    frames: list[int] = []
    for start, end in ranges.get(video_id, []):
        frames.extend(range(start, min(count, end if end is not None else count)))
    return frames


def find_leaks(sources: Sources, splits: dict[str, Ranges], split_by: str, limit: int = 20) -> list[str]:
    """Every way (up to ``limit``) in which ``splits`` lets training see an evaluated frame or object.

    Trained are the frames of train and the reference photos of train videos; evaluated are the frames of
    val, test and seen. Problems: an evaluated frame that training uses, that a reference photo was cut from,
    or that lies within ``gap`` imported frames of one; under an object split, a trained frame of a val/test
    object and a val/test frame of an object outside its split.
    """
    problems: list[str] = []
    trained: set[Source] = set()
    for video_id in splits.get("train", {}):
        trained.update(sources.canonical(s) for s in sources.references.get(video_id, []))
        source = sources.frames.get(video_id, [])
        trained.update(
            sources.canonical(source[f]) for f in _frames_of(splits["train"], video_id, len(source))
        )
    reference_frames: dict[str, list[tuple[int, str]]] = {}
    for video_id, refs in sources.references.items():
        for k, ref in enumerate(refs):
            seq, index = sources.canonical(ref)
            reference_frames.setdefault(seq, []).append((index, f"reference img_{k + 1} of {video_id!r}"))
    held_out = {
        name: {c for vid in splits.get(name, {}) for c in sources.group(vid)} for name in ("val", "test")
    }
    unseen = held_out["val"] | held_out["test"]
    if split_by == "object":
        for seq in sorted({s for s, _ in trained} & unseen):
            problems.append(f"training uses frames of {seq!r}, an object of the val or test split")
    for name in ("val", "test", "seen"):
        for video_id in splits.get(name, {}):
            source = sources.frames.get(video_id, [])
            for frame in _frames_of(splits[name], video_id, len(source)):
                if len(problems) >= limit:
                    return problems
                seq, index = sources.canonical(source[frame])
                at = f"{name} frame {frame} of {video_id!r} ({source[frame][0]} frame {index})"
                if (seq, index) in trained:
                    problems.append(f"{at} is also a training frame or reference")
                reach = sources.gap * sources.strides[seq]
                near = [what for r, what in reference_frames.get(seq, []) if abs(r - index) <= reach]
                if near:
                    problems.append(f"{at} is within {sources.gap} frames of the frame of {near[0]}")
                objects = sources.group(source[frame][0])
                if split_by == "object" and (
                    objects - held_out[name] if name in held_out else objects & unseen
                ):
                    problems.append(f"{at} shows an object from outside the {name} split")
    return problems[:limit]
