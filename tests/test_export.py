"""`refdet export`: the two ONNX graphs, their metadata, parity with PyTorch, and CLI errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.export import parity
from refdet_edge.export.metadata import ExportError, read_metadata
from refdet_edge.export.onnx_export import (
    DETECTOR_FILE,
    PROTOTYPES,
    REFERENCES,
    SCORES,
    SUPPORT_FILE,
    cpu_session,
    example_frames,
    example_references,
)
from refdet_edge.models import atomic_save, checkpoint_payload, create_model, load_model
from refdet_edge.preprocess import preprocess_images

IMGSZ, SUPPORT = 64, 64
ANCHORS = (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    atomic_save(checkpoint_payload(create_model(imgsz=IMGSZ, support_size=SUPPORT)), path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """One CLI export (with --simplify) shared by the tests of this module."""
    out = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(
        cli, ["export", "--weights", str(checkpoint), "--out", str(out), "--simplify", "--targets-max", "3"]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_both_graphs_that_pass_the_checker(exported):
    out, output = exported
    for name in (SUPPORT_FILE, DETECTOR_FILE):
        onnx.checker.check_model(str(out / name), full_check=True)
    assert "parity" in output and "targets=3 batch=2" in output


def test_metadata_names_every_input_and_output_with_dynamic_axes(exported):
    meta = read_metadata(exported[0])
    support, detector = meta["graphs"]["support_encoder"], meta["graphs"]["detector"]
    assert support["inputs"] == [
        {"name": REFERENCES, "shape": ["targets", "refs", 3, SUPPORT, SUPPORT], "dtype": "float32"}
    ]
    assert [o["shape"] for o in support["outputs"]] == [["targets", 5, c] for c in (64, 128, 256)]
    assert [i["name"] for i in detector["inputs"]] == ["images", *PROTOTYPES]
    assert detector["inputs"][0]["shape"] == ["batch", 3, IMGSZ, IMGSZ]
    assert detector["outputs"] == [
        {"name": "boxes", "shape": ["batch", ANCHORS, 4], "dtype": "float32"},
        {"name": SCORES, "shape": ["batch", ANCHORS, "targets"], "dtype": "float32"},
    ]
    assert meta["imgsz"] == IMGSZ and meta["support_size"] == SUPPORT and meta["strides"] == [8, 16, 32]
    assert meta["num_anchors"] == ANCHORS
    assert meta["model"]["support_encoder"] == meta["normalisation"]["support_encoder"] == "siamese"
    assert meta["normalisation"]["support_mean"] == [0.0, 0.0, 0.0]  # the siamese encoder takes [0, 1] as is
    assert meta["profiles"] == {"batch": [1, 1, 4], "targets": [1, 1, 3], "refs": [1, 3, 5]}
    assert meta["simplified"] is True and "dynamo=False" in meta["exporter"]


def test_parity_figures_at_export_cover_1_and_3_targets_batch_1_and_2(exported):
    result = read_metadata(exported[0])["parity"]
    assert result["passed"] and result["failures"] == []
    assert result["inputs"].startswith("synthetic aerial scenes")
    assert {(c["targets"], c["batch"]) for c in result["cases"]} == {(1, 1), (1, 2), (3, 1), (3, 2)}
    assert result["prototype_max_abs_diff"] < 1e-4
    for case in result["cases"]:
        assert case["score_max_abs_diff"] < 1e-4 and case["top_score_max_abs_diff"] < 1e-4
        assert len(case["top_scores"]) == case["targets"]
        assert [t["conf"] for t in case["thresholds"]] == [0.25, 0.05]
        for t in case["thresholds"]:
            assert t["unmatched"] == 0
            assert t["matched"] + t["excused"] == t["reference_boxes"] + t["export_boxes"]


def confident_checkpoint(path, imgsz):
    """A checkpoint scored like a trained model: most anchors near zero (where the old check's near-zero
    ties reordered NMS), a few confident ones. The head's logit (objectness weight, cosine scale and bias)
    is stretched so the parity scenes' logits span 12 units from their median to their best, which is 3."""
    torch.manual_seed(0)
    model = create_model(imgsz=imgsz, support_size=SUPPORT).eval()
    head, inputs = model.head, parity.synthetic_inputs()
    frames, _ = preprocess_images(inputs.frames, imgsz)
    with torch.no_grad():
        logits = model(frames, parity._references(inputs, 3, SUPPORT))["pred_scores"]
        stretch = 12.0 / float(logits.max() - logits.median())
        for weight in (head.obj_weight, head.logit_scale, head.logit_bias):
            weight.mul_(stretch)
        head.logit_bias.sub_(stretch * float(logits.max()) - 3.0)
        scores = model(frames, parity._references(inputs, 3, SUPPORT))["pred_scores"].sigmoid()
    atomic_save(checkpoint_payload(model), path)
    return scores


@pytest.mark.slow
def test_export_of_a_trained_like_checkpoint_passes_parity_on_its_confident_boxes(tmp_path):
    scores = confident_checkpoint(tmp_path / "trained.pt", 128)
    assert float((scores < 1e-3).float().mean()) > 0.4 and float(scores.max()) > 0.9  # as after training
    result = run("--weights", tmp_path / "trained.pt", "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    figures = read_metadata(tmp_path / "export")["parity"]
    assert figures["passed"]
    at_operating = [c["thresholds"][0] for c in figures["cases"]]
    assert all(t["reference_boxes"] > 0 and t["unmatched"] == 0 for t in at_operating)
    assert max(max(c["top_scores"]) for c in figures["cases"]) > 0.9


class _ShiftedScores:
    """An ONNX Runtime session whose ``scores`` output is 0.01 higher: an export that does not match."""

    def __init__(self, session):
        self.session = session

    def run(self, names, feeds):
        return [
            o + 0.01 if n == SCORES else o for n, o in zip(names, self.session.run(names, feeds), strict=True)
        ]


@pytest.fixture
def broken_export(monkeypatch):
    real = parity.cpu_session
    monkeypatch.setattr(
        parity,
        "cpu_session",
        lambda path: _ShiftedScores(real(path)) if path.name == DETECTOR_FILE else real(path),
    )


def test_failed_parity_names_the_figures_exits_nonzero_and_removes_the_files(
    checkpoint, tmp_path, broken_export
):
    result = run("--weights", checkpoint, "--out", tmp_path)
    assert_clean_error(result, "field 'parity' failed", "score max |diff| 1.00e-02 (limit 1e-04)")
    assert "--no-parity-fail" in result.output
    assert not any((tmp_path / name).exists() for name in (SUPPORT_FILE, DETECTOR_FILE, "metadata.json"))


def test_no_parity_fail_keeps_the_files_and_warns(checkpoint, tmp_path, broken_export):
    result = run("--weights", checkpoint, "--out", tmp_path, "--no-parity-fail")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "score max |diff| 1.00e-02" in result.output
    figures = read_metadata(tmp_path)["parity"]
    assert figures["passed"] is False and any("score max |diff|" in f for f in figures["failures"])
    assert (tmp_path / SUPPORT_FILE).is_file() and (tmp_path / DETECTOR_FILE).is_file()


def test_parity_runs_on_the_frames_of_parity_data(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    for v in range(2):
        sample = tmp_path / "data" / "samples" / f"video_{v}"
        (sample / "frames").mkdir(parents=True)
        (sample / "object_images").mkdir()
        for f in range(2):
            cv2.imwrite(str(sample / "frames" / f"{f:06d}.jpg"), rng.integers(0, 256, (72, 128, 3), np.uint8))
        cv2.imwrite(str(sample / "object_images" / "img_1.jpg"), rng.integers(0, 256, (40, 30, 3), np.uint8))
    result = run("--weights", checkpoint, "--out", tmp_path / "o", "--parity-data", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert (
        read_metadata(tmp_path / "o")["parity"]["inputs"]
        == f"frames and reference photos of {tmp_path / 'data'}"
    )
    bad = run("--weights", checkpoint, "--out", tmp_path / "p", "--parity-data", tmp_path / "nothing")
    assert_clean_error(bad, "--parity-data", "samples: no such folder")


def test_synthetic_parity_inputs_are_aerial_scenes_and_ground_photos_per_target():
    a, b = parity.synthetic_inputs(seed=3), parity.synthetic_inputs(seed=3)
    assert len(a.frames) == 2 and all(
        f.shape == (*parity.SCENE_SHAPE, 3) and f.dtype == np.uint8 for f in a.frames
    )
    assert len(a.references) == 3 and all(len(r) == parity.PARITY_REFS for r in a.references)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    frame = a.frames[0].astype(float)
    assert (
        np.abs(np.diff(frame, axis=1)).mean() < 0.25 * frame.std()
    )  # structured: neighbours alike, not noise
    assert not np.array_equal(a.references[0][0], a.references[1][0])


def test_prototypes_are_inputs_fresh_references_match_pytorch(exported, checkpoint):
    """References never seen at export, with K=1 and K=4 (traced with K=2), through both graphs."""
    out = exported[0]
    model = load_model(checkpoint).eval()
    support, detector = cpu_session(out / SUPPORT_FILE), cpu_session(out / DETECTOR_FILE)
    frames = example_frames(2, IMGSZ, seed=42)
    scores = []
    for n, k, seed in ((1, 1, 5), (2, 4, 6)):
        refs = example_references(n, k, SUPPORT, seed=seed)
        protos = support.run(list(PROTOTYPES), {REFERENCES: refs.numpy()})
        with torch.no_grad():
            expected = model.encode_references(refs).prototypes
            expected_scores = model.detect(frames, expected)["pred_scores"].sigmoid()
        for got, want in zip(protos, expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
        (got_scores,) = detector.run(
            [SCORES], {"images": frames.numpy(), **dict(zip(PROTOTYPES, protos, strict=True))}
        )
        assert got_scores.shape == (2, ANCHORS, n)
        np.testing.assert_allclose(got_scores, expected_scores.numpy(), atol=1e-4)
        scores.append(got_scores[..., 0])
    logits = [np.log(p) - np.log1p(-p) for p in scores]  # a random model's probabilities are tiny
    assert np.abs(logits[0] - logits[1]).max() > 1e-3  # other references, other scores: not baked in


def test_detector_graph_holds_no_prototype_constant(exported):
    graph = onnx.load(str(exported[0] / DETECTOR_FILE)).graph
    proto_shapes = {(5, 64), (5, 128), (5, 256), (1, 5, 64), (2, 5, 64)}
    assert not [i.name for i in graph.initializer if tuple(i.dims) in proto_shapes]


def run(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def assert_clean_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_missing_and_incompatible_weights_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    assert_clean_error(run("--weights", missing, "--out", tmp_path / "o"), str(missing), "no such checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else/3"}, other)
    assert_clean_error(run("--weights", other, "--out", tmp_path / "o"), str(other), "format")
    assert not (tmp_path / "o" / SUPPORT_FILE).exists()


def test_support_size_other_than_the_checkpoints_is_refused(checkpoint, tmp_path):
    result = run("--weights", checkpoint, "--out", tmp_path, "--support-size", 42)
    assert_clean_error(result, str(checkpoint), "config.support_size")


def test_an_input_size_a_verify_scale_model_cannot_take_is_refused(tmp_path):
    path = tmp_path / "scale2.pt"
    config = {"imgsz": IMGSZ, "support_size": SUPPORT, "verify_topk": 2, "verify_scale": 2}
    atomic_save(checkpoint_payload(create_model(**config)), path)
    result = run("--weights", path, "--out", tmp_path / "o", "--imgsz", 96)  # a multiple of 32, not of 64
    assert_clean_error(result, "--imgsz", str(path), "multiple of 64")
    assert not (tmp_path / "o" / SUPPORT_FILE).exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--imgsz", "100"], "--imgsz"),
        (["--support-size", "30"], "--support-size"),
        (["--targets-max", "0"], "--targets-max"),
        (["--int8"], "--trt"),
        (["--trt", "--int8"], "--calib-data"),
    ],
)
def test_bad_options_are_usage_errors(checkpoint, tmp_path, args, fragment):
    assert_clean_error(run("--weights", checkpoint, "--out", tmp_path, *args), fragment)


def test_bad_calibration_folder_names_the_path(checkpoint, tmp_path):
    data = tmp_path / "data"
    (data / "samples" / "v0" / "frames").mkdir(parents=True)
    result = run("--weights", checkpoint, "--out", tmp_path / "o", "--trt", "--int8", "--calib-data", data)
    assert_clean_error(result, "--calib-data", str(data / "samples"), "no decoded frame")
    assert not (tmp_path / "o").exists()  # checked before anything is exported


def test_no_onnx_needs_an_earlier_export(tmp_path):
    assert_clean_error(run("--no-onnx", "--trt", "--out", tmp_path), str(tmp_path / "metadata.json"))


def test_read_metadata_names_missing_fields(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "refdet-edge-export/1", "imgsz": 64}))
    with pytest.raises(ExportError, match=r"metadata.json: field 'support_size' missing"):
        read_metadata(tmp_path)


def test_help_has_an_example():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--calib-data" in result.output
