"""``refdet eval``: raw, online and offline side by side, raw predictions re-run without the model, prediction
files with and without scores, the validator at a frame stride, boxes in the letterbox bars, bad input."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.annotations import DETECTIONS_KEY, load_annotations, load_detections, save_annotations
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.splits import split_kind
from refdet_edge.evaluation.settings import TemporalConfig
from refdet_edge.evaluation.video_threshold import video_threshold
from refdet_edge.models import atomic_save, checkpoint_payload, create_model

# a random model scores far below any real threshold: at 0 it reports its best boxes on every frame
LOW = ["--raw-conf", "0", "--conf", "0"]
STAGES = ("raw", "online", "offline")
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
    atomic_save(checkpoint_payload(create_model(imgsz=64, support_size=64)), path)
    return path


@pytest.fixture(scope="module")
def model_eval(checkpoint, synth_root, tmp_path_factory):
    """``refdet eval --weights`` on the val split, once for the module."""
    out = tmp_path_factory.mktemp("eval") / "run"
    result = invoke(
        "eval", "--weights", checkpoint, "--data", synth_root, "--split", "val", "--out", out,
        "--device", "cpu", *LOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def video_ids(root):
    return sorted(load_annotations(root / "annotations" / "annotations.json"))


def st_ious(metrics, stage):
    return {vid: m["st_iou"] for vid, m in metrics[stage]["per_video"].items()}


def test_eval_weights_reports_raw_online_offline_side_by_side(model_eval, synth_root):
    out, output = model_eval
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {
        "data", "split", "split_kind", "weights", "scored", "raw_detections", "settings", "final", *STAGES
    }  # fmt: skip
    assert metrics["final"] == "offline" and metrics["split"] == "val" and metrics["scored"]
    assert metrics["split_kind"] == split_kind(synth_root, "val")
    assert f"split val: {metrics['split_kind']}" in output
    assert metrics["settings"]["temporal"]["online_delay_frames"] == 5
    thresholds = metrics["settings"]["temporal"]["offline_threshold_per_video"]
    assert sorted(thresholds) == video_ids(synth_root)
    assert all(t >= metrics["settings"]["score_threshold"] for t in thresholds.values())
    for stage in STAGES:
        assert METRIC_KEYS <= set(metrics[stage]["overall"])
        assert sorted(metrics[stage]["per_video"]) == video_ids(synth_root)
    pngs = [out / "pr_curve.png", out / "st_iou_per_video.png"]
    pngs += [out / "timelines" / f"{v}.png" for v in video_ids(synth_root)]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    header = next(line for line in output.splitlines() if line.startswith("video"))
    assert re.search(r"ST-IoU raw +ST-IoU online +ST-IoU offline +mAP50 ", header), header
    for name in ("FP/bg frame", "FP/min", "small R"):
        assert name in header
    assert all(v in output for v in ["overall", *video_ids(synth_root)])


def test_raw_predictions_hold_every_scored_box_and_rerun_without_the_model(model_eval, synth_root, tmp_path):
    """eval --predictions raw_predictions.json --temporal offline gives the model's figures and final file."""
    out, _ = model_eval
    raw = load_detections(out / "raw_predictions.json")
    assert raw.scored
    assert max(len(dets) for video in raw.boxes.values() for dets in video.values()) > 1
    assert json.loads((out / "metrics.json").read_text())["raw_detections"] == sum(
        len(dets) for video in raw.boxes.values() for dets in video.values()
    )
    again = tmp_path / "offline.json"
    result = invoke(
        "eval", "--predictions", out / "raw_predictions.json", "--data", synth_root, "--split", "val",
        "--out", tmp_path / "rerun", "--conf", "0", "--temporal", "offline", "--save-predictions", again,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())
    rerun = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    for stage in STAGES:
        assert st_ious(rerun, stage) == pytest.approx(st_ious(model, stage), abs=1e-4), stage
    rerun_boxes, model_boxes = load_detections(again).boxes, load_detections(out / "predictions.json").boxes
    for vid, frames in model_boxes.items():
        assert sorted(rerun_boxes[vid]) == sorted(frames)
        for f, dets in frames.items():
            assert rerun_boxes[vid][f][0] == pytest.approx(dets[0], abs=0.01)
    # each video's offline threshold: the split of its frames' best scores, and every final box passes it
    thresholds = rerun["settings"]["temporal"]["offline_threshold_per_video"]
    config = TemporalConfig(score_threshold=0.0)
    for video in DroneDataset(synth_root, "val").videos:
        frames = raw.boxes[video.video_id]
        best = [frames[f][0][4] if frames.get(f) else 0.0 for f in video.frames]
        assert thresholds[video.video_id] == pytest.approx(video_threshold(best, config), abs=1e-6)
        assert all(d[0][4] >= thresholds[video.video_id] - 1e-6 for d in rerun_boxes[video.video_id].values())
    assert max(thresholds.values()) > 0.0  # the model's scores split over the --conf 0 operating point


def test_written_predictions_score_as_the_model_did(model_eval, synth_root, tmp_path):
    """The final prediction file holds exactly the boxes the offline ST-IoU was computed from."""
    out, _ = model_eval
    result = invoke(
        "eval", "--predictions", out / "predictions.json", "--data", synth_root, "--split", "val",
        "--out", tmp_path, "--conf", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = json.loads((out / "metrics.json").read_text())["offline"]
    scored = json.loads((tmp_path / "metrics.json").read_text())
    assert scored["final"] == "raw" and scored["scored"]
    for vid, m in model["per_video"].items():
        assert scored["raw"]["per_video"][vid]["st_iou"] == pytest.approx(m["st_iou"], abs=1e-4)
        assert scored["raw"]["per_video"][vid]["pred_frames"] == m["pred_frames"]


@pytest.mark.parametrize("split", ["val", "all"])
def test_ground_truth_as_predictions_scores_one_and_its_map_is_marked_unscored(synth_root, tmp_path, split):
    predictions = save_annotations(
        tmp_path / "gt_as_predictions.json",
        load_annotations(synth_root / "annotations" / "annotations.json"),
        key=DETECTIONS_KEY,
    )
    result = invoke(
        "eval", "--predictions", predictions, "--data", synth_root, "--split", split, "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    overall = metrics["raw"]["overall"]
    assert overall["gt_frames"] > 0 and not metrics["scored"]
    assert overall["st_iou"] == 1.0 and overall["recall"] == 1.0 and overall["map50"] == pytest.approx(1.0)
    assert "1.000*" in result.output and "has no scores: every box counts as 1.0" in result.output


def test_temporal_off_makes_raw_the_final_output(checkpoint, synth_root, tmp_path):
    result = invoke(
        "eval", "--weights", checkpoint, "--data", synth_root, "--split", "test", "--out", tmp_path,
        "--device", "cpu", "--temporal", "off", *LOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"] == "raw" and set(STAGES) <= set(metrics)
    final = load_detections(tmp_path / "predictions.json").boxes
    raw = load_detections(tmp_path / "raw_predictions.json").boxes
    assert final == {vid: {f: dets[:1] for f, dets in video.items()} for vid, video in raw.items()}


def perfect_dataset(root, frames=120):
    """One 320x180 video whose target (a 20x20 px square) moves right in frames 10-49 and 70-109."""
    sample = root / "samples" / "square_0"
    (sample / "frames").mkdir(parents=True)
    (sample / "object_images").mkdir()
    boxes = {
        f: (20.0 + 2 * (f % 60), 80.0, 40.0 + 2 * (f % 60), 100.0) for f in [*range(10, 50), *range(70, 110)]
    }
    for f in range(frames):
        image = np.full((180, 320, 3), 60, np.uint8)
        if f in boxes:
            x1, y1, x2, y2 = (int(v) for v in boxes[f])
            image[y1:y2, x1:x2] = (0, 0, 255)
        cv2.imwrite(str(sample / "frames" / f"{f:06d}.jpg"), image)
    cv2.imwrite(str(sample / "object_images" / "img_1.jpg"), np.full((32, 32, 3), (0, 0, 255), np.uint8))
    save_annotations(root / "annotations" / "annotations.json", {"square_0": boxes})
    return boxes


@pytest.mark.parametrize("stride", [1, 5])
def test_validator_scores_a_perfect_detector_one_in_every_stage_at_any_stride(tmp_path, stride):
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.evaluation.validator import Validator, ValidatorConfig

    boxes = perfect_dataset(tmp_path)
    validator = Validator(DroneDataset(tmp_path, cache_size=64), ValidatorConfig(frame_stride=stride))
    metrics = validator.score({"square_0": {f: [(*b, 0.8)] for f, b in boxes.items()}})
    for stage in STAGES:
        assert metrics[stage]["overall"]["st_iou"] == pytest.approx(1.0, abs=1e-9), stage


@pytest.mark.parametrize("stride", [1, 5])
def test_st_iou_per_video_is_what_score_gives_each_stage(tmp_path, stride):
    """The sweep's shortcut (ST-IoU alone) against the full metrics, on a detector that post-processing
    changes: it misses frames, jitters, and puts strong and weak boxes on background frames."""
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.evaluation.validator import Validator, ValidatorConfig

    boxes = perfect_dataset(tmp_path)
    rng = np.random.default_rng(0)
    raw = {f: [(*(np.array(b) + rng.normal(0, 2, 4)), 0.8)] for f, b in boxes.items() if rng.random() > 0.2}
    raw.update({f: [(200.0, 20.0, 220.0, 40.0, 0.9 if f % 7 else 0.3)] for f in range(50, 70)})
    validator = Validator(DroneDataset(tmp_path, cache_size=64), ValidatorConfig(frame_stride=stride))
    metrics = validator.score({"square_0": raw})
    figures = {stage: validator.st_iou_per_video({"square_0": raw}, stage)["square_0"] for stage in STAGES}
    assert figures == {stage: metrics[stage]["per_video"]["square_0"]["st_iou"] for stage in STAGES}
    assert figures["raw"] < figures["online"] - 0.05  # post-processing changes what is scored here


def test_a_box_in_the_letterbox_bars_is_dropped_in_validation(synth_root):
    """A 1280x720 frame letterboxed to 64 px has bars 14 px high; a confident box inside the top bar clips to
    zero height, which used to end validation (and training) with 'inverted or empty box'."""
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.evaluation.validator import Validator, ValidatorConfig

    torch.manual_seed(0)
    model = create_model(imgsz=64, support_size=64)
    model.head.register_forward_hook(box_in_the_bars)
    dataset = DroneDataset(synth_root, "val", cache_size=64)
    metrics, raw = Validator(dataset, ValidatorConfig(raw_conf=0.0, score_threshold=0.0))(model)
    assert all(len(dets) > 0 for video in raw.values() for dets in video.values())
    for video in raw.values():
        for dets in video.values():
            assert all(x2 > x1 and y2 > y1 for x1, y1, x2, y2, _ in dets)
    assert metrics["offline"]["overall"]["frames"] == dataset.num_frames


def box_in_the_bars(_module, _inputs, output):
    """Forward hook on the head: anchor 0 becomes a confident box inside the top letterbox bar."""
    output = dict(output)
    boxes, scores = output["boxes"].clone(), output["pred_scores"].clone()
    boxes[:, 0] = torch.tensor([10.0, 2.0, 30.0, 10.0])
    scores[:, 0] = 10.0
    output["boxes"], output["pred_scores"] = boxes, scores
    return output


BAD_FILES = {
    "not_json": lambda ids: "[{",
    "unknown_video": lambda ids: entries([*ids, "ghost_video"]),
    "missing_video": lambda ids: entries(ids[1:]),
    "missing_coordinate": lambda ids: entries(ids, {"frame": 1, "x1": 1, "y1": 1, "x2": 5}),
    "inverted_box": lambda ids: entries(ids, {"frame": 1, "x1": 9, "y1": 1, "x2": 5, "y2": 4}),
    "frame_past_the_end": lambda ids: entries(ids, {"frame": 4000, "x1": 1, "y1": 1, "x2": 5, "y2": 4}),
    "annotations_key": lambda ids: [{"video_id": v, "annotations": []} for v in ids],
    "score_out_of_range": lambda ids: entries(
        ids, {"frame": 1, "x1": 1, "y1": 1, "x2": 5, "y2": 4, "score": 7}
    ),
}


def entries(ids, box=None):
    bboxes = [] if box is None else [{"bboxes": [box]}]
    return [{"video_id": v, "detections": bboxes} for v in ids]


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


def test_help_shows_examples_on_synth_data_and_the_modes(synth_root):
    from refdet_edge import runtime
    from refdet_edge.evaluation import commands
    from refdet_edge.evaluation.temporal import TemporalConfig

    for command in ("eval", "predict"):
        result = invoke(command, "--help")
        text = " ".join(result.output.split())
        assert result.exit_code == 0 and "Examples" in text and f"refdet {command} " in text
        assert "DESIGN" not in result.output
        assert f"online: each frame's box is final {TemporalConfig().delay} frames later" in text
        assert "offline: the whole video is known" in text
    used = set(re.findall(r"demo_data/samples/([\w.-]+)/", commands.PREDICT_EPILOG))
    assert used and used <= set(video_ids(synth_root))  # `refdet data synth` makes these videos
    assert commands.BACKENDS == runtime.BACKENDS


def epilog_commands(epilog):
    """The example command lines of a --help epilog, continuation lines joined, split into words."""
    text = epilog.replace("\\\n", " ")
    return [line.split()[1:] for line in text.splitlines() if line.strip().startswith("refdet ")]


@pytest.mark.slow
def test_help_examples_run_on_synth_data(checkpoint, synth_root, tmp_path):
    """Every example of `refdet predict --help` and `refdet eval --help` that needs no export runs, in that
    order, on `refdet data synth` output with a trained model's place taken by a random one."""
    from refdet_edge.evaluation import commands

    ran = 0
    for args in [*epilog_commands(commands.PREDICT_EPILOG), *epilog_commands(commands.EVAL_EPILOG)]:
        if "--model" in args:
            continue  # an export folder of `refdet export`
        args = [
            str(checkpoint) if a == "runs/demo/stage3/best.pt"
            else a.replace("demo_data", str(synth_root)).replace("runs/", f"{tmp_path}/runs/")
            for a in args
        ]  # fmt: skip
        extra = ["--device", "cpu"] if "--weights" in args else []
        result = invoke(*args, *extra)
        assert result.exit_code == 0, (args, result.output)
        ran += 1
    assert ran == 6


def test_a_split_without_videos_is_named(tmp_path):
    perfect_dataset(tmp_path)
    (tmp_path / "splits.json").write_text(json.dumps({"train": [{"video_id": "square_0"}]}))
    predictions = save_annotations(tmp_path / "p.json", {"square_0": {}}, key=DETECTIONS_KEY)
    result = invoke(
        "eval", "--predictions", predictions, "--data", tmp_path, "--split", "val", "--out", tmp_path
    )
    assert result.exit_code == 1 and "splits.json: field 'val': the split holds no video" in result.output
