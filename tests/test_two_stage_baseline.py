"""The two-stage reference baseline of benchmarks/two_stage_baseline.py, with random weights on a tiny dataset
(and with the pretrained weights of ../shared on a real frame when present)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import load_benchmark

from refdet_edge.evaluation.metrics import load_predictions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
YOLO_COCO = SHARED / "weights" / "yolov8n-coco.pt"
MOBILENET = SHARED / "weights" / "mobilenetv2_100-imagenet.safetensors"
BOAT = SHARED / "data" / "sot" / "boat1"


tsb = load_benchmark("two_stage_baseline")


def _reference() -> np.ndarray:
    """A 40x48 two-colour sign with a white bar: nothing like the noise it is pasted into."""
    ref = np.zeros((40, 48, 3), np.uint8)
    ref[:20], ref[20:] = (220, 30, 30), (30, 30, 220)
    ref[:, 20:28] = 255
    return ref


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """Two videos of 6 noise frames (96x128) with the reference pasted into frames 2-4; video a is val, b test."""
    root = tmp_path_factory.mktemp("baseline") / "data"
    rng = np.random.default_rng(0)
    annotations = []
    for video_id in ("a", "b"):
        ref = _reference()
        _write(root / "samples" / video_id / "object_images" / "img_1.jpg", ref)
        boxes = []
        for index in range(6):
            frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            if 2 <= index <= 4:
                x, y = 10 + 12 * index, 20
                frame[y : y + 40, x : x + 48] = ref
                boxes.append({"frame": index, "x1": x, "y1": y, "x2": x + 48, "y2": y + 40})
            _write(root / "samples" / video_id / "frames" / f"{index:06d}.jpg", frame)
        annotations.append({"video_id": video_id, "annotations": [{"bboxes": boxes}]})
    (root / "annotations").mkdir()
    (root / "annotations" / "annotations.json").write_text(json.dumps(annotations))
    (root / "splits.json").write_text(
        json.dumps({"train": [], "val": [{"video_id": "a"}], "test": [{"video_id": "b"}]})
    )
    return root


@pytest.fixture(scope="module")
def random_embedder():
    torch.manual_seed(0)
    return tsb.build_embedder(None, size=64)


def test_identical_images_embed_to_cosine_one(random_embedder):
    ref = _reference()
    emb = random_embedder([ref, ref.copy(), ref[::-1]])
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float(emb[0] @ emb[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(emb[0] @ emb[2]) < 0.9999


def test_the_box_on_the_reference_outscores_an_unrelated_box(random_embedder):
    ref = _reference()
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    frame[30:70, 70:118] = ref
    boxes = [np.array([[5, 5, 53, 45, 0.5], [70, 30, 118, 70, 0.5]])]
    exact = tsb.box_cosines(random_embedder, [frame], boxes, random_embedder([ref])[0], context=0.0)[0]
    assert exact[1] == pytest.approx(1.0, abs=1e-5)
    assert exact[0] < exact[1] - 1e-3
    target = tsb.reference_embedding(random_embedder, [ref])
    cos = tsb.box_cosines(random_embedder, [frame], boxes, target, context=0.25)[0]
    candidates = np.concatenate([boxes[0], cos[:, None]], axis=1)
    for alpha in (0.0, 0.5):
        ranked = tsb.scored_boxes({0: candidates}, alpha)[0]
        assert ranked[0][:4] == (70, 30, 118, 70) and ranked[0][4] > ranked[1][4]


def test_combine_spans_cosine_alone_to_detector_alone():
    cands = np.array([[0, 0, 10, 10, 0.9, 0.2], [0, 0, 10, 10, 0.1, 0.8], [0, 0, 10, 10, 0.5, -0.3]])
    np.testing.assert_allclose(tsb.combine(cands, 0.0), [0.2, 0.8, 0.0])
    np.testing.assert_allclose(tsb.combine(cands, 1.0), [0.9, 0.1, 0.5])
    np.testing.assert_allclose(tsb.combine(cands, 0.5), np.sqrt([0.18, 0.08, 0.0]))


def test_crop_grows_by_context_and_stays_inside():
    image = np.zeros((50, 80, 3), np.uint8)
    assert tsb.crop(image, (20, 10, 40, 30), 0.25).shape[:2] == (30, 30)
    assert tsb.crop(image, (70, 40, 80, 50), 1.0).shape[:2] == (20, 20)
    assert tsb.crop(image, (79.6, 49.6, 79.9, 49.9), 0.0).shape[:2] == (2, 2)


def _random_weights(tmp_path: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "mobilenet_random.safetensors"
    save_file(timm.create_model(tsb.EMBED_MODEL, pad_type="same").state_dict(), str(path))
    return path


def test_cli_chooses_on_val_and_reuses_the_choice_on_test(tiny_root, tmp_path):
    embed = _random_weights(tmp_path)
    common = ["--data", str(tiny_root), "--yolo-weights", "yolov8n.yaml", "--embed-weights", str(embed)]
    common += ["--imgsz", "64", "--embed-size", "32", "--conf", "0", "--topk", "3"]
    runner = CliRunner()
    val_out = tmp_path / "raw_val.json"
    result = runner.invoke(tsb.main, [*common, "--split", "val", "--out", str(val_out)])
    assert result.exit_code == 0, result.output
    selection = json.loads((tmp_path / "raw_val.selection.json").read_text())
    assert selection["split"] == "val" and selection["chosen"]["alpha"] in tsb.ALPHAS
    assert [row["alpha"] for row in selection["alphas"]] == list(tsb.ALPHAS)
    assert all(0.0 <= row["st_iou"] <= 1.0 for row in selection["alphas"])
    assert selection["chosen"]["st_iou"] == max(row["st_iou"] for row in selection["alphas"])
    entries = json.loads(val_out.read_text())
    assert [e["video_id"] for e in entries] == ["a"]
    boxes = [b for interval in entries[0]["detections"] for b in interval["bboxes"]]
    assert {b["frame"] for b in boxes} == set(range(6))
    assert all(0.0 <= b["score"] <= 1.0 and 0 <= b["x1"] < b["x2"] <= 128 for b in boxes)
    read = load_predictions(val_out, ["a"])
    assert read.scored and all(1 <= len(dets) <= 3 for dets in read.boxes["a"].values())

    test_out = tmp_path / "raw_test.json"
    refused = runner.invoke(tsb.main, [*common, "--split", "test", "--out", str(test_out)])
    assert refused.exit_code != 0 and "chosen on val only" in refused.output
    selection_file = str(tmp_path / "raw_val.selection.json")
    result = runner.invoke(
        tsb.main, [*common, "--split", "test", "--out", str(test_out), "--selection", selection_file]
    )
    assert result.exit_code == 0, result.output
    assert [e["video_id"] for e in json.loads(test_out.read_text())] == ["b"]
    assert not (tmp_path / "raw_test.selection.json").exists()


def test_missing_weights_fail_in_one_line(tiny_root, tmp_path):
    result = CliRunner().invoke(
        tsb.main,
        [
            "--data",
            str(tiny_root),
            "--out",
            str(tmp_path / "x.json"),
            "--embed-weights",
            str(tmp_path / "no.pt"),
        ],
    )
    assert result.exit_code == 1
    assert "no.pt: no such weights file" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(
    not (YOLO_COCO.is_file() and MOBILENET.is_file() and BOAT.is_dir()), reason="no ../shared"
)
def test_pretrained_models_find_and_recognise_the_boat():
    rows = np.loadtxt(BOAT / "groundtruth_rect.txt", delimiter=",", max_rows=40)
    boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:]], axis=1)
    ref_frame = cv2.cvtColor(cv2.imread(str(BOAT / "img" / "000001.jpg")), cv2.COLOR_BGR2RGB)
    frame = cv2.cvtColor(cv2.imread(str(BOAT / "img" / "000040.jpg")), cv2.COLOR_BGR2RGB)
    detect = tsb.yolo_detector(YOLO_COCO, imgsz=640, conf=0.02, topk=10)
    proposals = detect([frame])[0]
    gt = boxes[39]
    ix = np.clip(np.minimum(proposals[:, 2], gt[2]) - np.maximum(proposals[:, 0], gt[0]), 0, None)
    iy = np.clip(np.minimum(proposals[:, 3], gt[3]) - np.maximum(proposals[:, 1], gt[1]), 0, None)
    area = (proposals[:, 2] - proposals[:, 0]) * (proposals[:, 3] - proposals[:, 1])
    iou = ix * iy / (area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - ix * iy)
    assert iou.max() > 0.5
    embedder = tsb.build_embedder(MOBILENET)
    target = tsb.reference_embedding(embedder, [tsb.crop(ref_frame, boxes[0], 0.5)])
    w, h = gt[2] - gt[0], gt[3] - gt[1]
    elsewhere = np.array([[0, 0, w, h, 0.5], [1280 - w, 0, 1280, h, 0.5]])
    cos = tsb.box_cosines(embedder, [frame], [np.vstack([[*gt, 0.5], elsewhere])], target, 0.25)[0]
    assert cos[0] > cos[1:].max()
