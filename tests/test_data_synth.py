"""The synthetic generator: deterministic, background share, target sizes, splits; and `refdet data check`."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.annotations import load_annotations
from refdet_edge.data.splits import load_splits
from refdet_edge.data.synth import generate_synthetic


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    a = tree(generate_synthetic(tmp_path / "a", videos=2, frames=20, seed=7, workers=2))
    b = tree(generate_synthetic(tmp_path / "b", videos=2, frames=20, seed=7, workers=1))
    c = tree(generate_synthetic(tmp_path / "c", videos=2, frames=20, seed=8, workers=1))
    assert len(a) == 2 * (20 + 3) + 2
    assert a == b
    assert a.keys() != c.keys() or a != c


def test_demo_size_small_frames_large_targets_and_deterministic(tmp_path):
    args = dict(videos=2, frames=20, seed=3, frame_size=(640, 360), target_px=(24.0, 80.0))
    root = generate_synthetic(tmp_path / "a", workers=2, **args)
    assert tree(root) == tree(generate_synthetic(tmp_path / "b", workers=1, **args))
    boxes = load_annotations(root / "annotations" / "annotations.json")
    for video_id, frames in boxes.items():
        frame = cv2.imread(str(root / "samples" / video_id / "frames" / "000000.jpg"))
        assert frame.shape == (360, 640, 3)
        assert frames, video_id
        sides = [max(x2 - x1, y2 - y1) for x1, y1, x2, y2 in frames.values()]
        assert 16 <= min(sides) and max(sides) <= 125, (video_id, sides)
        for x1, y1, x2, y2 in frames.values():
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360


def vivid_share(root: Path) -> float:
    """Share of vivid pixels (look-alikes are painted in saturated colours; terrain and roofs are muted) on
    the frames without the target."""
    boxes = load_annotations(root / "annotations" / "annotations.json")
    shares = []
    for video_id, frames in boxes.items():
        for path in sorted((root / "samples" / video_id / "frames").glob("*.jpg")):
            if int(path.stem) not in frames:
                hsv = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2HSV)
                shares.append(float(((hsv[..., 1] > 210) & (hsv[..., 2] > 100)).mean()))
    return max(shares)


def test_look_alikes_option_sets_the_distractors(tmp_path):
    args = dict(videos=1, frames=20, seed=1, workers=1, frame_size=(640, 360), target_px=(24.0, 80.0))
    assert vivid_share(generate_synthetic(tmp_path / "none", look_alikes=(0, 0), **args)) == 0.0
    assert vivid_share(generate_synthetic(tmp_path / "six", look_alikes=(6, 6), **args)) > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(target_px=(30.0, 20.0)), "4 <= min <= max"),
        (dict(frame_size=(320, 180), target_px=(24.0, 80.0)), "at least 4 x the largest target"),
        (dict(look_alikes=(3, 1)), "look-alikes need 0 <= min <= max"),
    ],
)
def test_bad_sizes_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic(tmp_path / "x", videos=1, frames=20, **kwargs)
    assert not (tmp_path / "x").exists()


def test_synth_command_sizes(tmp_path):
    out = tmp_path / "demo"
    args = ["data", "synth", "--out", str(out), "--videos", "1", "--frames", "20", "--workers", "1"]
    result = CliRunner().invoke(
        cli, [*args, "--frame-size", "480x272", "--target-size", "20-60", "--look-alikes", "0-1"]
    )
    assert result.exit_code == 0, result.output
    assert "of 480x272" in result.output
    assert cv2.imread(str(next((out / "samples").glob("*/frames/000000.jpg")))).shape == (272, 480, 3)
    bad = CliRunner().invoke(cli, [*args, "--frame-size", "480by272"])
    assert bad.exit_code == 2 and "--frame-size" in bad.output and "'480by272'" in bad.output
    small = CliRunner().invoke(cli, [*args, "--frame-size", "160x120", "--target-size", "20-60"])
    assert small.exit_code == 1 and "too small for 60 px targets" in small.output


def test_layout_background_share_and_box_sizes(synth_root):
    boxes = load_annotations(synth_root / "annotations" / "annotations.json")
    assert len(boxes) == 3
    names = [p.name for p in (synth_root / "samples").iterdir()]
    assert sorted(names) == sorted(boxes)
    for video_id, frames in boxes.items():
        sample = synth_root / "samples" / video_id
        assert len(list((sample / "frames").glob("*.jpg"))) == 40
        assert len(list((sample / "object_images").glob("img_*.jpg"))) == 3
        assert 1 <= len(frames) <= 0.4 * 40, video_id
        for x1, y1, x2, y2 in frames.values():
            assert 6 <= max(x2 - x1, y2 - y1) <= 70
            assert 0 <= x1 < x2 <= 1280 and 0 <= y1 < y2 <= 720
    total = sum(len(f) for f in boxes.values())
    assert 1 - total / (3 * 40) >= 0.6


def test_splits_are_disjoint_and_each_holds_the_target(synth_root):
    splits = load_splits(synth_root / "splits.json")
    boxes = load_annotations(synth_root / "annotations" / "annotations.json")
    for video_id, frames in boxes.items():
        covered = []
        for name in ("train", "val", "test"):
            ((start, end),) = splits[name][video_id]
            covered.extend(range(start, end))
            assert any(start <= f < end for f in frames), (video_id, name)
        assert covered == list(range(40))


def test_check_command_prints_stats_and_writes_histogram(synth_root, tmp_path):
    plot = tmp_path / "hist.png"
    result = CliRunner().invoke(
        cli, ["data", "check", str(synth_root), "--plot", str(plot), "--cache-size", "320"]
    )
    assert result.exit_code == 0, result.output
    assert "total (3 videos)" in result.output and "background" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
