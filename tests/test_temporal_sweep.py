"""benchmarks/temporal_sweep.py: the rule that chose the temporal defaults, and the script on a tiny split."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from refdet_edge.evaluation.settings import TemporalConfig

ROOT = Path(__file__).resolve().parents[1]


def _load_module():
    spec = importlib.util.spec_from_file_location("temporal_sweep", ROOT / "benchmarks" / "temporal_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sweep = _load_module()
DEFAULT = {"continuity": TemporalConfig().continuity, "max_gap": TemporalConfig().max_gap}
OTHER = {"continuity": 0.5, "max_gap": 10}


def test_fewer_videos_below_raw_outrank_a_larger_gain():
    scored = [(OTHER, [0.2, 0.1], [0.2, 0.1], 1), (DEFAULT, [0.01, 0.01], [0.01, 0.01], 0)]
    chosen, below, gain = sweep.choose(scored, TemporalConfig())
    assert (chosen, below, gain) == (DEFAULT, 0, pytest.approx(0.01))


def test_among_equally_many_below_the_best_mean_gain_wins_and_a_tie_keeps_the_default():
    scored = [(DEFAULT, [0.05, 0.05], [0.05, 0.05], 2), (OTHER, [0.0, 0.12], [0.0, 0.12], 2)]
    assert sweep.choose(scored, TemporalConfig())[0] == OTHER
    for order in (
        [(OTHER, [0.06], [0.07], 0), (DEFAULT, [0.06 + 1e-9], [0.07], 0)],
        [(DEFAULT, [0.06], [0.07], 0), (OTHER, [0.06 + 1e-9], [0.07 + 1e-9], 0)],
    ):
        assert sweep.choose(order, TemporalConfig())[0] == DEFAULT


def test_among_equal_smaller_gains_the_best_offline_gain_wins():
    """A setting of the offline mode alone (``split_weight``) leaves the online gain, often the smaller one,
    as it was: the offline gain breaks that tie."""
    scored = [(DEFAULT, [0.03, 0.03], [0.04, 0.04], 0), (OTHER, [0.03, 0.03], [0.05, 0.06], 0)]
    assert sweep.choose(scored, TemporalConfig()) == (OTHER, 0, pytest.approx(0.03))


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


def test_the_script_scores_every_combination_and_chooses_by_the_rule(tiny_split, monkeypatch):
    root, predictions = tiny_split
    monkeypatch.setattr(sweep, "GRID", {"confirm_frames": [1, 3], "max_gap": [0, 5], "split_weight": [0.0]})
    args = ["--data", str(root), "--set", str(predictions), "val", "0.5", "--workers", "1"]
    result = CliRunner().invoke(sweep.main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("{'confirm_frames'") for line in lines) == 4
    bare = next(line for line in lines if line.startswith("{'confirm_frames': 1, 'max_gap': 0,"))
    raw = float(bare.split(": ")[-1].split()[0])
    assert bare.split(": ")[-1].split()[:3] == [f"{raw:.3f}"] * 3  # nothing to add: the raw output
    assert lines[-1].startswith(
        "chosen: {'confirm_frames': 3, 'max_gap': 5, 'split_weight': 0.0} (0 video(s) below"
    )
    gain = float(lines[-1].split("mean smaller gain ")[1].rstrip(")"))
    assert gain > 0.1, result.output
