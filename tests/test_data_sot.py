"""Importing single-object-tracking sequences (real UAV123 clips from ../shared/data/sot when present)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from refdet_edge.data.annotations import DatasetError, load_annotations
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.sot import import_sot
from refdet_edge.data.splits import load_splits

SOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sot"
MAX_FRAMES = 30


@pytest.mark.skipif(
    not (SOT / "boat1").is_dir() or not (SOT / "wakeboard7").is_dir(), reason="no ../shared/data/sot"
)
def test_import_two_uav123_sequences(tmp_path):
    out = import_sot(
        [SOT / "boat1", SOT / "wakeboard7"], tmp_path / "sot", refs=3, absent_ratio=0.7, max_frames=MAX_FRAMES
    )
    boxes = load_annotations(out / "annotations" / "annotations.json")
    assert sorted(boxes) == ["boat1", "wakeboard7"]
    splits = load_splits(out / "splits.json")
    for name in ("boat1", "wakeboard7"):
        sample = out / "samples" / name
        frames = sorted((sample / "frames").glob("*.jpg"))
        assert len(boxes[name]) == MAX_FRAMES - 3  # every source frame has the object; 3 became references
        assert abs(1 - len(boxes[name]) / len(frames) - 0.7) < 0.03
        assert [int(p.stem) for p in frames] == list(range(len(frames)))
        assert all(cv2.imread(str(p)).shape == (720, 1280, 3) for p in frames[:: len(frames) // 5])
        refs = sorted((sample / "object_images").glob("*.jpg"))
        assert [p.name for p in refs] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
        sides = [max(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes[name].values()]
        for ref in refs:  # the box plus half its size on each side, from frames between annotated ones
            h, w = cv2.imread(str(ref)).shape[:2]
            assert min(sides) <= max(h, w) <= 2.2 * max(sides)
        spans = [splits[s][name][0] for s in ("train", "val", "test")]
        assert spans[0][0] == 0 and spans[-1][1] == len(frames)
        for start, end in spans:
            assert any(start <= f < end for f in boxes[name]), (name, start, end)
            assert any(f not in boxes[name] for f in range(start, end))
    dataset = DroneDataset(out, "train", cache_size=320)
    assert [v.video_id for v in dataset.videos] == ["boat1", "wakeboard7"]


def sequence(folder: Path, lines: list[str], frames: int = 12) -> Path:
    (folder / "img").mkdir(parents=True)
    for i in range(frames):
        cv2.imwrite(str(folder / "img" / f"{i + 1:06d}.jpg"), np.full((60, 80, 3), 20 * i, np.uint8))
    (folder / "groundtruth_rect.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_absent_rows_and_clipping(tmp_path):
    rows = ["11,11,20,10"] * 8 + ["NaN,NaN,NaN,NaN", "5,5,0,0", "70,50,30,30", "1 1 5 5"]
    a = sequence(tmp_path / "a", rows)
    b = sequence(tmp_path / "b", ["30,30,10,10"] * 12)
    out = import_sot([a, b], tmp_path / "out", refs=2, absent_ratio=0.5)
    boxes = load_annotations(out / "annotations" / "annotations.json")["a"]
    assert (10.0, 10.0, 30.0, 20.0) in boxes.values()
    assert (69.0, 49.0, 80.0, 60.0) in boxes.values()  # clipped to the 80x60 frame
    assert len(boxes) == 10 - 2  # 8 + 2 present rows, 2 used as references; NaN and 0-size rows are absent
    frames = len(list((out / "samples" / "a" / "frames").glob("*.jpg")))
    assert abs(1 - len(boxes) / frames - 0.5) < 0.1


def test_import_errors_name_file_and_sequence(tmp_path):
    a = sequence(tmp_path / "a", ["1,1,5,5"] * 11 + ["1,1,five,5"])
    b = sequence(tmp_path / "b", ["1,1,5,5"] * 12)
    with pytest.raises(DatasetError, match=r"groundtruth_rect.txt: video 'a': field 'line 12'"):
        import_sot([a, b], tmp_path / "out")
    with pytest.raises(DatasetError, match="at least two"):
        import_sot([b], tmp_path / "out")
    short = sequence(tmp_path / "c", ["1,1,5,5"] * 3)
    with pytest.raises(DatasetError, match="3 lines for 12 frames"):
        import_sot([short, b], tmp_path / "out")
