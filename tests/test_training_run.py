"""Whole training runs on a tiny synthetic dataset: outputs, exact resume, SIGKILL safety, errors, DDP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.synth import generate_synthetic
from refdet_edge.models import load_model, read_checkpoint
from refdet_edge.training import trainer as trainer_module
from refdet_edge.training.config import load_config
from refdet_edge.training.trainer import Trainer, TrainingError

TINY = {  # the mechanics of training, with the cheapest encoder (the default one has a test of its own)
    "support_encoder": "siamese",
    "imgsz": 64,
    "support_size": 64,
    "episodes_per_epoch": 3,
    "batch_size": 1,
    "n_way": 2,
    "k_shot": 2,
    "n_query": 1,
    "workers": 0,
    "warmup_steps": 2,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_synthetic(
        tmp_path_factory.mktemp("data") / "synth", videos=3, frames=20, seed=5, workers=1
    )


def config_file(path: Path, options: dict) -> str:
    path.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in options.items()}))
    return str(path)


def numbers(row: dict) -> dict:
    return {
        k: v for k, v in row.items() if (k.startswith(("loss/", "val/")) or k == "step") and v is not None
    }


def test_stage_run_writes_every_output(tiny_data, tmp_path):
    out = tmp_path / "s2"
    cfg = load_config(
        None,
        data=str(tiny_data),
        stage=2,
        use_triplet=True,
        triplet_ratio=0.5,
        samples_per_class=2,
        epochs=2,
        out=str(out),
        **TINY,
    )
    trainer = Trainer(cfg)
    row = trainer.fit()
    assert trainer.weights.triplet == 0.5
    assert row["epoch"] == 2 and row["loss/cpe"] > 0
    assert [r["epoch"] for r in trainer.history] == [0, 1, 2] and "loss/cls" not in trainer.history[0]
    assert any("loss/triplet" in r for r in trainer.history)
    for name in (
        "last.pt",
        "best.pt",
        "results.csv",
        "config.yaml",
        "losses.png",
        "metrics.png",
        "grad_norms.png",
    ):
        assert (out / name).stat().st_size > 0, name
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"loss/box", "loss/cls", "loss/triplet", "val/map50", "val/fp_per_background_frame"} <= set(header)
    model = load_model(out / "best.pt")
    assert model.config.imgsz == 64
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["epoch"] == 1 and state["step"] == row["step"] and state["grad_log"]
    assert set(state["grad_log"][0]) == {"step", "support", "projector", "backbone", "fusion", "head"}
    first = state["grad_log"][0]
    assert first["projector"] > 0 and first["backbone"] > 0
    assert first["support"] is None  # the siamese encoder's weights are the backbone's, counted there


def train_subprocess(config: str, out: Path, *extra: str) -> subprocess.Popen:
    """``refdet train`` in its own process; one thread, so every run sums floats in the same order."""
    return subprocess.Popen(
        [sys.executable, "-m", "refdet_edge.cli", "train", "--config", config, "--out", str(out), *extra],
        env={**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_data, tmp_path):
    config = config_file(
        tmp_path / "run.yaml", {"data": tiny_data, "stage": 1, "epochs": 4, "seed": 3, **TINY}
    )
    straight = train_subprocess(config, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]

    out = tmp_path / "killed"
    proc = train_subprocess(config, out)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = read_checkpoint(out / "last.pt")["train_state"]["epoch"]
    assert saved < 3, "the run finished before it could be killed"
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            load_model(out / name)

    resumed = train_subprocess(config, out, "--resume", str(out / "last.pt"))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    got = read_checkpoint(out / "last.pt")["train_state"]["history"]
    expected = read_checkpoint(tmp_path / "straight" / "last.pt")["train_state"]["history"]
    assert len(got) == len(expected) == 5  # epoch 0 (starting weights) and 4 epochs
    for row, reference in zip(got, expected, strict=True):
        assert numbers(row) == pytest.approx(numbers(reference), rel=1e-6)
    final, reference = (
        load_model(out / "last.pt").state_dict(),
        load_model(tmp_path / "straight" / "last.pt").state_dict(),
    )
    for key, value in final.items():
        torch.testing.assert_close(value, reference[key])


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(None, data=str(tiny_data), epochs=1, out=str(tmp_path), max_bad_steps=1, **TINY)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]

    def nan_terms(self, batch):
        return {"cls": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(trainer_module.LossComputer, "forward", nan_terms)
    with pytest.raises(TrainingError, match="2 steps with a non-finite loss"):
        trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_train_cli_reports_bad_options_without_traceback(tiny_data, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", str(tiny_data), "--stage", "1", "--use-triplet"])
    assert result.exit_code != 0 and "triplet mixing applies from stage 2 on" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: 2\nlearning_rate: 0.1\n")
    result = runner.invoke(cli, ["train", "--config", str(bad)])
    assert result.exit_code != 0 and "bad.yaml: unknown field(s) ['learning_rate']" in result.output
    result = runner.invoke(cli, ["train", "--data", str(tmp_path / "nowhere"), "--epochs", "1"])
    assert result.exit_code != 0 and "nowhere" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_identical(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    out = tmp_path / "ddp"
    options = {
        "data": str(tiny_data),
        "stage": 1,
        "epochs": 2,
        "out": out,
        **{**TINY, "episodes_per_epoch": 4},
    }
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "refdet_edge.cli",
            "train",
            "--config",
            config_file(tmp_path / "ddp.yaml", options),
        ],
        env={**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["epoch"] == 1 and state["step"] == 2 * 2


def test_next_stage_reuses_the_validation_of_its_starting_checkpoint(tiny_data, tmp_path, monkeypatch):
    first = Trainer(load_config(None, data=str(tiny_data), epochs=1, out=str(tmp_path / "s1"), **TINY))
    first.fit()
    best = max(first.history, key=lambda row: row["fitness"])
    second = Trainer(
        load_config(
            None,
            data=str(tiny_data),
            stage=2,
            epochs=1,
            weights=str(tmp_path / "s1" / "best.pt"),
            out=str(tmp_path / "s2"),
            **TINY,
        )
    )
    calls = []
    monkeypatch.setattr(second, "validate", lambda: calls.append(1) or first.validate())
    second.fit()
    assert len(calls) == 1  # epoch 1 only
    assert {k: v for k, v in second.history[0].items() if k.startswith("val/")} == {
        k: v for k, v in best.items() if k.startswith("val/")
    }


def test_validation_stride_scores_every_kth_frame(tiny_data):
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.evaluation.validator import Validator, ValidatorConfig
    from refdet_edge.models import create_model

    data = DroneDataset(tiny_data, "val", cache_size=64)
    model = create_model(imgsz=64, support_size=64)
    metrics, raw = Validator(data, ValidatorConfig(frame_stride=2))(model)
    for video in data.videos:
        assert sorted(raw[video.video_id]) == list(video.frames[::2])
    assert metrics["raw"]["overall"]["frames"] == sum(len(v.frames[::2]) for v in data.videos)
