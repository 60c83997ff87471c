"""Every bad input of issue 3 gives a clear message (file, video, field) and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from refdet_edge.cli import cli

W, H, FRAMES = 64, 48, 6


def jpeg(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((H, W, 3), value, np.uint8)
    image[10:20, 10:30] = 200
    cv2.imwrite(str(path), image)


def make_dataset(root: Path, boxes: dict | None = None) -> Path:
    """Two videos of FRAMES 64x48 frames with one reference each; video 'a' has a box on frame 1."""
    for vid in ("a", "b"):
        for i in range(FRAMES):
            jpeg(root / "samples" / vid / "frames" / f"{i:06d}.jpg", 40 * i)
        jpeg(root / "samples" / vid / "object_images" / "img_1.jpg")
    box = {"frame": 1, "x1": 10, "y1": 10, "x2": 30, "y2": 20}
    box.update(boxes or {})
    annotations = [
        {"video_id": "a", "annotations": [{"bboxes": [box]}]},
        {"video_id": "b", "annotations": []},
    ]
    write_annotations(root, annotations)
    return root


def write_annotations(root: Path, data) -> Path:
    path = root / "annotations" / "annotations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def check(root: Path):
    return CliRunner().invoke(cli, ["data", "check", str(root), "--plot", str(root / "h.png")])


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), "a traceback escaped instead of a ClickException"
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_good_dataset_passes(tmp_path):
    result = check(make_dataset(tmp_path))
    assert result.exit_code == 0, result.output
    assert "total (2 videos)" in result.output


def test_missing_object_images(tmp_path):
    root = make_dataset(tmp_path)
    (root / "samples/b/object_images/img_1.jpg").unlink()
    (root / "samples/b/object_images").rmdir()
    assert_clean_failure(check(root), "object_images", "video 'b'", "missing")


def test_empty_object_images(tmp_path):
    root = make_dataset(tmp_path)
    (root / "samples/a/object_images/img_1.jpg").unlink()
    assert_clean_failure(check(root), "object_images", "video 'a'", "empty")


def test_reference_that_is_not_an_image(tmp_path):
    root = make_dataset(tmp_path)
    (root / "samples/a/object_images/img_2.jpg").write_text("hello, not a jpeg")
    assert_clean_failure(check(root), "img_2.jpg", "video 'a'", "field 'object_images/img_2.jpg'")


def test_corrupt_frame_is_skipped_and_counted(tmp_path):
    root = make_dataset(tmp_path)
    frame = root / "samples/b/frames/000003.jpg"
    frame.write_bytes(frame.read_bytes()[:40])
    result = check(root)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("b "))
    assert line.split()[1:5] == [str(FRAMES - 1), "0", "100.0%", "1"]


def test_annotations_not_json(tmp_path):
    root = make_dataset(tmp_path)
    path = write_annotations(root, "[{'video_id': 'a'")
    assert_clean_failure(check(root), str(path), "not valid JSON")


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"x2": "30"}, ["video 'a'", "x2", "expected a number"]),
        ({"frame": 1.5}, ["video 'a'", "frame", "non-negative integer"]),
        ({"x1": 40}, ["video 'a'", "inverted or empty box"]),
        ({"y1": -2}, ["video 'a'", "negative coordinate"]),
        ({"x2": W + 5}, ["video 'a'", "field 'annotations (frame 1)'", "outside the 64x48 frame"]),
        ({"frame": FRAMES + 3}, ["video 'a'", "past the end of the video (6 frames)"]),
    ],
)
def test_bad_boxes(tmp_path, override, fragments):
    root = make_dataset(tmp_path, override)
    assert_clean_failure(check(root), "annotations.json", *fragments)


def test_annotations_with_wrong_types(tmp_path):
    root = make_dataset(tmp_path)
    write_annotations(root, [{"video_id": "a", "annotations": "none"}])
    assert_clean_failure(check(root), "annotations.json", "video 'a'", "field 'annotations'")


@pytest.mark.parametrize("video_id", ["../x", "/etc/passwd", "a/b"])
def test_video_id_that_is_not_a_folder_name(tmp_path, video_id):
    root = make_dataset(tmp_path)
    write_annotations(root, [{"video_id": video_id, "annotations": []}])
    assert_clean_failure(check(root), "annotations.json", "not a plain folder name", "video_id")


def test_video_folder_missing(tmp_path):
    root = make_dataset(tmp_path)
    write_annotations(root, [{"video_id": "zz", "annotations": []}])
    assert_clean_failure(check(root), "annotations.json", "video 'zz'", "no folder")


def write_video(path: Path, frames: int = 20) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((H, W, 3), 10 * i, np.uint8))
    writer.release()


def mp4_dataset(root: Path) -> Path:
    make_dataset(root)
    for frame in (root / "samples/b/frames").iterdir():
        frame.unlink()
    (root / "samples/b/frames").rmdir()
    write_video(root / "samples/b/drone_video.mp4")
    return root


def test_mp4_video_is_read(tmp_path):
    result = check(mp4_dataset(tmp_path))
    assert result.exit_code == 0, result.output
    assert next(ln for ln in result.output.splitlines() if ln.startswith("b ")).split()[1] == "20"


def test_unreadable_video(tmp_path):
    root = mp4_dataset(tmp_path)
    (root / "samples/b/drone_video.mp4").write_bytes(b"\x00" * 2048)
    assert_clean_failure(check(root), "drone_video.mp4", "video 'b'", "unreadable video")


def test_truncated_video(tmp_path):
    root = mp4_dataset(tmp_path)
    video = root / "samples/b/drone_video.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    result = check(root)
    assert_clean_failure(result, "drone_video.mp4", "video 'b'")
    assert "truncated" in result.output or "unreadable video" in result.output


def test_bad_splits_file(tmp_path):
    root = make_dataset(tmp_path)
    (root / "splits.json").write_text(json.dumps({"train": [{"video_id": "a", "frames": [4, 2]}]}))
    result = CliRunner().invoke(
        cli, ["data", "check", str(root), "--split", "train", "--plot", str(root / "h.png")]
    )
    assert_clean_failure(result, "splits.json", "video 'a'", "train[0].frames")


def test_synth_and_import_reject_bad_arguments(tmp_path):
    assert_clean_failure(
        CliRunner().invoke(cli, ["data", "import-sot", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]),
        "nope",
        "img",
    )
    result = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "s"), "--frames", "5"])
    assert result.exit_code != 0 and "Traceback" not in result.output
