"""Read, validate and write ``annotations.json`` and prediction files (DESIGN.md, "Data layout").

Both files are a JSON list with one entry per video::

    [{"video_id": "Backpack_0",
      "annotations": [{"bboxes": [{"frame": 3483, "x1": 321, "y1": 0, "x2": 381, "y2": 12}, ...]}, ...]}]

Each element of that list is one interval of consecutive frames in which the object is visible. In memory a
video's boxes are a mapping ``{frame_index: (x1, y1, x2, y2)}`` in original-frame pixels (one box per frame);
:func:`boxes_to_intervals` and :func:`intervals_to_boxes` convert between the two forms.

A prediction file uses the key ``"detections"`` instead of ``"annotations"`` and may give each box a
``"score"`` in [0, 1]: then every box has one, and a frame may hold several boxes (a detector's raw output,
best first once read). Without scores, a frame holds one box and every box counts as score 1.0.

Every validation failure raises :class:`DatasetError`, whose message names the file, the video and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Box = tuple[float, float, float, float]
ScoredBox = tuple[float, float, float, float, float]
BoxesByVideo = dict[str, dict[int, Box]]

ANNOTATIONS_KEY = "annotations"
DETECTIONS_KEY = "detections"
_COORDS = ("x1", "y1", "x2", "y2")
SCORE = "score"
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, the video and the field where they apply."""


def where(path: str | Path | None, video_id: str | None = None, field: str | None = None) -> str:
    """The ``file: video 'x': field 'y'`` prefix every dataset error message starts with."""
    parts = [str(path) if path is not None else "<memory>"]
    if video_id is not None:
        parts.append(f"video {video_id!r}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ": ".join(parts)


def validate_video_id(video_id: object, source: str | Path | None = None, field: str = "video_id") -> str:
    """Return ``video_id`` if it is a plain folder name (no path separators, no ``..``), else raise."""
    if not isinstance(video_id, str):
        raise DatasetError(f"{where(source, None, field)}: expected a string, got {type(video_id).__name__}")
    if not _VIDEO_ID.match(video_id) or video_id in {".", ".."} or os.path.isabs(video_id):
        raise DatasetError(
            f"{where(source, video_id, field)}: not a plain folder name "
            "(letters, digits, '_', '-', '.'; no path separators or '..')"
        )
    return video_id


def _number(value: object, source: str | Path, video_id: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{where(source, video_id, field)}: expected a number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise DatasetError(f"{where(source, video_id, field)}: not a finite number ({value})")
    return float(value)


def validate_box(box: tuple[float, ...], source: str | Path | None, video_id: str, field: str) -> Box:
    """Check one xyxy box: non-negative and not inverted or empty. Returns it as a float tuple."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if min(x1, y1, x2, y2) < 0:
        raise DatasetError(f"{where(source, video_id, field)}: negative coordinate in box {[x1, y1, x2, y2]}")
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(
            f"{where(source, video_id, field)}: inverted or empty box {[x1, y1, x2, y2]} "
            "(needs x2 > x1 and y2 > y1)"
        )
    return (x1, y1, x2, y2)


def _iter_boxes(
    data: object, source: str | Path, key: str
) -> Iterator[tuple[str, list[tuple[str, int, Box, dict]]]]:
    """Each video of decoded JSON ``data`` with its validated ``(field, frame, box, item)`` entries."""
    if not isinstance(data, list):
        raise DatasetError(f"{where(source)}: expected a JSON list of videos, got {type(data).__name__}")
    seen: set[str] = set()
    for v, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DatasetError(
                f"{where(source, None, f'[{v}]')}: expected an object, got {type(entry).__name__}"
            )
        if "video_id" not in entry:
            raise DatasetError(f"{where(source, None, f'[{v}].video_id')}: missing")
        video_id = validate_video_id(entry["video_id"], source, f"[{v}].video_id")
        if video_id in seen:
            raise DatasetError(f"{where(source, video_id, f'[{v}].video_id')}: listed twice")
        seen.add(video_id)
        intervals = entry.get(key)
        if not isinstance(intervals, list):
            got = "missing" if key not in entry else f"got {type(intervals).__name__}"
            raise DatasetError(f"{where(source, video_id, key)}: expected a list of intervals, {got}")
        boxes = []
        for i, interval in enumerate(intervals):
            bboxes = interval.get("bboxes") if isinstance(interval, dict) else None
            if not isinstance(bboxes, list):
                raise DatasetError(
                    f"{where(source, video_id, f'{key}[{i}].bboxes')}: expected a list of boxes"
                )
            for b, item in enumerate(bboxes):
                field = f"{key}[{i}].bboxes[{b}]"
                if not isinstance(item, dict):
                    raise DatasetError(f"{where(source, video_id, field)}: expected an object")
                frame = item.get("frame")
                if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
                    raise DatasetError(
                        f"{where(source, video_id, field + '.frame')}: expected a non-negative integer, "
                        f"got {json.dumps(frame)}"
                    )
                for c in _COORDS:
                    if c not in item:
                        raise DatasetError(f"{where(source, video_id, f'{field}.{c}')}: missing")
                coords = tuple(_number(item[c], source, video_id, f"{field}.{c}") for c in _COORDS)
                boxes.append((field, frame, validate_box(coords, source, video_id, field), item))
        yield video_id, boxes


def parse_annotations(data: object, source: str | Path, key: str = ANNOTATIONS_KEY) -> BoxesByVideo:
    """Validate already-decoded JSON ``data`` (one box per frame; see module docstring); ``source`` names it
    in errors. A ``"score"`` on a box is ignored: read prediction files with :func:`parse_predictions`."""
    result: BoxesByVideo = {}
    for video_id, entries in _iter_boxes(data, source, key):
        boxes: dict[int, Box] = {}
        for field, frame, box, _ in entries:
            if frame in boxes:
                raise DatasetError(
                    f"{where(source, video_id, field + '.frame')}: frame {frame} has two boxes"
                )
            boxes[frame] = box
        result[video_id] = dict(sorted(boxes.items()))
    return result


@dataclass(frozen=True)
class Predictions:
    """A prediction file in memory: ``boxes[video_id][frame]`` lists ``(x1, y1, x2, y2, score)`` boxes, best
    first; ``scored`` is false for a file without scores (each box then counts as 1.0)."""

    boxes: dict[str, dict[int, list[ScoredBox]]]
    scored: bool


def parse_predictions(data: object, source: str | Path) -> Predictions:
    """Validate decoded prediction-file JSON (key ``"detections"``, optional ``"score"``; module docstring)."""
    result: dict[str, dict[int, list[ScoredBox]]] = {}
    scored: bool | None = None
    for video_id, entries in _iter_boxes(data, source, DETECTIONS_KEY):
        frames: dict[int, list[ScoredBox]] = {}
        for field, frame, box, item in entries:
            if scored is None:
                scored = SCORE in item
            if (SCORE in item) != scored:
                state = "lacks a" if scored else "has a"
                raise DatasetError(
                    f"{where(source, video_id, f'{field}.{SCORE}')}: this box {state} score and an earlier "
                    "one did not (give every box a score, or none)"
                )
            score = _number(item[SCORE], source, video_id, f"{field}.{SCORE}") if scored else 1.0
            if not 0.0 <= score <= 1.0:
                raise DatasetError(
                    f"{where(source, video_id, f'{field}.{SCORE}')}: expected a score in [0, 1], got {score}"
                )
            if frame in frames and not scored:
                raise DatasetError(
                    f"{where(source, video_id, field + '.frame')}: frame {frame} has two boxes and no scores "
                    "(several boxes on a frame need a score each)"
                )
            frames.setdefault(frame, []).append((*box, score))
        result[video_id] = {f: sorted(frames[f], key=lambda d: -d[4]) for f in sorted(frames)}
    return Predictions(result, bool(scored) if scored is not None else True)


def _read_json(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{where(path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{where(path)}: cannot read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where(path)}: not valid JSON ({err})") from None


def load_annotations(path: str | Path, key: str = ANNOTATIONS_KEY) -> BoxesByVideo:
    """Read ``annotations.json`` (``key="annotations"``) or a one-box-per-frame prediction file
    (``key="detections"``).

    Returns ``{video_id: {frame_index: (x1, y1, x2, y2)}}``, frames sorted; a video with an empty list maps to
    an empty dict. Raises :class:`DatasetError` naming the file, video and field on any problem.
    """
    path = Path(path)
    return parse_annotations(_read_json(path), path, key)


def load_detections(path: str | Path) -> Predictions:
    """Read a prediction file with its optional scores (see :func:`parse_predictions`)."""
    path = Path(path)
    return parse_predictions(_read_json(path), path)


def boxes_to_intervals(boxes: Mapping[int, Box]) -> list[list[tuple[int, Box]]]:
    """Split per-frame boxes into runs of consecutive frame indices, each a list of ``(frame, box)``."""
    intervals: list[list[tuple[int, Box]]] = []
    for frame in sorted(boxes):
        if not intervals or frame != intervals[-1][-1][0] + 1:
            intervals.append([])
        intervals[-1].append((frame, tuple(boxes[frame])))
    return intervals


def intervals_to_boxes(intervals: list[list[tuple[int, Box]]]) -> dict[int, Box]:
    """Inverse of :func:`boxes_to_intervals`."""
    return {frame: box for interval in intervals for frame, box in sorted(interval)}


def _json_number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else round(value, 3)


def _frame_boxes(value: Sequence) -> list[Sequence[float]]:
    """One frame's value (a box, a scored box, or a list or array of them) as a list of boxes."""
    if len(value) == 0:
        return []
    return list(value) if hasattr(value[0], "__len__") else [value]


def to_json(boxes_by_video: Mapping[str, Mapping[int, object]], key: str = ANNOTATIONS_KEY) -> list[dict]:
    """The JSON-ready list for ``boxes_by_video`` (videos in the given order; empty list for no boxes).

    A frame's value is a box ``(x1, y1, x2, y2)``, a scored box (its fifth value is written as ``"score"``,
    to 6 significant digits) or a list of them (a frame with several boxes)."""
    out = []
    for video_id, boxes in boxes_by_video.items():
        validate_video_id(video_id)
        intervals = []
        for interval in boxes_to_intervals(boxes):
            bboxes = []
            for frame, value in interval:
                for box in _frame_boxes(value):
                    item = {
                        "frame": int(frame),
                        **{c: _json_number(v) for c, v in zip(_COORDS, box[:4], strict=True)},
                    }
                    if len(box) > 4:
                        item[SCORE] = float(f"{float(box[4]):.6g}")
                    bboxes.append(item)
            if bboxes:
                intervals.append({"bboxes": bboxes})
        out.append({"video_id": video_id, key: intervals})
    return out


def save_annotations(
    path: str | Path, boxes_by_video: Mapping[str, Mapping[int, object]], key: str = ANNOTATIONS_KEY
) -> Path:
    """Write ``boxes_by_video`` in the annotations schema (``key="detections"`` for predictions; values as
    :func:`to_json` takes them).

    Every video in the mapping is written, with an empty list when it has no boxes. The file is written to a
    temporary name and renamed, so a reader never sees a half-written file. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(boxes_by_video, key), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
