"""splits.json: object and time splits, their kinds, the ``refdet data split`` command and its leak check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.annotations import DatasetError
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.sot import import_sot
from refdet_edge.data.splits import (
    load_splits,
    object_splits,
    read_splits,
    save_splits,
    split_kind,
)


def write(root: Path, data: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "splits.json").write_text(json.dumps(data))
    return root


def test_split_kinds(tmp_path):
    assert split_kind(tmp_path, "val") == "all frames"  # no splits file: every split is every frame
    old = write(
        tmp_path / "old", {"train": [{"video_id": "a", "frames": [0, 5]}], "val": [{"video_id": "a"}]}
    )
    assert read_splits(old / "splits.json")[1] == "time"  # files without split_by are time splits
    assert split_kind(old, "val") == split_kind(old, "train") == "later frames"
    by_object = write(
        tmp_path / "obj",
        {
            "split_by": "object",
            "train": [{"video_id": "a", "frames": [0, 8]}],
            "seen": [{"video_id": "a", "frames": [8, 10]}],
            "val": [{"video_id": "b"}],
            "test": [{"video_id": "c"}],
        },
    )
    assert [split_kind(by_object, s) for s in ("val", "test", "seen", "train")] == [
        "unseen objects",
        "unseen objects",
        "later frames",
        "later frames",
    ]
    with pytest.raises(ValueError, match="split must be one of"):
        split_kind(by_object, "all")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": [], "later": []}, "field 'later': unknown split"),
        ({"split_by": "random", "train": []}, "field 'split_by': expected one of"),
        (
            {
                "split_by": "object",
                "train": [{"video_id": "a"}],
                "test": [{"video_id": "a", "frames": [0, 3]}],
            },
            "video 'a': field 'test': with \"split_by\": \"object\" a test video must be in no other split",
        ),
        (
            {"split_by": "object", "val": [{"video_id": "b"}], "test": [{"video_id": "b"}]},
            "video 'b': field 'val'",
        ),
    ],
)
def test_bad_splits_files_fail_in_one_line(tmp_path, data, message):
    root = write(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as err:
        load_splits(root / "splits.json")
    assert "\n" not in str(err.value) and str(root / "splits.json") in str(err.value)


def test_object_splits_hold_whole_videos_out_and_split_the_rest_in_time(tmp_path):
    splits = object_splits({"a": 100, "b": 40, "c": 60, "d": 20}, ["b"], ["c", "d"], seen_fraction=0.2)
    assert splits["train"] == {"a": [(0, 80)]} and splits["seen"] == {"a": [(80, 100)]}
    assert splits["val"] == {"b": [(0, None)]} and splits["test"] == {"c": [(0, None)], "d": [(0, None)]}
    path = save_splits(tmp_path / "splits.json", splits, "object")
    assert read_splits(path) == ({k: v for k, v in splits.items()}, "object")
    with pytest.raises(ValueError, match="--test-objects: no video or sequence named 'e'"):
        object_splits({"a": 10}, [], ["e"])
    with pytest.raises(ValueError, match="'a' is in both"):
        object_splits({"a": 10, "b": 10}, ["a"], ["a"])


def test_split_command_on_a_recorded_dataset(synth_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".cache"))
    videos = sorted(p.name for p in (root / "samples").iterdir())
    result = CliRunner().invoke(
        cli, ["data", "split", str(root), "--val-objects", videos[0], "--test-objects", videos[1]]
    )
    assert result.exit_code == 0, result.output
    assert "split by object" in result.output
    splits, split_by = read_splits(root / "splits.json")
    assert split_by == "object" and list(splits["val"]) == [videos[0]] and list(splits["test"]) == [videos[1]]
    assert splits["train"] == {videos[2]: [(0, 34)]} and splits["seen"] == {videos[2]: [(34, 40)]}
    seen = DroneDataset(root, "seen", cache_size=64)
    assert [v.video_id for v in seen.videos] == [videos[2]] and seen.num_frames == 6
    assert split_kind(root, "val") == "unseen objects"
    bad = CliRunner().invoke(cli, ["data", "split", str(root), "--test-objects", "nope"])
    assert bad.exit_code != 0 and "no video or sequence named 'nope'" in bad.output


def flat_sequence(folder: Path, value: int, frames: int = 30) -> Path:
    (folder / "img").mkdir(parents=True)
    for i in range(frames):
        cv2.imwrite(
            str(folder / "img" / f"{i + 1:06d}.jpg"), np.full((48, 64, 3), (value, 4 * i, 0), np.uint8)
        )
    (folder / "groundtruth_rect.txt").write_text("\n".join(["10,10,20,20"] * frames) + "\n")
    return folder


def test_split_command_refuses_a_split_that_leaks_spliced_frames(tmp_path):
    seqs = [flat_sequence(tmp_path / name, 40 * k + 20) for k, name in enumerate(("a", "b", "c"))]
    out = import_sot(seqs, tmp_path / "sot", refs=2, absent_ratio=0.6, gap=1)  # a time split
    check = CliRunner().invoke(
        cli, ["data", "check", str(out), "--cache-size", "64", "--plot", str(tmp_path / "p.png")]
    )
    assert check.exit_code == 0 and "no held-out frame or object is seen in training" in check.output
    before = (out / "splits.json").read_text()
    result = CliRunner().invoke(cli, ["data", "split", str(out), "--test-objects", "c"])
    assert result.exit_code != 0 and "would leak" in result.output and "re-import" in result.output
    assert (out / "splits.json").read_text() == before


def test_data_commands_import_no_heavy_module():
    code = "import sys, refdet_edge.data.commands; print(sorted({'torch', 'cv2', 'ultralytics'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
