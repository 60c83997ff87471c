"""``refdet predict``: one video (mp4 or frames folder), a whole dataset, the temporal modes, videos whose
header miscounts their frames, boxes in the letterbox bars, saying why nothing was found, every bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.annotations import ANNOTATIONS_KEY, DETECTIONS_KEY, load_annotations, save_annotations
from refdet_edge.models import atomic_save, checkpoint_payload, create_model

FRAMES, SIZE = 12, (160, 96)  # frames of the test clip, (width, height)
LOW_CONF = ["--conf", "0"]  # a random model scores far below any real threshold: 0 keeps its best boxes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("predict_ckpt") / "tiny.pt"
    atomic_save(checkpoint_payload(create_model(imgsz=64, support_size=64)), path)
    return path


def frame(i):
    image = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
    cv2.rectangle(image, (20 + 5 * i, 30), (44 + 5 * i, 54), (0, 0, 255), -1)
    return image  # BGR


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A short mp4 of a red square moving right, its frames as a folder, and two reference photos."""
    root = tmp_path_factory.mktemp("clip")
    writer = cv2.VideoWriter(str(root / "flight.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE)
    (root / "frames_clip").mkdir()
    for i in range(FRAMES):
        writer.write(frame(i))
        cv2.imwrite(str(root / "frames_clip" / f"{i:06d}.jpg"), frame(i))
    writer.release()
    refs = []
    for i in (0, 6):
        refs.append(root / f"ref_{i}.jpg")
        cv2.imwrite(str(refs[-1]), frame(i)[24:60, 14 + 5 * i : 50 + 5 * i])
    return root / "flight.mp4", root / "frames_clip", refs


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ref_args(refs):
    return [a for r in refs for a in ("--refs", r)]


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def count_frames(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_predict_video_writes_predictions_csv_and_annotated_video(checkpoint, clip, tmp_path):
    video, _, refs = clip
    result = invoke(
        "predict",
        "--weights",
        checkpoint,
        *ref_args(refs),
        "--video",
        video,
        "--out",
        tmp_path,
        "--device",
        "cpu",
        *LOW_CONF,
    )
    assert result.exit_code == 0, result.output
    boxes = load_annotations(tmp_path / "predictions.json", key=DETECTIONS_KEY)
    assert list(boxes) == ["flight"] and boxes["flight"], "the low threshold should give boxes"
    rows = read_csv(tmp_path / "flight.csv")
    assert list(rows[0]) == ["frame", "x1", "y1", "x2", "y2", "score"]
    assert {int(r["frame"]): tuple(float(r[c]) for c in ("x1", "y1", "x2", "y2")) for r in rows} == boxes[
        "flight"
    ]
    assert count_frames(tmp_path / "flight.mp4") == FRAMES
    assert "frame/s" in result.output  # the progress bar


def test_predict_frames_folder_without_temporal_boxes_every_frame(checkpoint, clip, tmp_path):
    _, folder, refs = clip
    result = invoke(
        "predict", "--weights", checkpoint, "--refs", refs[0], "--video", folder, "--out", tmp_path,
        "--device", "cpu", "--temporal", "off", "--no-save-video", *LOW_CONF,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    boxes = load_annotations(tmp_path / "predictions.json", key=DETECTIONS_KEY)["frames_clip"]
    assert sorted(boxes) == list(range(FRAMES))  # without hysteresis every frame keeps its best detection
    assert len(read_csv(tmp_path / "frames_clip.csv")) == FRAMES
    assert not (tmp_path / "frames_clip.mp4").exists()


def test_dataset_predictions_score_one_against_themselves(checkpoint, synth_root, tmp_path):
    out = tmp_path / "pred"
    result = invoke(
        "predict", "--weights", checkpoint, "--data", synth_root, "--split", "val", "--out", out,
        "--device", "cpu", "--no-save-video", *LOW_CONF,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    predictions = load_annotations(out / "predictions.json", key=DETECTIONS_KEY)
    assert sorted(predictions) == sorted(load_annotations(synth_root / "annotations" / "annotations.json"))
    assert sum(len(b) for b in predictions.values()) > 0
    # a dataset whose ground truth is that prediction file
    twin = tmp_path / "twin"
    (twin / "samples").mkdir(parents=True)
    for sample in (synth_root / "samples").iterdir():
        (twin / "samples" / sample.name).symlink_to(sample, target_is_directory=True)
    shutil.copy(synth_root / "splits.json", twin / "splits.json")
    (synth_root / ".cache").mkdir(exist_ok=True)
    (twin / ".cache").symlink_to(synth_root / ".cache", target_is_directory=True)  # same frames, same cache
    save_annotations(twin / "annotations" / "annotations.json", predictions, key=ANNOTATIONS_KEY)
    result = invoke(
        "eval", "--predictions", out / "predictions.json", "--data", twin, "--split", "val", "--out", tmp_path,
        "--conf", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "metrics.json").read_text())["raw"]
    assert scored["overall"]["st_iou"] == 1.0
    assert all(v["st_iou"] == 1.0 for v in scored["per_video"].values())


def test_offline_boxes_are_drawn_after_a_second_pass(checkpoint, clip, tmp_path):
    video, _, refs = clip
    result = invoke(
        "predict", "--weights", checkpoint, *ref_args(refs), "--video", video, "--device", "cpu",
        "--temporal", "offline", "--out", tmp_path, *LOW_CONF,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "flight.csv")
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))  # a track through the whole clip
    assert count_frames(tmp_path / "flight.mp4") == FRAMES


def test_predict_that_finds_nothing_says_why(checkpoint, clip, tmp_path):
    video, _, refs = clip
    base = [
        "predict",
        "--weights",
        checkpoint,
        *ref_args(refs),
        "--video",
        video,
        "--device",
        "cpu",
        "--no-save-video",
    ]
    result = invoke(*base, "--out", tmp_path / "default")
    assert result.exit_code == 0, result.output
    assert "flight: 0 detections; no score reached 0.01 (--conf 0.25)" in result.output
    result = invoke(*base, "--temporal", "off", "--out", tmp_path / "all", *LOW_CONF)
    best = max(float(r["score"]) for r in read_csv(tmp_path / "all" / "flight.csv"))
    conf = f"{1.3 * best:.3g}"  # over the best score, while 0.6 x conf (the raw cut) stays under it
    result = invoke(*base, "--temporal", "off", "--out", tmp_path / "above", "--conf", conf)
    assert result.exit_code == 0, result.output
    found = re.search(r"flight: 0 detections; highest score (\S+) < --conf (\S+)", result.output)
    assert found, result.output
    assert float(found[1]) == pytest.approx(best, rel=0.01) and found[2] == f"{float(conf):g}"


def mp4_with_frame_count(path, frames, header_count):
    """An mp4 of ``frames`` frames whose header (the stts sample count) claims ``header_count``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE)
    for i in range(frames):
        writer.write(frame(i))
    writer.release()
    data = bytearray(path.read_bytes())
    stts = data.index(b"stts")
    assert struct.unpack(">II", data[stts + 4 : stts + 12]) == (0, 1)  # version/flags, one entry
    assert struct.unpack(">I", data[stts + 12 : stts + 16])[0] == frames
    data[stts + 12 : stts + 16] = struct.pack(">I", header_count)
    path.write_bytes(bytes(data))
    capture = cv2.VideoCapture(str(path))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == header_count  # OpenCV believes the header
    capture.release()
    return path


@pytest.mark.parametrize("header_count", [FRAMES + 5, FRAMES - 5])
def test_a_video_whose_header_miscounts_its_frames_is_read_to_its_real_end(
    checkpoint, clip, tmp_path, header_count
):
    from refdet_edge.data.video import VideoFileFrames

    _, _, refs = clip
    video = mp4_with_frame_count(tmp_path / "miscounted.mp4", FRAMES, header_count)
    source = VideoFileFrames(video, "miscounted")
    assert source.num_frames == header_count
    assert [i for i, f in source.iter_frames() if f is not None] == list(range(FRAMES))
    assert source.num_frames == FRAMES
    result = invoke(
        "predict", "--weights", checkpoint, *ref_args(refs), "--video", video, "--out", tmp_path / "out",
        "--device", "cpu", "--temporal", "off", *LOW_CONF,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [int(r["frame"]) for r in read_csv(tmp_path / "out" / "miscounted.csv")] == list(range(FRAMES))
    assert count_frames(tmp_path / "out" / "miscounted.mp4") == FRAMES


def test_a_box_in_the_letterbox_bars_is_dropped_when_predicting(clip):
    """The 160x96 clip letterboxed to 64 px has bars 13 px high; a confident box inside the top bar clips to
    zero height, which used to end predict with 'inverted or empty box'."""
    from refdet_edge import runtime
    from refdet_edge.data.video import VideoFileFrames
    from refdet_edge.evaluation.predict import predict_stream
    from refdet_edge.evaluation.temporal import TemporalConfig, apply_temporal
    from refdet_edge.postprocess import postprocess
    from refdet_edge.preprocess import letterbox_info

    info = letterbox_info((SIZE[1], SIZE[0]), 64)
    assert info.pad[1] == 13
    boxes = torch.tensor([[[10.0, 2.0, 30.0, 10.0], [10.0, 20.0, 30.0, 40.0]]])
    (dets,) = postprocess(boxes, torch.tensor([[[0.99], [0.5]]]), [info], conf=0.1)
    assert dets.scores.tolist() == [0.5]  # the box in the bar is gone, the other kept

    torch.manual_seed(0)
    model = create_model(imgsz=64, support_size=64)

    def box_in_the_bars(_module, _inputs, output):
        output = dict(output)
        output["boxes"], output["pred_scores"] = output["boxes"].clone(), output["pred_scores"].clone()
        output["boxes"][:, 0] = torch.tensor([10.0, 2.0, 30.0, 10.0])
        output["pred_scores"][:, 0] = 10.0
        return output

    model.head.register_forward_hook(box_in_the_bars)
    video, _, refs = clip
    rt = runtime.load(model, "torch", device="cpu", conf=0.0, max_det=10)
    rt.set_references([cv2.cvtColor(cv2.imread(str(r)), cv2.COLOR_BGR2RGB) for r in refs])
    config = TemporalConfig(score_threshold=0.0)
    for mode in ("online", "offline", "off"):
        result = predict_stream(rt, VideoFileFrames(video, "flight").iter_frames(), config, mode=mode)
        assert len(result.raw) == FRAMES and all(result.raw.values())
        assert all(y2 > y1 for dets in result.raw.values() for _, y1, _, y2, _ in dets)
        assert result.boxes  # the streaming form gives what the batch form gives on the same detections
        assert result.boxes == apply_temporal(result.raw, mode, config, SIZE, frames=range(FRAMES))


def test_bad_inputs_name_the_file(checkpoint, clip, tmp_path):
    video, folder, refs = clip
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"not a jpeg")
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"not an mp4")
    empty_folder = tmp_path / "empty_frames"
    empty_folder.mkdir()
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    cases = [
        (tmp_path / "missing.pt", ["--weights", tmp_path / "missing.pt", *ref_args(refs), "--video", video]),
        (not_a_checkpoint, ["--weights", not_a_checkpoint, *ref_args(refs), "--video", video]),
        (broken_image, ["--weights", checkpoint, "--refs", broken_image, "--video", video]),
        (tmp_path / "gone.jpg", ["--weights", checkpoint, "--refs", tmp_path / "gone.jpg", "--video", video]),
        (broken_video, ["--weights", checkpoint, *ref_args(refs), "--video", broken_video]),
        (tmp_path / "gone.mp4", ["--weights", checkpoint, *ref_args(refs), "--video", tmp_path / "gone.mp4"]),
        (empty_folder, ["--weights", checkpoint, *ref_args(refs), "--video", empty_folder]),
        (tmp_path, ["--backend", "onnx", "--model", tmp_path, *ref_args(refs), "--video", video]),
    ]
    for named, args in cases:
        result = invoke("predict", *args, "--out", tmp_path / "out", "--device", "cpu")
        assert result.exit_code != 0, args
        assert str(named) in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--video", "v.mp4"],  # no references
        ["--data", "d", "--refs", "r.jpg"],  # a dataset brings its own references
        ["--backend", "onnx", "--data", "d"],  # onnx needs --model
        [],  # neither --video nor --data
    ],
)
def test_inconsistent_options_are_usage_errors(tmp_path, args):
    result = invoke("predict", "--weights", tmp_path / "w.pt", *args, "--out", tmp_path)
    assert result.exit_code == 2
