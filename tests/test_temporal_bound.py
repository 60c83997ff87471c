"""benchmarks/temporal_bound.py: what post-processing could reach on a tiny split's raw detections."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import load_benchmark

bound = load_benchmark("temporal_bound")


@pytest.fixture
def look_alike(tiny_split, tmp_path):
    """The tiny split's raw detections (the target on frames 0-9 but 5, a lone false positive on 17) with a
    look-alike that outscores the target on frame 3."""
    root, predictions = tiny_split
    listing = json.loads(predictions.read_text())
    boxes = listing[0]["detections"][0]["bboxes"]
    next(box for box in boxes if box["frame"] == 3)["score"] = 0.6
    boxes.append({"frame": 3, "x1": 60, "y1": 30, "x2": 80, "y2": 50, "score": 0.95})
    path = tmp_path / "look_alike.json"
    path.write_text(json.dumps(listing))
    return root, path


def test_the_bounds_know_presence_and_then_the_target_among_the_frames_boxes(look_alike):
    root, path = look_alike
    result = CliRunner().invoke(bound.main, ["--data", str(root), "--set", str(path), "val", "0.5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "| video | raw | online | offline | presence | candidate |" in lines
    row = next(line for line in lines if line.startswith("| a |")).strip("| ").split(" | ")[1:]
    overall = next(line for line in lines if line.startswith("| overall |")).strip("| ").split(" | ")[1:]
    # raw: 8 frames hit, the look-alike on 3, nothing on 5, the false positive on 17: 8 / 11
    assert row[0] == f"{8 / 11:.2f}" and overall[0] == f"{8 / 11:.3f}"
    # presence: no false positive, but frame 3's best box is still the look-alike: 8 / 10
    assert (row[3], overall[3]) == ("0.80", "0.800")
    # candidate: the target's box on frame 3 too; frame 5 has no box to choose: 9 / 10
    assert (row[4], overall[4]) == ("0.90", "0.900")
