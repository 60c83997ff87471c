"""What `make demo` runs besides the refdet commands: the choice of its starting weights and its summary."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.annotations import DETECTIONS_KEY, DatasetError, load_annotations, save_annotations
from refdet_edge.data.splits import load_splits
from refdet_edge.demo import summary
from refdet_edge.demo.yolo import choose_weights, main


def never(*_args):
    raise AssertionError("must not be called")


def test_given_then_shared_then_cache_without_touching_the_network(tmp_path):
    given, shared, cache = tmp_path / "mine.pt", tmp_path / "shared.pt", tmp_path / "cache" / "yolov8n.pt"
    given.write_bytes(b"x")
    shared.write_bytes(b"x")
    cache.parent.mkdir()
    cache.write_bytes(b"x")
    assert choose_weights(str(given), shared, cache, never, never)[0] == given
    assert choose_weights(None, shared, cache, never, never)[0] == shared
    path, why = choose_weights(None, tmp_path / "absent.pt", cache, never, never)
    assert path == cache and "before" in why
    with pytest.raises(FileNotFoundError, match="YOLO_WEIGHTS=.*absent.pt: no such file"):
        choose_weights(str(tmp_path / "absent.pt"), shared, cache, never, never)


def test_download_only_when_online_and_a_failure_falls_back(tmp_path):
    shared, cache = tmp_path / "absent.pt", tmp_path / "cache" / "yolov8n.pt"
    path, why = choose_weights(None, shared, cache, lambda: False, never)
    assert path is None and "random weights" in why and "YOLO_OFFLINE=0" in why

    def fetch(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return target

    path, why = choose_weights(None, shared, cache, lambda: True, fetch)
    assert path == cache and cache.read_bytes() == b"weights" and "downloaded yolov8n.pt" in why
    cache.unlink()

    def fail(_target):
        raise ConnectionError("no route to host")

    path, why = choose_weights(None, shared, cache, lambda: True, fail)
    assert path is None and "no route to host" in why and "random weights" in why


def test_main_prints_the_path_or_nothing_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    args = ["--shared", str(tmp_path / "absent.pt"), "--cache", str(tmp_path / "yolov8n.pt")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out == "" and "random weights" in err
    assert not (tmp_path / "yolov8n.pt").exists()
    assert main(["--given", str(tmp_path / "nope.pt"), *args]) == 1
    assert "error: YOLO_WEIGHTS=" in capsys.readouterr().err
    (tmp_path / "mine.pt").write_bytes(b"x")
    assert main(["--given", str(tmp_path / "mine.pt"), *args]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'mine.pt'}\n" and "(YOLO_WEIGHTS)" in err


def test_frame_runs():
    assert summary.frame_runs([9, 3, 4, 5, 11, 12]) == "3-5, 9, 11-12"
    assert summary.frame_runs([]) == "none"


def test_summary_names_frames_hits_and_false_alarms_per_video(synth_root, tmp_path):
    truth = load_annotations(synth_root / "annotations" / "annotations.json")
    (val_span,) = next(iter(load_splits(synth_root / "splits.json")["val"].values()))
    first, missed, *rest = sorted(truth)
    in_val = {v: {f: b for f, b in truth[v].items() if val_span[0] <= f < val_span[1]} for v in truth}
    background = next(f for f in range(*val_span) if f not in truth[first])
    found = {first: {**in_val[first], background: (1.0, 1.0, 30.0, 30.0)}, missed: {}}
    found.update({v: in_val[v] for v in rest})
    path = save_annotations(tmp_path / "predictions.json", found, key=DETECTIONS_KEY)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cli,
        ["eval", "--predictions", str(path), "--data", str(synth_root), "--split", "val", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output

    lines = summary.summary_lines(out, tmp_path / "predict" / "clip.mp4")
    text = "\n".join(lines)
    n_first, n_missed = len(in_val[first]), len(in_val[missed])
    first_line = next(line for line in lines if line.startswith(f"  {first}:"))
    assert first_line.startswith(f"  {first}: ST-IoU {n_first / (n_first + 1):.2f}; found on {n_first} of")
    assert "1 false alarm(s)" in first_line
    assert f"in view on frames {summary.frame_runs(in_val[first])}; reported on frames " in text
    assert f"  {missed}: ST-IoU 0.00; found on 0 of {n_missed} frames" in text
    assert f"in view on frames {summary.frame_runs(in_val[missed])}; reported on frames none" in text
    assert "val split" in lines[0] and "later frames" in lines[0]
    assert f"{out}/timelines/*.png" in text and text.endswith(
        f"Annotated video: {tmp_path / 'predict' / 'clip.mp4'} (missing)"
    )
    assert json.loads((out / "metrics.json").read_text())["final"] in lines[0]


def test_clip_lines_compare_its_boxes_with_every_frame_of_the_video(synth_root, tmp_path):
    truth = load_annotations(synth_root / "annotations" / "annotations.json")
    video_id = sorted(truth)[0]
    frames = truth[video_id]
    extra = next(f for f in range(40) if f not in frames)
    shifted = {f: (x1 + 1000, y1, x2 + 1000, y2) for f, (x1, y1, x2, y2) in list(frames.items())[:2]}
    boxes = {**frames, **shifted, extra: (1.0, 1.0, 20.0, 20.0)}
    clip = tmp_path / "predict" / f"{video_id}.mp4"
    clip.parent.mkdir()
    save_annotations(clip.parent / "predictions.json", {video_id: boxes}, key=DETECTIONS_KEY)
    clip.write_bytes(b"mp4")
    spans = ", ".join(
        f"{name} {start}-{end - 1}"
        for name, ranges in load_splits(synth_root / "splits.json").items()
        for start, end in ranges[video_id]
    )
    assert summary.clip_lines(clip, synth_root, frames) == [
        f"Annotated video: {clip}",
        f"  every frame of {video_id} ({spans}): the target in view on {len(frames)}, a box on "
        f"{len(frames) + 1}: {len(frames) - 2} on the target (IoU >= 0.5), 1 on frames without it",
    ]


def test_summary_without_an_eval_run_is_one_line(tmp_path, capsys):
    with pytest.raises(DatasetError, match="metrics.json: no such file"):
        summary.summary_lines(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert summary.main(["--eval", str(tmp_path)]) == 1
    assert "not a metrics file of refdet eval" in capsys.readouterr().err
