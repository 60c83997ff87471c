"""Convert single-object-tracking sequences (OTB, UAV123, DTB70) into the dataset layout of DESIGN.md.

A sequence is ``<seq>/img/*.jpg`` (frames sorted by name) and ``<seq>/groundtruth_rect.txt``: one ``x,y,w,h``
line per frame (commas, tabs or spaces), 1-based top-left corner as in the MATLAB toolkits; a line of NaN or a
zero size means the object is absent. For each sequence:

- ``refs`` reference crops (the box plus ``context`` of its size on every side) are cut from frames spread over
  the sequence; those frames are left out of the converted video, so they are never evaluated.
- The remaining frames are split in time into train / val / test (70 / 15 / 15, written to ``splits.json``),
  and into each part runs of object-absent frames are spliced, so that absent frames make up ``absent_ratio``
  of the video. Absent frames come from the other given sequences: a crop of one of their frames that does not
  contain *their* object (so that no target of the dataset hides in a frame labelled absent), resized to
  this sequence's frame size.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np

from refdet_edge.data.annotations import Box, DatasetError, save_annotations, validate_video_id, where
from refdet_edge.data.splits import SPLIT_NAMES, SPLITS_FILE, save_splits, temporal_splits
from refdet_edge.preprocess import ImageReadError, encode_jpeg, read_image_rgb

GROUNDTRUTH = "groundtruth_rect.txt"
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
JPEG_QUALITY = 95


class Sequence:
    """One SOT sequence: its frame files and per-frame boxes (xyxy, 0-based pixels, None when absent)."""

    def __init__(self, folder: Path, max_frames: int | None = None):
        self.folder = folder
        self.name = validate_video_id(folder.name, folder, "sequence folder name")
        images = folder / "img"
        gt_path = folder / GROUNDTRUTH
        if not images.is_dir():
            raise DatasetError(f"{where(images, self.name, 'img')}: missing (expected <sequence>/img/*.jpg)")
        if not gt_path.is_file():
            raise DatasetError(f"{where(gt_path, self.name, GROUNDTRUTH)}: missing")
        self.frames = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        lines = [
            line
            for line in gt_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ]
        if len(lines) < len(self.frames):
            raise DatasetError(
                f"{where(gt_path, self.name, GROUNDTRUTH)}: {len(lines)} lines for {len(self.frames)} frames"
            )
        if not self.frames:
            raise DatasetError(f"{where(images, self.name, 'img')}: no frame images")
        if max_frames is not None:
            self.frames = self.frames[:max_frames]
        try:
            first = read_image_rgb(self.frames[0])
        except ImageReadError as err:
            raise DatasetError(f"{where(self.frames[0], self.name, 'img')}: {err}") from None
        self.height, self.width = first.shape[:2]
        self.boxes = [self._parse(gt_path, n + 1, line) for n, line in enumerate(lines[: len(self.frames)])]

    def _parse(self, path: Path, line_no: int, line: str) -> Box | None:
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
        x2, y2 = min(x - 1 + w, float(self.width)), min(y - 1 + h, float(self.height))
        return (x1, y1, x2, y2) if x2 - x1 >= 1 and y2 - y1 >= 1 else None

    def read(self, index: int) -> np.ndarray:
        try:
            return read_image_rgb(self.frames[index])
        except ImageReadError as err:
            raise DatasetError(f"{where(self.frames[index], self.name, 'img')}: {err}") from None


def reference_crop(image: np.ndarray, box: Box, context: float) -> np.ndarray:
    """The box grown by ``context`` times its size on each side, clipped to the image."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    h, w = image.shape[:2]
    return image[
        max(0, int(y1 - dy)) : min(h, math.ceil(y2 + dy)), max(0, int(x1 - dx)) : min(w, math.ceil(x2 + dx))
    ]


def absent_view(
    rng: np.random.Generator, image: np.ndarray, box: Box | None, size: tuple[int, int]
) -> np.ndarray | None:
    """A crop of ``image`` that misses ``box`` (grown by 10%), resized to ``size`` (w, h); None if none fits."""
    h, w = image.shape[:2]
    if box is None:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA) if (w, h) != size else image
    bx1, by1, bx2, by2 = box
    mx, my = 0.1 * (bx2 - bx1), 0.1 * (by2 - by1)
    for _ in range(20):
        zoom = rng.uniform(0.45, 0.8)
        cw, ch = int(w * zoom), int(h * zoom)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        if x + cw <= bx1 - mx or x >= bx2 + mx or y + ch <= by1 - my or y >= by2 + my:
            return cv2.resize(image[y : y + ch, x : x + cw], size, interpolation=cv2.INTER_LINEAR)
    return None


def _absent_frames(rng: np.random.Generator, donors: list[Sequence], count: int, size: tuple[int, int]):
    """``count`` absent frames as runs of consecutive donor frames (a run per call of the generator)."""
    produced = 0
    donor_index = int(rng.integers(len(donors)))
    while produced < count:
        donor = donors[donor_index % len(donors)]
        donor_index += 1
        start = int(rng.integers(len(donor.frames)))
        misses = 0
        for offset in range(len(donor.frames)):
            if produced == count:
                return
            k = (start + offset) % len(donor.frames)
            view = absent_view(rng, donor.read(k), donor.boxes[k], size)
            if view is None:
                misses += 1
                if misses > 50:
                    break
                continue
            produced += 1
            yield view


def import_sot(
    sequences: list[str | Path],
    out: str | Path,
    refs: int = 3,
    absent_ratio: float = 0.7,
    context: float = 0.5,
    seed: int = 0,
    max_frames: int | None = None,
) -> Path:
    """Convert ``sequences`` into a dataset at ``out`` (see the module docstring); returns ``out``."""
    if not 0 <= absent_ratio <= 0.95:
        raise ValueError(f"absent_ratio must be in [0, 0.95], got {absent_ratio}")
    if refs < 1:
        raise ValueError(f"refs must be at least 1, got {refs}")
    seqs = [Sequence(Path(s), max_frames) for s in sequences]
    names = [s.name for s in seqs]
    if len(set(names)) != len(names):
        raise DatasetError(
            f"{where(Path(sequences[0]).parent, None, 'sequence folder name')}: duplicate names {names}"
        )
    if absent_ratio > 0 and len(seqs) < 2:
        raise DatasetError(
            f"{where(seqs[0].folder, seqs[0].name)}: absent frames are spliced from the other sequences, "
            "so give at least two (or --absent-ratio 0)"
        )
    out = Path(out)
    rng = np.random.default_rng(seed)
    annotations: dict[str, dict[int, Box]] = {}
    splits: dict[str, dict] = {name: {} for name in SPLIT_NAMES}
    for seq in seqs:
        present = [i for i, b in enumerate(seq.boxes) if b is not None]
        if len(present) < refs + 3:
            raise DatasetError(
                f"{where(seq.folder / GROUNDTRUTH, seq.name, GROUNDTRUTH)}: only {len(present)} frames with the "
                f"object, need more than {refs} for references"
            )
        sample = out / "samples" / seq.name
        shutil.rmtree(sample, ignore_errors=True)
        (sample / "frames").mkdir(parents=True)
        (sample / "object_images").mkdir(parents=True)
        ref_frames = [present[int((k + 0.5) * len(present) / refs)] for k in range(refs)]
        for k, index in enumerate(ref_frames):
            _write_jpeg(
                sample / "object_images" / f"img_{k + 1}.jpg",
                reference_crop(seq.read(index), seq.boxes[index], context),
            )
        own = [i for i in range(len(seq.frames)) if i not in set(ref_frames)]
        donors = [s for s in seqs if s is not seq]
        boxes: dict[int, Box] = {}
        cursor = 0
        parts = temporal_splits({seq.name: len(own)}, SPLIT_FRACTIONS)
        for split_name in SPLIT_NAMES:
            for start, end in parts[split_name].get(seq.name, []):
                chunk = own[start:end]
                native_absent = sum(seq.boxes[i] is None for i in chunk)
                total = round((len(chunk) - native_absent) / (1 - absent_ratio))
                spliced = max(0, total - len(chunk))
                runs = min(len(chunk), max(1, spliced // 25)) if spliced else 0
                cuts = np.sort(rng.choice(np.arange(1, len(chunk)), size=max(runs - 1, 0), replace=False))
                run_sizes = rng.multinomial(spliced, np.full(runs, 1 / runs)) if runs else []
                pieces = np.split(np.asarray(chunk), cuts) if runs else [np.asarray(chunk)]
                split_start = cursor
                absent = (
                    _absent_frames(rng, donors, spliced, (seq.width, seq.height)) if spliced else iter(())
                )
                for piece, run in zip(
                    pieces, list(run_sizes) + [0] * (len(pieces) - len(run_sizes)), strict=True
                ):
                    for _ in range(int(run)):
                        view = next(absent, None)
                        if view is None:
                            break
                        _write_jpeg(sample / "frames" / f"{cursor:06d}.jpg", view)
                        cursor += 1
                    for i in piece:
                        target = sample / "frames" / f"{cursor:06d}.jpg"
                        if seq.frames[i].suffix.lower() in (".jpg", ".jpeg"):
                            shutil.copyfile(seq.frames[i], target)
                        else:
                            _write_jpeg(target, seq.read(i))
                        if seq.boxes[i] is not None:
                            boxes[cursor] = seq.boxes[i]
                        cursor += 1
                splits[split_name][seq.name] = [(split_start, cursor)]
        annotations[seq.name] = boxes
    save_annotations(out / "annotations" / "annotations.json", annotations)
    save_splits(out / SPLITS_FILE, splits)
    return out


def _write_jpeg(path: Path, image_rgb: np.ndarray) -> None:
    path.write_bytes(encode_jpeg(image_rgb, JPEG_QUALITY))
