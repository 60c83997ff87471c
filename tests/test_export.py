"""`refdet export`: the two ONNX graphs, their metadata, parity with PyTorch, and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from refdet_edge.cli import cli
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

IMGSZ, SUPPORT = 64, 28
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
    assert meta["normalisation"]["support_mean"] == [0.485, 0.456, 0.406]
    assert meta["profiles"] == {"batch": [1, 1, 4], "targets": [1, 1, 3], "refs": [1, 3, 5]}
    assert meta["simplified"] is True and "dynamo=False" in meta["exporter"]


def test_parity_figures_at_export_cover_1_and_3_targets_batch_1_and_2(exported):
    parity = read_metadata(exported[0])["parity"]
    assert parity["passed"]
    assert {(c["targets"], c["batch"]) for c in parity["cases"]} == {(1, 1), (1, 2), (3, 1), (3, 2)}
    assert parity["prototype_max_abs_diff"] < 1e-4
    for case in parity["cases"]:
        assert case["score_max_abs_diff"] < 1e-4
        assert case["same_box_count"] and min(case["boxes_after_nms"]) > 0
        assert case["box_min_iou"] > 0.99


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
    assert np.abs(scores[0] - scores[1]).max() > 1e-4  # other references, other scores: not baked in


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
