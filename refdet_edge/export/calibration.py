"""Frames of a dataset with the reference photos of their video: INT8 calibration and export parity read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdet_edge.export.metadata import ExportError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class CalibrationFrame:
    """One calibration input: a decoded frame and the reference photos of the video it comes from."""

    frame: Path
    references: tuple[Path, ...]


def dataset_frames(root: str | Path) -> list[CalibrationFrame]:
    """Every frame of ``root/samples/*/frames/*.jpg`` (the dataset layout), each with the sorted images of
    its ``object_images`` folder; a folder that does not fit raises :class:`ExportError` naming the path."""
    samples = Path(root) / "samples"
    if not samples.is_dir():
        raise ExportError(f"{samples}: no such folder (expected a dataset root with samples/)")
    pool: list[CalibrationFrame] = []
    for sample in sorted(p for p in samples.iterdir() if p.is_dir()):
        frames = sorted((sample / "frames").glob("*.jpg"))
        if not frames:
            continue
        refs_dir = sample / "object_images"
        refs = tuple(sorted(p for p in refs_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        if not refs:
            raise ExportError(f"{refs_dir}: no reference image (a sample with frames needs object_images/)")
        pool.extend(CalibrationFrame(frame, refs) for frame in frames)
    if not pool:
        raise ExportError(f"{samples}: no decoded frame in */frames/*.jpg (decoded JPEG frames are read)")
    return pool


def calibration_frames(root: str | Path, max_frames: int) -> list[CalibrationFrame]:
    """Up to ``max_frames`` frames of :func:`dataset_frames`, spread evenly over the dataset."""
    if max_frames < 1:
        raise ExportError(f"--calib-frames must be at least 1, got {max_frames}")
    pool = dataset_frames(root)
    picks = np.unique(np.linspace(0, len(pool) - 1, min(max_frames, len(pool))).round().astype(int))
    return [pool[i] for i in picks]
