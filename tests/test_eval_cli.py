"""``refdet eval``: a model's metrics and figures, scoring prediction files, and every bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.annotations import DETECTIONS_KEY, load_annotations, save_annotations
from refdet_edge.models import atomic_save, checkpoint_payload, create_model

# a random model scores every anchor about 1e-3: thresholds under that make it report boxes
LOW = ["--conf", "0.0005", "--score-threshold", "0.0005"]
METRIC_KEYS = {
    "st_iou",
    "map50",
    "map50_95",
    "precision",
    "recall",
    "f1",
    "fp_per_background_frame",
    "fp_per_minute",
    "small_object_recall",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("eval_ckpt") / "tiny.pt"
    atomic_save(checkpoint_payload(create_model(imgsz=64, support_size=56)), path)
    return path


@pytest.fixture(scope="module")
def model_eval(checkpoint, synth_root, tmp_path_factory):
    """``refdet eval --weights`` on the val split, once for the module."""
    out = tmp_path_factory.mktemp("eval") / "run"
    result = invoke(
        "eval",
        "--weights",
        checkpoint,
        "--data",
        synth_root,
        "--split",
        "val",
        "--out",
        out,
        "--device",
        "cpu",
        *LOW,
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def video_ids(root):
    return sorted(load_annotations(root / "annotations" / "annotations.json"))


def test_eval_weights_writes_metrics_figures_and_predictions(model_eval, synth_root):
    out, output = model_eval
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"data", "split", "weights", "settings", "final", "raw", "temporal"}
    assert metrics["final"] == "temporal" and metrics["split"] == "val"
    for stage in ("raw", "temporal"):
        assert METRIC_KEYS <= set(metrics[stage]["overall"])
        assert sorted(metrics[stage]["per_video"]) == video_ids(synth_root)
        for per_video in metrics[stage]["per_video"].values():
            assert METRIC_KEYS <= set(per_video)
    pngs = [out / "pr_curve.png", out / "st_iou_per_video.png"]
    pngs += [out / "timelines" / f"{v}.png" for v in video_ids(synth_root)]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    predictions = load_annotations(out / "predictions.json", key=DETECTIONS_KEY)
    assert sorted(predictions) == video_ids(synth_root)
    assert any(predictions.values()), "the low threshold should make the tracker report boxes"
    for header in ("ST-IoU raw", "ST-IoU temporal", "mAP50", "mAP50-95", "FP/bg frame", "FP/min", "small R"):
        assert header in output
    assert all(v in output for v in ["overall", *video_ids(synth_root)])


def test_written_predictions_score_as_the_model_did(model_eval, synth_root, tmp_path):
    """The prediction file holds exactly the boxes the temporal ST-IoU was computed from."""
    out, _ = model_eval
    result = invoke(
        "eval", "--predictions", out / "predictions.json", "--data", synth_root, "--split", "val",
        "--out", tmp_path, "--score-threshold", "0.0005",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())["temporal"]
    scored = json.loads((tmp_path / "metrics.json").read_text())
    assert scored["final"] == "file"
    for vid, m in model["per_video"].items():
        assert scored["file"]["per_video"][vid]["st_iou"] == pytest.approx(m["st_iou"], abs=1e-4)
        assert scored["file"]["per_video"][vid]["pred_frames"] == m["pred_frames"]


@pytest.mark.parametrize("split", ["val", "all"])
def test_ground_truth_as_predictions_scores_one(synth_root, tmp_path, split):
    predictions = save_annotations(
        tmp_path / "gt_as_predictions.json",
        load_annotations(synth_root / "annotations" / "annotations.json"),
        key=DETECTIONS_KEY,
    )
    result = invoke(
        "eval", "--predictions", predictions, "--data", synth_root, "--split", split, "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    overall = json.loads((tmp_path / "metrics.json").read_text())["file"]["overall"]
    assert overall["gt_frames"] > 0
    assert overall["st_iou"] == 1.0 and overall["recall"] == 1.0 and overall["map50"] == pytest.approx(1.0)


def test_no_temporal_keeps_raw_only(checkpoint, synth_root, tmp_path):
    result = invoke(
        "eval", "--weights", checkpoint, "--data", synth_root, "--split", "test", "--out", tmp_path,
        "--device", "cpu", "--no-temporal", *LOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"] == "raw" and "temporal" not in metrics
    assert metrics["settings"]["temporal"] is None
    assert "ST-IoU temporal" not in result.output


def write_predictions(path, entries):
    path.write_text(json.dumps(entries))
    return path


def entries(ids, box=None):
    bboxes = [] if box is None else [{"bboxes": [box]}]
    return [{"video_id": v, "detections": bboxes} for v in ids]


BAD_FILES = {
    "not_json": lambda ids: "[{",
    "unknown_video": lambda ids: entries([*ids, "ghost_video"]),
    "missing_video": lambda ids: entries(ids[1:]),
    "missing_coordinate": lambda ids: entries(ids, {"frame": 1, "x1": 1, "y1": 1, "x2": 5}),
    "inverted_box": lambda ids: entries(ids, {"frame": 1, "x1": 9, "y1": 1, "x2": 5, "y2": 4}),
    "frame_past_the_end": lambda ids: entries(ids, {"frame": 4000, "x1": 1, "y1": 1, "x2": 5, "y2": 4}),
    "annotations_key": lambda ids: [{"video_id": v, "annotations": []} for v in ids],
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_prediction_file_names_the_file(synth_root, tmp_path, case):
    content = BAD_FILES[case](video_ids(synth_root))
    path = tmp_path / f"{case}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = invoke("eval", "--predictions", path, "--data", synth_root, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert str(path) in result.output and "Traceback" not in result.output


def test_bad_weights_name_the_file(checkpoint, synth_root, tmp_path):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    other_architecture = tmp_path / "other.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("head.")}
    atomic_save(payload, other_architecture)
    for weights in (tmp_path / "missing.pt", not_a_checkpoint, other_architecture):
        result = invoke(
            "eval", "--weights", weights, "--data", synth_root, "--out", tmp_path / "out", "--device", "cpu"
        )
        assert result.exit_code != 0
        assert str(weights) in result.output and "Traceback" not in result.output


def test_weights_or_predictions_required(synth_root, tmp_path):
    result = invoke("eval", "--data", synth_root, "--out", tmp_path)
    assert result.exit_code == 2 and "--weights" in result.output


def test_help_shows_examples():
    for command in ("eval", "predict"):
        result = invoke(command, "--help")
        assert (
            result.exit_code == 0 and "Examples:" in result.output and f"refdet {command} " in result.output
        )
