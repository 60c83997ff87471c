"""Convert single-object-tracking sequences (OTB, UAV123, DTB70, UAVDT, LaSOT) into the layout of DESIGN.md.

A sequence is ``<seq>/img/*.jpg`` (frames sorted by name) and ``<seq>/groundtruth_rect.txt``: one ``x,y,w,h``
line per frame (commas, tabs or spaces), 1-based top-left corner as in the MATLAB toolkits; a line of NaN or a
zero size means the object is out of view, and that frame becomes an absent frame of its own video. Without
``groundtruth_rect.txt`` the segment files ``<seq>_1.txt``, ``<seq>_2.txt``, ... of UAV123's split sequences
are joined (consecutive segments may share their boundary frame). ``max_frames`` keeps a sequence's first
frames, then ``thin_to`` keeps every k-th frame (the smallest stride that leaves at most that many).

Splits (``splits.json``, see :mod:`refdet_edge.data.splits`):

- ``split_by="time"``: every sequence is split in time, 70 / 15 / 15 % into train / val / test;
- ``split_by="object"``: the ``val_objects`` / ``test_objects`` sequences are whole val / test videos; every
  other sequence is a training object, split in time into train and its last ``seen_fraction`` (seen).

References: ``refs`` crops (the box plus ``context`` of its size on every side) from frames spread over the
train part minus its last ``gap`` frames, or, for a val/test object, over the whole sequence. Those frames are
left out of the video, and so are the frames of a val/test object within ``gap`` frames of one: no evaluated
frame is a reference frame or lies within ``gap`` (imported) frames of one.

Absent frames: runs of spliced frames go into each part of a video, so that frames without the object make up
``absent_ratio`` of it (the sequence's own NaN frames count). A spliced frame is a whole frame of another
sequence *of the same split*, from that sequence's own part in the split: a train part gets train frames of
other training sequences, a val video frames of the other val videos, and so on. So no evaluated frame, absent
or not, is ever a training frame, and no val/test object ever appears in training. The donor frame is
letterboxed to the video's own frame size (aspect kept, grey ``PAD_VALUE`` bars; never stretched, never a
zoomed crop, which would teach "blur means absent"). Donors that fit without bars and without upscaling are
preferred, each frame reused about twice before a worse fit is taken (:func:`donor_tier`), so that bars and
blur, which would also tell spliced frames apart, stay rare.

The design problem of splicing: a donor frame shows the donor's own object. For this video's target the frame
is a true absent frame, as in the AeroEyes videos (other objects present, the target not), and a box belongs to
its video, so nothing takes the frame for a positive of the donor. What must not happen is that an episode
shows it to the *donor's* references as "absent": ``sources.json`` (:mod:`refdet_edge.data.sources`) records
the source of every frame, :class:`~refdet_edge.data.dataset.DroneDataset` exposes it as ``VideoRecord.shows``
and the episode sampler never pairs such a frame with the references of an object it shows. Twins (sequences
of the same frame files, such as Jogging-1 and Jogging-2) are never each other's donors and must share a split.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from ultralytics.data.augment import LetterBox

from refdet_edge.data.annotations import Box, DatasetError, save_annotations, validate_video_id, where
from refdet_edge.data.sources import Source, Sources, save_sources
from refdet_edge.data.splits import SPLIT_NAMES, SPLITS_FILE, check_objects, save_splits
from refdet_edge.preprocess import PAD_VALUE, ImageReadError, encode_jpeg, read_image_rgb

GROUNDTRUTH = "groundtruth_rect.txt"
TIME_FRACTIONS = (0.7, 0.15, 0.15)
JPEG_QUALITY = 95
UPSCALE_TOLERANCE = 1.1  # a donor frame enlarged by more than this is blurrier than the video's own frames
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def _groundtruth_lines(folder: Path, name: str, num_frames: int) -> list[tuple[Path, int, str]]:
    """``(file, line number, text)`` of every non-empty annotation line, from groundtruth_rect.txt or the
    ``<name>_<k>.txt`` segments."""

    def lines_of(path: Path) -> list[tuple[Path, int, str]]:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [(path, n + 1, line) for n, line in enumerate(text) if line.strip()]

    gt_path = folder / GROUNDTRUTH
    if gt_path.is_file():
        lines = lines_of(gt_path)
        if len(lines) < num_frames:
            raise DatasetError(
                f"{where(gt_path, name, GROUNDTRUTH)}: {len(lines)} lines for {num_frames} frames"
            )
        return lines
    segments = sorted(
        (p for p in folder.glob(f"{name}_*.txt") if p.stem[len(name) + 1 :].isdigit()),
        key=lambda p: int(p.stem[len(name) + 1 :]),
    )
    if not segments:
        raise DatasetError(f"{where(gt_path, name, GROUNDTRUTH)}: missing (and no {name}_1.txt segments)")
    parts = [lines_of(p) for p in segments]
    total = sum(len(p) for p in parts)
    if total == num_frames + len(parts) - 1:  # consecutive segments share their boundary frame
        parts = [parts[0]] + [p[1:] for p in parts[1:]]
    elif total != num_frames:
        raise DatasetError(
            f"{where(segments[0], name, 'segments')}: {len(segments)} segment files hold {total} lines for "
            f"{num_frames} frames (expected {num_frames}, or {num_frames + len(parts) - 1} with shared boundaries)"
        )
    return [line for part in parts for line in part]


class Sequence:
    """One SOT sequence after ``max_frames`` and thinning: frame files, their sizes and per-frame boxes (xyxy,
    0-based pixels of that frame, None when absent). ``indices[p]`` is the position of frame ``p`` in the
    sequence's sorted ``img/`` list."""

    def __init__(self, folder: Path, max_frames: int | None = None, thin_to: int | None = None):
        self.folder = folder
        self.name = validate_video_id(folder.name, folder, "sequence folder name")
        images = folder / "img"
        if not images.is_dir():
            raise DatasetError(f"{where(images, self.name, 'img')}: missing (expected <sequence>/img/*.jpg)")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise DatasetError(f"{where(images, self.name, 'img')}: no frame images")
        lines = _groundtruth_lines(folder, self.name, len(files))
        count = min(len(files), max_frames or len(files))
        self.stride = max(1, math.ceil(count / thin_to)) if thin_to else 1
        self.indices = list(range(0, count, self.stride))
        self.frames = [files[i] for i in self.indices]
        self.sizes = [self._size(p) for p in self.frames]
        self.width, self.height = self.sizes[0]
        self.boxes = [self._parse(*lines[i], self.sizes[p]) for p, i in enumerate(self.indices)]
        self._digests: list[str] | None = None

    def _size(self, path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as image:
                return image.size
        except OSError as err:
            raise DatasetError(f"{where(path, self.name, 'img')}: not a readable image ({err})") from None

    def _parse(self, path: Path, line_no: int, line: str, size: tuple[int, int]) -> Box | None:
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        try:
            x, y, w, h = (float(p) for p in parts)
        except ValueError:
            raise DatasetError(
                f"{where(path, self.name, f'line {line_no}')}: expected 4 numbers x,y,w,h, got {line.strip()!r}"
            ) from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            return None
        x1, y1 = max(x - 1, 0.0), max(y - 1, 0.0)
        x2, y2 = min(x - 1 + w, float(size[0])), min(y - 1 + h, float(size[1]))
        return (x1, y1, x2, y2) if x2 - x1 >= 1 and y2 - y1 >= 1 else None

    def digests(self) -> list[str]:
        """MD5 of each frame file (twins share them)."""
        if self._digests is None:
            self._digests = [hashlib.md5(p.read_bytes()).hexdigest() for p in self.frames]
        return self._digests

    def read(self, position: int) -> np.ndarray:
        try:
            return read_image_rgb(self.frames[position])
        except ImageReadError as err:
            raise DatasetError(f"{where(self.frames[position], self.name, 'img')}: {err}") from None


def letterbox_to(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``image`` scaled to fit ``size`` (w, h) with its aspect kept and centred on grey ``PAD_VALUE`` bars;
    returns the image, the scale and the (left, top) padding."""
    h, w = image.shape[:2]
    if (w, h) == size:
        return image, 1.0, (0, 0)
    gain = min(size[0] / w, size[1] / h)
    box = LetterBox(
        new_shape=(size[1], size[0]),
        auto=False,
        scaleup=True,
        center=True,
        padding_value=PAD_VALUE,
        interpolation=cv2.INTER_AREA if gain < 1 else cv2.INTER_LINEAR,
    )
    new_w, new_h = max(round(w * gain), 1), max(round(h * gain), 1)
    pad = (round((size[0] - new_w) / 2 - 0.1), round((size[1] - new_h) / 2 - 0.1))
    return box(image=image), gain, pad


def reference_crop(image: np.ndarray, box: Box, context: float) -> np.ndarray:
    """The box grown by ``context`` times its size on each side, clipped to the image."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    h, w = image.shape[:2]
    return image[
        max(0, int(y1 - dy)) : min(h, math.ceil(y2 + dy)), max(0, int(x1 - dx)) : min(w, math.ceil(x2 + dx))
    ]


@dataclass
class Layout:
    """Which frames of a sequence go where: ``parts`` maps a split to its own frame positions, in order."""

    seq: Sequence
    group: str  # "time", or the split of the object: "train", "val" or "test"
    refs: list[int]
    parts: dict[str, list[int]] = field(default_factory=dict)


def plan_layout(seq: Sequence, group: str, refs: int, gap: int, seen_fraction: float) -> Layout:
    """References and per-split frames of ``seq`` (see the module docstring)."""
    n = len(seq.frames)
    if group == "time":
        a, b = round(n * TIME_FRACTIONS[0]), round(n * sum(TIME_FRACTIONS[:2]))
        bounds = {"train": (0, a), "val": (a, b), "test": (b, n)}
    elif group == "train":
        a = max(1, round(n * (1 - seen_fraction)))
        bounds = {"train": (0, a), "seen": (a, n)}
    else:
        bounds = {group: (0, n)}
    zone = bounds["train"][1] - gap if "train" in bounds and bounds["train"][1] < n else n
    present = [p for p in range(max(zone, 0)) if seq.boxes[p] is not None]
    if len(present) < refs:
        raise DatasetError(
            f"{where(seq.folder, seq.name, 'references')}: {len(present)} frames with the object among the "
            f"{max(zone, 0)} that references may come from (the train part less its last {gap} frames, or the "
            f"whole sequence of a val/test object); {refs} needed (fewer --refs or a smaller --gap)"
        )
    chosen = [present[int((k + 0.5) * len(present) / refs)] for k in range(refs)]
    layout = Layout(seq, group, chosen)
    for name, (s, e) in bounds.items():
        keep = [
            p
            for p in range(s, e)
            if p not in chosen and (name == "train" or all(abs(p - r) > gap for r in chosen))
        ]
        if keep:
            layout.parts[name] = keep
    if group in ("val", "test") and not any(seq.boxes[p] is not None for p in layout.parts.get(group, [])):
        raise DatasetError(
            f"{where(seq.folder, seq.name, 'references')}: no frame with the object is left to evaluate after "
            f"taking {refs} references and leaving out {gap} frames around each (fewer --refs or a smaller --gap)"
        )
    return layout


def find_twins(seqs: list[Sequence]) -> dict[str, frozenset[str]]:
    """Sequence -> the other sequences sharing a frame file with it (only those that have some)."""
    owner: dict[str, set[str]] = {}
    for seq in seqs:
        for digest in seq.digests():
            owner.setdefault(digest, set()).add(seq.name)
    twins: dict[str, set[str]] = {}
    for names in owner.values():
        for name in names:
            if len(names) > 1:
                twins.setdefault(name, set()).update(names - {name})
    return {name: frozenset(others) for name, others in twins.items()}


def donor_tier(video: Sequence, donor: Sequence) -> int:
    """How well ``donor``'s frames fit ``video`` once letterboxed: 0 no bars (at most 2% of the frame) and no
    upscaling, 1 no bars, 2 thin bars (at most 12%), 3 the rest."""
    gain = min(video.width / donor.width, video.height / donor.height)
    bars = 1 - round(donor.width * gain) * round(donor.height * gain) / (video.width * video.height)
    if bars <= 0.02:
        return 0 if gain <= UPSCALE_TOLERANCE else 1
    return 2 if bars <= 0.12 else 3


class DonorRuns:
    """Runs of consecutive donor frames of one split, for one video part; each donor frame is used once
    before any is used again."""

    def __init__(self, rng: np.random.Generator, donors: list[Layout], split: str):
        self.rng, self.donors, self.split = rng, donors, split
        self.used: set[tuple[str, int]] = set()

    def take(self, length: int) -> list[tuple[Layout, int]]:
        out: list[tuple[Layout, int]] = []
        while len(out) < length:
            free = [
                d for d in self.donors if any((d.seq.name, p) not in self.used for p in d.parts[self.split])
            ]
            if not free:
                self.used.clear()
                continue
            donor = free[int(self.rng.integers(len(free)))]
            frames = donor.parts[self.split]
            starts = [i for i, p in enumerate(frames) if (donor.seq.name, p) not in self.used]
            i = starts[int(self.rng.integers(len(starts)))]
            while len(out) < length and i < len(frames) and (donor.seq.name, frames[i]) not in self.used:
                self.used.add((donor.seq.name, frames[i]))
                out.append((donor, frames[i]))
                i += 1
        return out


def import_sot(
    sequences: list[str | Path],
    out: str | Path,
    refs: int = 3,
    absent_ratio: float = 0.7,
    context: float = 0.5,
    seed: int = 0,
    max_frames: int | None = None,
    thin_to: int | None = None,
    split_by: str | None = None,
    val_objects: tuple[str, ...] | list[str] = (),
    test_objects: tuple[str, ...] | list[str] = (),
    seen_fraction: float = 0.15,
    gap: int = 5,
) -> Path:
    """Convert ``sequences`` into a dataset at ``out`` (see the module docstring); returns ``out``.

    ``split_by`` defaults to ``"object"`` when val or test objects are named, else ``"time"``."""
    if not 0 <= absent_ratio <= 0.95:
        raise ValueError(f"absent_ratio must be in [0, 0.95], got {absent_ratio}")
    if refs < 1 or gap < 0:
        raise ValueError(f"need refs >= 1 and gap >= 0, got {refs} and {gap}")
    if not 0 <= seen_fraction < 1:
        raise ValueError(f"seen_fraction must be in [0, 1), got {seen_fraction}")
    split_by = split_by or ("object" if val_objects or test_objects else "time")
    if split_by == "time" and (val_objects or test_objects):
        raise ValueError("val/test objects need split_by 'object' (a time split holds no object out)")
    seqs = [Sequence(Path(s), max_frames, thin_to) for s in sequences]
    names = [s.name for s in seqs]
    if len(set(names)) != len(names):
        raise DatasetError(
            f"{where(Path(sequences[0]).parent, None, 'sequence folder name')}: duplicate names {names}"
        )
    check_objects(names, val_objects, test_objects)
    if absent_ratio > 0 and len(seqs) < 2:
        raise DatasetError(
            f"{where(seqs[0].folder, seqs[0].name)}: absent frames are spliced from the other sequences, "
            "so give at least two (or --absent-ratio 0)"
        )
    twins = find_twins(seqs)

    def group_of(name: str) -> str:
        if split_by == "time":
            return "time"
        return "val" if name in val_objects else "test" if name in test_objects else "train"

    for name, others in twins.items():
        for other in sorted(others):
            if group_of(other) != group_of(name):
                raise DatasetError(
                    f"{where(seqs[names.index(name)].folder, name)}: shares its frames with {other!r} (twins), "
                    f"so both must be in the same split, not {group_of(name)} and {group_of(other)}"
                )
    layouts = [plan_layout(s, group_of(s.name), refs, gap, seen_fraction) for s in seqs]
    out = Path(out)
    rng = np.random.default_rng(seed)
    annotations: dict[str, dict[int, Box]] = {}
    splits: dict[str, dict] = {name: {} for name in SPLIT_NAMES}
    frame_sources: dict[str, list[Source]] = {}
    ref_sources: dict[str, list[Source]] = {}
    for layout in layouts:
        seq = layout.seq
        sample = out / "samples" / seq.name
        shutil.rmtree(sample, ignore_errors=True)
        (sample / "frames").mkdir(parents=True)
        (sample / "object_images").mkdir(parents=True)
        for k, p in enumerate(layout.refs):
            crop = reference_crop(seq.read(p), seq.boxes[p], context)
            _write_jpeg(sample / "object_images" / f"img_{k + 1}.jpg", crop)
        ref_sources[seq.name] = [(seq.name, seq.indices[p]) for p in layout.refs]
        writer = _VideoWriter(sample / "frames", seq)
        for split_name in layout.parts:
            start = writer.cursor
            _write_part(rng, writer, layout, layouts, twins, split_name, absent_ratio)
            splits[split_name][seq.name] = [(start, writer.cursor)]
        annotations[seq.name] = writer.boxes
        frame_sources[seq.name] = writer.sources
    save_annotations(out / "annotations" / "annotations.json", annotations)
    save_splits(out / SPLITS_FILE, splits, split_by)
    strides = {s.name: s.stride for s in seqs}
    save_sources(out, Sources(gap, strides, twins, frame_sources, ref_sources))
    return out


def _write_part(
    rng: np.random.Generator,
    writer: _VideoWriter,
    layout: Layout,
    layouts: list[Layout],
    twins: dict[str, frozenset[str]],
    split: str,
    absent_ratio: float,
) -> None:
    """The part ``split`` of a video: its own frames in order, cut into pieces with a run of spliced absent
    frames before each, so that absent frames make up ``absent_ratio`` of the part."""
    chunk = layout.parts[split]
    native_absent = sum(layout.seq.boxes[p] is None for p in chunk)
    spliced = max(0, round((len(chunk) - native_absent) / (1 - absent_ratio)) - len(chunk))
    if not spliced:
        for p in chunk:
            writer.own(p)
        return
    runs = min(len(chunk), max(1, spliced // 25))
    cuts = np.sort(rng.choice(np.arange(1, len(chunk)), size=runs - 1, replace=False))
    run_sizes = rng.multinomial(spliced, np.full(runs, 1 / runs))
    draw = DonorRuns(rng, _donors(layout, layouts, twins, split, spliced), split)
    for piece, run in zip(np.split(np.asarray(chunk), cuts), run_sizes, strict=True):
        for donor, p in draw.take(int(run)):
            writer.donor(donor.seq, p)
        for p in piece:
            writer.own(int(p))


def _donors(
    layout: Layout, layouts: list[Layout], twins: dict[str, frozenset[str]], split: str, needed: int
) -> list[Layout]:
    """The donors of ``layout``'s part ``split``: the best tiers (:func:`donor_tier`) that hold at least half
    of the ``needed`` frames, so that a frame is reused about twice before a worse fit is taken."""
    seq = layout.seq
    candidates = [
        d
        for d in layouts
        if d is not layout and d.seq.name not in twins.get(seq.name, ()) and d.parts.get(split)
    ]
    if not candidates:
        raise DatasetError(
            f"{where(seq.folder, seq.name)}: absent frames are spliced from the other sequences of the same "
            f"split, and the {split} split has no other: give at least two sequences to each split "
            "(or --absent-ratio 0)"
        )
    pool: list[Layout] = []
    for tier in range(4):
        pool += [d for d in candidates if donor_tier(seq, d.seq) == tier]
        if 2 * sum(len(d.parts[split]) for d in pool) >= needed:
            break
    return pool


class _VideoWriter:
    """Writes the frames of one video in order, at the sequence's frame size, with boxes and sources."""

    def __init__(self, folder: Path, seq: Sequence):
        self.folder, self.seq = folder, seq
        self.cursor = 0
        self.boxes: dict[int, Box] = {}
        self.sources: list[Source] = []

    def _next(self) -> Path:
        path = self.folder / f"{self.cursor:06d}.jpg"
        self.cursor += 1
        return path

    def own(self, p: int) -> None:
        seq, size = self.seq, (self.seq.width, self.seq.height)
        target = self._next()
        box = seq.boxes[p]
        if seq.sizes[p] == size and seq.frames[p].suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(seq.frames[p], target)
        else:
            image, gain, (left, top) = letterbox_to(seq.read(p), size)
            _write_jpeg(target, image)
            if box is not None:
                box = (box[0] * gain + left, box[1] * gain + top, box[2] * gain + left, box[3] * gain + top)
        if box is not None:
            self.boxes[self.cursor - 1] = box
        self.sources.append((seq.name, seq.indices[p]))

    def donor(self, donor: Sequence, p: int) -> None:
        _write_jpeg(self._next(), letterbox_to(donor.read(p), (self.seq.width, self.seq.height))[0])
        self.sources.append((donor.name, donor.indices[p]))


def _write_jpeg(path: Path, image_rgb: np.ndarray) -> None:
    path.write_bytes(encode_jpeg(image_rgb, JPEG_QUALITY))
