"""The ``refdet`` command line: importing it and every ``--help`` load no heavy library (their start-up time
is a benchmark figure: benchmarks/bench_cli.py), and ``refdet info``'s plain YOLOv8n row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from refdet_edge.cli import LAZY_COMMANDS, cli

HEAVY = ("torch", "torchvision", "ultralytics", "cv2", "timm", "onnx", "onnxruntime", "matplotlib")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )
    return out.stdout.splitlines()[-1].split()[1:]


def test_importing_the_cli_loads_no_heavy_library():
    assert heavy_modules_after("import refdet_edge.cli") == []


@pytest.mark.parametrize("command", ["", "info", *LAZY_COMMANDS])
def test_help_loads_no_heavy_library(command):
    args = [*command.split(), "--help"]
    code = f"from refdet_edge.cli import cli\ntry:\n    cli({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code"
    assert heavy_modules_after(code) == []


def test_main_help_lists_every_command_in_order():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = [
        line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.startswith("  ")
    ]
    assert listed[: 1 + len(LAZY_COMMANDS)] == ["info", *LAZY_COMMANDS]


def test_info_prints_plain_yolov8n_with_the_same_counter():
    table = CliRunner().invoke(cli, ["info", "--imgsz", "64"])
    assert table.exit_code == 0, table.output
    assert "plain YOLOv8n (64x64)" in table.output and "3.157" in table.output
    result = CliRunner().invoke(cli, ["info", "--imgsz", "64", "--json"])
    summary = json.loads(result.output)
    yolo = summary["plain_yolov8n"]
    assert yolo["params"] == 3_157_200  # ultralytics' own count for yolov8n.yaml with 80 classes
    assert 0 < yolo["gflops"] < summary["per_frame"]["gflops"] * 2
    assert yolo["gflops"] == pytest.approx(8.74 * (64 / 640) ** 2, rel=0.1)  # 8.7 GFLOPs at 640, per pixel


def test_info_counts_verification_in_the_per_frame_path():
    def per_frame(*extra):
        args = ["info", "--imgsz", "64", "--support-encoder", "timm:mobilenetv2_100", "--support-size", "64"]
        result = CliRunner().invoke(cli, [*args, *extra, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["per_frame"]

    plain, verified = per_frame(), per_frame("--verify-topk", "4")
    assert verified["gflops"] > plain["gflops"] + 4 * 0.04  # four 64 px MobileNetV2 crops (~0.05 GFLOPs each)
    assert verified["params"] > plain["params"] + 2_000_000  # the encoder runs per frame
    sharp = per_frame("--verify-topk", "4", "--verify-scale", "2")  # a 128 px input, the backbone at 64
    assert sharp["gflops"] == pytest.approx(verified["gflops"], rel=0.02)
    result = CliRunner().invoke(cli, ["info", "--imgsz", "64", "--verify-scale", "2"])
    assert result.exit_code != 0 and "verify_topk" in result.output
