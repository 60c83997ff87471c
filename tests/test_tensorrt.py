"""TensorRT: engines built from the exported graphs and the trt runtime backend, on a CUDA GPU with TensorRT;
without them, the clear error path of `refdet export --trt` and of the runtime."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from refdet_edge import runtime
from refdet_edge.cli import cli
from refdet_edge.export.calibration import calibration_frames
from refdet_edge.export.metadata import ExportError, read_metadata
from refdet_edge.export.onnx_export import DETECTOR_FILE, SUPPORT_FILE
from refdet_edge.export.tensorrt import profile_shapes
from refdet_edge.models import atomic_save, checkpoint_payload, create_model

IMGSZ, SUPPORT = 64, 64
HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package and a CUDA GPU")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    atomic_save(checkpoint_payload(create_model(imgsz=IMGSZ, support_size=SUPPORT)), path)
    return path


def write_dataset(root, videos=2, frames=3, seed=0):
    """A dataset in the DESIGN.md layout with decoded frames: samples/<id>/{frames,object_images}."""
    rng = np.random.default_rng(seed)
    for v in range(videos):
        sample = root / "samples" / f"video_{v}"
        (sample / "frames").mkdir(parents=True)
        (sample / "object_images").mkdir()
        for f in range(frames):
            cv2.imwrite(
                str(sample / "frames" / f"{f:06d}.jpg"), rng.integers(0, 256, (72, 128, 3), dtype=np.uint8)
            )
        for r in range(3):
            cv2.imwrite(
                str(sample / "object_images" / f"img_{r + 1}.jpg"),
                rng.integers(0, 256, (40, 30, 3), np.uint8),
            )
    return root


@pytest.mark.skipif(HAS_TRT, reason="tests the path without TensorRT or without a CUDA GPU")
def test_export_trt_without_tensorrt_writes_onnx_and_fails_with_the_install_hint(checkpoint, tmp_path):
    result = CliRunner().invoke(
        cli, ["export", "--weights", str(checkpoint), "--out", str(tmp_path), "--trt"]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "refdet-edge[trt]" in result.output and "target device" in result.output
    assert (tmp_path / SUPPORT_FILE).is_file() and (tmp_path / DETECTOR_FILE).is_file()
    metadata = read_metadata(tmp_path)
    assert metadata["parity"]["passed"] and "engines" not in metadata
    with pytest.raises((ValueError, ExportError), match="CUDA|engines"):
        runtime.load(tmp_path, "trt")


def test_profile_shapes_give_each_dynamic_axis_its_range():
    graph = {
        "inputs": [
            {"name": "images", "shape": ["batch", 3, 64, 64]},
            {"name": "prototypes_p3", "shape": ["targets", 5, 64]},
        ]
    }
    shapes = profile_shapes(graph, {"batch": [1, 2, 8], "targets": [1, 1, 3]})
    assert shapes["images"] == ((1, 3, 64, 64), (2, 3, 64, 64), (8, 3, 64, 64))
    assert shapes["prototypes_p3"] == ((1, 5, 64), (1, 5, 64), (3, 5, 64))


def test_calibration_frames_spread_over_videos_with_their_references(tmp_path):
    root = write_dataset(tmp_path / "data", videos=2, frames=5)
    picks = calibration_frames(root, 4)
    assert len(picks) == 4
    assert {p.frame.parent.parent.name for p in picks} == {"video_0", "video_1"}
    for p in picks:
        assert p.references[0].parent == p.frame.parent.parent / "object_images" and len(p.references) == 3
    assert len(calibration_frames(root, 100)) == 10


def test_calibration_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ExportError, match="samples: no such folder"):
        calibration_frames(tmp_path, 8)
    root = write_dataset(tmp_path / "data", videos=1)
    for ref in (root / "samples" / "video_0" / "object_images").iterdir():
        ref.unlink()
    with pytest.raises(ExportError, match="object_images: no reference image"):
        calibration_frames(root, 8)


@pytest.fixture(scope="module")
def engines(checkpoint, tmp_path_factory):
    """FP16 engines built by the CLI from a fresh export, on the GPU."""
    out = tmp_path_factory.mktemp("trt")
    result = CliRunner().invoke(
        cli, ["export", "--weights", str(checkpoint), "--out", str(out), "--trt", "--targets-max", "3"]
    )
    assert result.exit_code == 0, result.output
    return out


def images(count, seed, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


@needs_trt
def test_fp16_engines_match_onnx_runtime(engines):
    metadata = read_metadata(engines)
    assert metadata["engines"]["detector"]["precision"] == "fp16"
    assert metadata["engines"]["profiles"]["targets"] == [1, 1, 3]
    trt_rt, onnx_rt = runtime.load(engines, "trt"), runtime.load(engines, "onnx")
    frames = images(2, 20, (90, 160))
    for n in (1, 3):
        refs = [images(3, 30 + t) for t in range(n)]
        trt_rt.set_references(refs)
        onnx_rt.set_references(refs)
        for a, b in zip(trt_rt.prototypes, onnx_rt.prototypes, strict=True):
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
        batch, _ = onnx_rt.preprocess(frames)
        boxes_t, scores_t = trt_rt.infer(batch)
        boxes_o, scores_o = onnx_rt.infer(batch)
        assert scores_t.shape == scores_o.shape == (2, 84, n)
        assert (scores_t.cpu() - scores_o).abs().max() < 1e-2
        assert (boxes_t.cpu() - boxes_o).abs().max() < 1.0


@needs_trt
def test_trt_runtime_enforces_the_engine_profile(engines):
    trt_rt = runtime.load(engines, "trt")
    assert (trt_rt.max_batch, trt_rt.max_targets, trt_rt.max_refs) == (4, 3, 5)
    with pytest.raises(ValueError, match="at most 3"):
        trt_rt.set_references([images(1, t) for t in range(4)])
    trt_rt.set_references(images(3, 1))
    assert len(trt_rt(images(6, 2, (90, 160)))) == 6  # above max_batch: run in chunks


@needs_trt
def test_int8_engine_calibrates_on_real_frames(engines, tmp_path):
    data = write_dataset(tmp_path / "data", videos=2, frames=4)
    result = CliRunner().invoke(
        cli, ["export", "--no-onnx", "--out", str(engines), "--trt", "--int8", "--calib-data", str(data)]
    )
    assert result.exit_code == 0, result.output
    metadata = read_metadata(engines)
    assert metadata["engines"]["detector"]["precision"] == "int8"
    assert metadata["engines"]["support_encoder"]["precision"] == "fp16"
    assert metadata["engines"]["calibration_frames"] == 8
    assert (engines / "detector.int8.cache").is_file()
    trt_rt = runtime.load(engines, "trt", conf=0.0)
    trt_rt.set_references(images(3, 1))
    detections = trt_rt(images(2, 3, (90, 160)))
    assert len(detections) == 2 and all(torch.isfinite(d.scores).all() for d in detections)
