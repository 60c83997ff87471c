"""Shared fixtures: a small synthetic dataset generated once per test session, a tiny split with raw detections
for the temporal scripts; and loading a script of benchmarks/ as a module."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """3 synthetic videos x 40 frames (seed 0) with its frame cache at 320 px built lazily by the tests."""
    from refdet_edge.data.synth import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", videos=3, frames=40, seed=0)


@pytest.fixture
def tiny_split(tmp_path) -> tuple[Path, Path]:
    """One val video of 20 frames, the target on 0-9; raw detections that miss it on frame 5 and put a lone
    false positive on frame 17: bridging the gap and dropping the flicker both raise ST-IoU over raw."""
    root = tmp_path / "data"
    frames = root / "samples" / "a" / "frames"
    frames.mkdir(parents=True)
    for index in range(20):
        cv2.imwrite(str(frames / f"{index:06d}.jpg"), np.zeros((64, 96, 3), np.uint8))
    (root / "samples" / "a" / "object_images").mkdir()
    cv2.imwrite(str(root / "samples" / "a" / "object_images" / "img_1.jpg"), np.zeros((8, 8, 3), np.uint8))
    target = [{"frame": f, "x1": 10 + f, "y1": 10, "x2": 30 + f, "y2": 30} for f in range(10)]
    (root / "annotations").mkdir()
    (root / "annotations" / "annotations.json").write_text(
        json.dumps([{"video_id": "a", "annotations": [{"bboxes": target}]}])
    )
    (root / "splits.json").write_text(json.dumps({"train": [], "val": [{"video_id": "a"}], "test": []}))
    raw = [{**box, "score": 0.9} for box in target if box["frame"] != 5]
    raw.append({"frame": 17, "x1": 60, "y1": 30, "x2": 80, "y2": 50, "score": 0.9})
    predictions = tmp_path / "raw.json"
    predictions.write_text(json.dumps([{"video_id": "a", "detections": [{"bboxes": raw}]}]))
    return root, predictions
