"""The runtime API: one interface over PyTorch and ONNX Runtime (TensorRT: tests/test_tensorrt.py)."""

from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch

from refdet_edge import runtime
from refdet_edge.export.metadata import ExportError, build_metadata, read_metadata, write_metadata
from refdet_edge.export.onnx_export import EXPORTER, export_onnx
from refdet_edge.export.profiles import profiles_for
from refdet_edge.models import WeightsError, atomic_save, checkpoint_payload, create_model
from refdet_edge.postprocess import postprocess

IMGSZ, SUPPORT = 64, 64


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A small random checkpoint and its export (graphs and metadata; parity is tested in test_export)."""
    torch.manual_seed(0)
    model = create_model(imgsz=IMGSZ, support_size=SUPPORT).eval()
    root = tmp_path_factory.mktemp("runtime")
    atomic_save(checkpoint_payload(model), root / "small.pt")
    files = export_onnx(model, root / "export", IMGSZ)
    write_metadata(
        root / "export",
        build_metadata(model, root / "export", files, IMGSZ, 17, EXPORTER, profiles_for(4, 4, 5)),
    )
    return root / "small.pt", root / "export"


@pytest.fixture(scope="module")
def backends(model_files):
    checkpoint, export_dir = model_files
    return runtime.load(checkpoint, "torch", device="cpu"), runtime.load(export_dir, "onnx")


def images(count, seed, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def frames():
    return images(1, 10, (90, 160)) + images(1, 11, (120, 70)) + images(1, 12, (64, 64))


def test_onnx_and_torch_agree_on_prototypes_and_raw_outputs(backends):
    refs = [images(3, 1), images(3, 2), images(3, 3)]
    for rt in backends:
        rt.set_references(refs)
        assert rt.num_targets == 3
    torch_rt, onnx_rt = backends
    for a, b in zip(torch_rt.prototypes, onnx_rt.prototypes, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    batch, infos = torch_rt.preprocess(frames())
    assert batch.shape == (3, 3, IMGSZ, IMGSZ) and [i.orig_shape for i in infos] == [
        (90, 160),
        (120, 70),
        (64, 64),
    ]
    (boxes_t, scores_t), (boxes_o, scores_o) = torch_rt.infer(batch), onnx_rt.infer(batch)
    assert scores_t.shape == (3, 84, 3) and boxes_t.shape == (3, 84, 4)
    torch.testing.assert_close(scores_o, scores_t, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes_o, boxes_t, atol=1e-3, rtol=0)


def test_call_is_preprocess_infer_postprocess_in_original_pixels(backends):
    for rt in backends:
        rt.set_references([images(3, 1), images(2, 4)])
        batch, infos = rt.preprocess(frames())
        boxes, scores = rt.infer(batch)
        top = scores.flatten().topk(50).values  # a random model: cut its best candidates at their widest gap
        cut = int((top[:-1] - top[1:]).argmax())
        rt.conf, rt.max_det = float(top[cut] + top[cut + 1]) / 2, 5
        expected = postprocess(boxes, scores, infos, rt.conf, rt.iou, rt.max_det)
        got = rt(frames())
        assert len(got) == 3 and sum(len(d) for d in got) > 0
        for g, e, frame in zip(got, expected, frames(), strict=True):
            torch.testing.assert_close(g.boxes, e.boxes)
            torch.testing.assert_close(g.scores, e.scores)
            assert torch.equal(g.labels, e.labels) and len(g) <= 5
            h, w = frame.shape[:2]
            assert (
                (g.boxes[:, [0, 2]] <= w).all() and (g.boxes[:, [1, 3]] <= h).all() and (g.boxes >= 0).all()
            )
        rt.conf, rt.max_det = 0.25, 100


def test_references_from_paths_equal_references_from_arrays(backends, tmp_path):
    onnx_rt = backends[1]
    refs = images(3, 5)
    paths = []
    for i, image in enumerate(refs):
        paths.append(tmp_path / f"img_{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    onnx_rt.set_references(paths)
    from_paths = onnx_rt.prototypes
    onnx_rt.set_references(refs)
    assert onnx_rt.num_targets == 1
    for a, b in zip(from_paths, onnx_rt.prototypes, strict=True):
        torch.testing.assert_close(a, b)


def test_targets_with_different_reference_counts_are_encoded_each_alone(backends):
    onnx_rt = backends[1]
    a, b = images(3, 6), images(1, 7)
    onnx_rt.set_references([a, b])
    mixed = onnx_rt.prototypes
    onnx_rt.set_references(a)
    first = onnx_rt.prototypes
    onnx_rt.set_references([b])
    second = onnx_rt.prototypes
    for level, p1, p2 in zip(mixed, first, second, strict=True):
        assert level.shape[0] == 2
        torch.testing.assert_close(level, torch.cat([p1, p2]), atol=1e-5, rtol=0)


def test_other_references_give_other_scores(backends):
    onnx_rt = backends[1]
    batch, _ = onnx_rt.preprocess(frames())
    onnx_rt.set_references(images(3, 8))
    first = onnx_rt.infer(batch)[1]
    onnx_rt.set_references(images(3, 9))
    second = onnx_rt.infer(batch)[1]
    assert (torch.logit(second) - torch.logit(first)).abs().max() > 1e-3  # a random model's scores are tiny


def test_batches_above_max_batch_run_in_chunks(backends):
    onnx_rt = backends[1]
    onnx_rt.set_references(images(2, 1))
    batch, _ = onnx_rt.preprocess(frames())
    whole = onnx_rt.infer(batch)
    onnx_rt.max_batch = 2
    try:
        chunked = onnx_rt.infer(batch)
    finally:
        onnx_rt.max_batch = None
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_misuse_raises_clear_errors(backends, model_files, tmp_path):
    checkpoint, export_dir = model_files
    onnx_rt = backends[1]
    onnx_rt.clear_references()
    with pytest.raises(RuntimeError, match="set_references"):
        onnx_rt(frames())
    with pytest.raises(ValueError, match="list of images"):
        onnx_rt.set_references([])
    with pytest.raises(ValueError, match="RGB uint8"):
        onnx_rt.set_references([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="backend must be one of"):
        runtime.load(export_dir, "tflite")
    with pytest.raises(ExportError, match="metadata.json: no such file"):
        runtime.load(tmp_path, "onnx")
    with pytest.raises(ExportError, match="field 'imgsz'"):
        runtime.load(export_dir, "onnx", imgsz=128)
    with pytest.raises(ExportError, match="checkpoint file"):
        runtime.load(export_dir, "torch")
    with pytest.raises(WeightsError, match="no such checkpoint"):
        runtime.load(tmp_path / "missing.pt", "torch")


def test_limits_of_a_runtime_are_enforced(backends):
    onnx_rt = backends[1]
    onnx_rt.max_targets, onnx_rt.max_refs = 2, 2
    try:
        with pytest.raises(ValueError, match="at most 2"):
            onnx_rt.set_references([images(1, 1)] * 3)
        with pytest.raises(ValueError, match="at most 2"):
            onnx_rt.set_references(images(3, 1))
    finally:
        onnx_rt.max_targets = onnx_rt.max_refs = None


def test_an_export_whose_parity_failed_loads_with_a_warning(model_files, tmp_path):
    _, export_dir = model_files
    metadata = read_metadata(export_dir)
    for name in ("support_encoder", "detector"):
        shutil.copy(export_dir / metadata["graphs"][name]["file"], tmp_path)
    failure = "targets=1 batch=1: score max |diff| 1.00e-02 (limit 1e-04)"
    write_metadata(tmp_path, {**metadata, "parity": {"passed": False, "failures": [failure]}})
    with pytest.warns(
        runtime.ParityWarning, match=r"metadata.json: field 'parity' failed .*score max \|diff\| 1.00e-02"
    ):
        runtime.load(tmp_path, "onnx")
    write_metadata(tmp_path, {**metadata, "parity": {"passed": True, "failures": []}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", runtime.ParityWarning)
        runtime.load(tmp_path, "onnx")


def test_onnx_sessions_take_the_thread_count(model_files):
    _, export_dir = model_files
    rt = runtime.load(export_dir, "onnx", threads=1)
    for session in (rt.support, rt.detector):
        options = session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
