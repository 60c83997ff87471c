"""What a user meets around a training run: resume, run folders, checkpoint errors, Ctrl-C, file modes, help."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from refdet_edge.cli import cli
from refdet_edge.data.synth import generate_synthetic
from refdet_edge.models import WeightsError, atomic_save, checkpoint_payload, create_model, read_checkpoint
from refdet_edge.training import trainer as trainer_module
from refdet_edge.training.config import ConfigError, load_config
from refdet_edge.training.plots import training_figures
from refdet_edge.training.trainer import Trainer

SHARED_YOLO = Path(__file__).resolve().parents[2] / "shared" / "weights" / "yolov8n-coco.pt"
TINY = {  # the mechanics of training, with the cheapest encoder (the default one has a test of its own)
    "support_encoder": "siamese",
    "imgsz": 64,
    "support_size": 64,
    "episodes_per_epoch": 4,
    "batch_size": 1,
    "n_way": 2,
    "k_shot": 2,
    "n_query": 1,
    "workers": 0,
    "warmup_steps": 2,
    "device": "cpu",
    "epochs": 1,
    "val_stride": 3,
}
STEPS = 4  # per epoch: episodes_per_epoch / batch_size


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_synthetic(
        tmp_path_factory.mktemp("data") / "synth", videos=3, frames=20, seed=5, workers=1
    )


def saves_of(monkeypatch) -> list[tuple[str, int, int]]:
    """Record every checkpoint the trainer writes as (file name, batch, step); last.pt files are also kept
    as copies named ``last@STEP.pt``."""
    saves = []
    real = trainer_module.atomic_save

    def recording(obj, path):
        real(obj, path)
        state = obj.get("train_state")
        saves.append((Path(path).name, state["batch"] if state else -1, state["step"] if state else -1))
        if state:
            shutil.copy(path, Path(path).with_name(f"last@{state['step']}.pt"))

    monkeypatch.setattr(trainer_module, "atomic_save", recording)
    return saves


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    """An uninterrupted run (one epoch of 4 steps) that also writes last.pt every 3 steps, and its saves."""
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as mp:
        saves = saves_of(mp)
        trainer = Trainer(load_config(None, data=str(tiny_data), out=str(out), save_every=3, **TINY))
        trainer.fit()
    return out, saves


def numbers(row: dict) -> dict:
    return {
        k: v for k, v in row.items() if (k.startswith(("loss/", "val/")) or k == "step") and v is not None
    }


def assert_same_run(got: Path, expected: Path) -> None:
    """Same history (losses, validation figures, steps) and the same final weights, EMA and raw."""
    a, b = read_checkpoint(got), read_checkpoint(expected)
    history, reference = a["train_state"]["history"], b["train_state"]["history"]
    assert [r["epoch"] for r in history] == [r["epoch"] for r in reference] == [0, 1]
    for row, ref in zip(history, reference, strict=True):
        assert numbers(row) == pytest.approx(numbers(ref), rel=1e-6)
    for key in ("model", "raw"):
        mine = a["model"] if key == "model" else a["train_state"]["model"]
        theirs = b["model"] if key == "model" else b["train_state"]["model"]
        for name, value in theirs.items():
            torch.testing.assert_close(mine[name], value, msg=f"{key} {name}")


def test_save_every_writes_resumable_mid_epoch_checkpoints(straight):
    _, saves = straight
    assert [(name, batch, step) for name, batch, step in saves if name == "last.pt"] == [
        ("last.pt", 0, 0),  # the baseline (row 0)
        ("last.pt", 3, 3),  # --save-every 3: in the middle of the epoch
        ("last.pt", 0, 4),  # the end of the epoch
    ]


def test_resume_from_a_mid_epoch_checkpoint_alone_continues_the_run(
    straight, tiny_data, tmp_path, monkeypatch
):
    out, _ = straight
    run = tmp_path / "moved"
    run.mkdir()
    shutil.copy(out / "last@3.pt", run / "last.pt")
    monkeypatch.chdir(tmp_path)  # no demo_data here: nothing may be generated
    result = CliRunner().invoke(cli, ["train", "--resume", str(run / "last.pt")])
    assert result.exit_code == 0, result.output
    assert f"weights: resumed from {run / 'last.pt'} at epoch 1/1, batch 3/4 (step 3)" in result.output
    assert "device: cpu" in result.output
    assert f"validation of {run} on the val split of {tiny_data} (later frames):" in result.output
    assert not (tmp_path / "demo_data").exists() and not (tmp_path / "runs").exists()
    assert_same_run(run / "last.pt", out / "last.pt")


def test_sigint_mid_epoch_then_resume_equals_an_uninterrupted_run(straight, tiny_data, tmp_path, monkeypatch):
    out, _ = straight
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, data=str(tiny_data), out=str(run), **TINY))
    step = trainer._optimizer_step

    def step_then_ctrl_c() -> None:
        step()
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(trainer, "_optimizer_step", step_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    trainer.fit()
    assert trainer.interrupted and signal.getsignal(signal.SIGINT) is handler
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert (state["epoch"], state["batch"], state["step"]) == (-1, 2, 2)  # in epoch 1, two batches done
    assert [r["epoch"] for r in state["history"]] == [0]
    Trainer(load_config(None, resume=str(run / "last.pt"))).fit()
    assert_same_run(run / "last.pt", out / "last.pt")


def test_resume_refuses_options_that_change_the_run(straight, tiny_data):
    out, _ = straight
    last = str(out / "last@3.pt")
    with pytest.raises(ConfigError, match=r"--imgsz 640 \(the run: 64\), --stage 2 \(the run: 1\)"):
        load_config(None, resume=last, imgsz=640, stage=2)
    with pytest.raises(ConfigError, match=r"--epochs 5 \(the run: 1\)"):
        load_config(None, resume=last, epochs=5)
    repeated = load_config(None, resume=last, data=str(tiny_data), imgsz=64, device="cpu", workers=1)
    assert (repeated.out, repeated.support_size, repeated.workers) == (str(out), 64, 1)
    result = CliRunner().invoke(cli, ["train", "--resume", last, "--support-size", "96"])
    assert result.exit_code != 0 and "--support-size 96 (the run: 64)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="holds no training state"):
        load_config(None, resume=str(out / "best.pt"))


def test_a_second_run_into_the_same_folder_is_refused(straight, tiny_data, tmp_path):
    out, _ = straight
    result = CliRunner().invoke(cli, ["train", "--data", str(tiny_data), "--out", str(out)])
    assert result.exit_code != 0 and "holds a run already" in result.output
    assert f"--resume {out / 'last.pt'}" in result.output and "--exist-ok" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_exist_ok_keeps_a_better_best_pt(straight, tiny_data, tmp_path):
    out, _ = straight
    run = tmp_path / "run"
    shutil.copytree(out, run)
    best = read_checkpoint(run / "best.pt")
    best["metrics"] = {
        k: (0.0 if "fp" in k else 1.0) if k.startswith("val/") else v for k, v in best["metrics"].items()
    }
    atomic_save(best, run / "best.pt")
    before = (run / "best.pt").read_bytes()
    options = {**TINY, "episodes_per_epoch": 1}
    trainer = Trainer(load_config(None, data=str(tiny_data), out=str(run), exist_ok=True, **options))
    trainer.fit()
    assert not trainer.best_written and (run / "best.pt").read_bytes() == before
    assert read_checkpoint(run / "last.pt")["train_state"]["step"] == 1  # last.pt is the new run's


def test_best_pt_is_stripped_and_last_pt_resumable(straight):
    out, _ = straight
    best, last = read_checkpoint(out / "best.pt"), read_checkpoint(out / "last.pt")
    assert set(best) == {"format", "version", "config", "model", "epoch", "metrics", "train_config"}
    assert {"optimizer", "model", "ema_updates", "rng", "batch"} <= set(last["train_state"])
    assert best["metrics"]["epoch"] == best["epoch"] + 1
    row = max(last["train_state"]["history"], key=lambda r: r["fitness"])
    assert best["metrics"] == row


def test_checkpoint_files_follow_the_umask(straight, tmp_path):
    out, _ = straight
    umask = os.umask(0)
    os.umask(umask)
    for name in ("best.pt", "last.pt", "results.csv", "config.yaml"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    previous = os.umask(0o027)
    try:
        atomic_save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    finally:
        os.umask(previous)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o640


def tiny_ultralytics_pt(path: Path) -> Path:
    """An ultralytics checkpoint as its trainer saves one: a pickled DetectionModel (random weights)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.save({"model": DetectionModel("yolov8n.yaml", verbose=False).half(), "epoch": -1}, path)
    return path


def one_line_error(path: Path) -> str:
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message and str(path) in message
    return message


def test_checkpoint_errors_are_one_line_each(tmp_path):
    assert one_line_error(tiny_ultralytics_pt(tmp_path / "yolo.pt")).endswith(
        "an ultralytics checkpoint: use --yolo-weights"
    )
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint at all\n")
    assert one_line_error(text).endswith(": not a checkpoint")
    whole = tmp_path / "whole.pt"
    atomic_save(checkpoint_payload(create_model(imgsz=64, support_size=64)), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "truncated" in one_line_error(cut)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "refdet-edge/2", "version": "9.0.0", "model": {}}, newer)
    assert "from a newer version of refdet-edge (9.0.0" in one_line_error(newer)


@pytest.mark.skipif(not SHARED_YOLO.is_file(), reason="needs ../shared/weights/yolov8n-coco.pt")
def test_shared_yolo_checkpoint_as_weights_points_to_yolo_weights():
    assert one_line_error(SHARED_YOLO).endswith("an ultralytics checkpoint: use --yolo-weights")


def test_train_with_an_ultralytics_pt_as_weights_says_use_yolo_weights(tiny_data, tmp_path):
    weights = tiny_ultralytics_pt(tmp_path / "yolov8n.pt")
    result = CliRunner().invoke(
        cli, ["train", "--data", str(tiny_data), "--weights", str(weights), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert result.output.strip() == f"Error: {weights}: an ultralytics checkpoint: use --yolo-weights"


def test_training_start_names_device_weights_and_encoder(straight, tiny_data, tmp_path):
    out, _ = straight
    yolo = tiny_ultralytics_pt(tmp_path / "yolov8n.pt")
    fresh = Trainer(
        load_config(None, data=str(tiny_data), out=str(tmp_path / "a"), yolo_weights=str(yolo), **TINY)
    )
    matched = fresh.loaded[str(yolo)]["loaded"]
    assert matched > 100
    assert fresh.describe()[:3] == [
        f"device: cpu ({torch.get_num_threads()} threads)",
        f"weights: {yolo}: {matched} tensors matched",
        "support encoder: siamese (the query backbone's weights) at 64 px",
    ]
    assert fresh.describe()[3].endswith("(later frames)")
    best = out / "best.pt"
    stage2 = Trainer(
        load_config(None, data=str(tiny_data), out=str(tmp_path / "b"), weights=str(best), **TINY)
    )
    assert stage2.describe()[1] == f"weights: {best}: {len(read_checkpoint(best)['model'])} tensors matched"


def test_a_fresh_run_verifies_with_mobilenet_by_default_and_a_stage_keeps_the_encoder_of_its_weights(
    straight, tiny_data, tmp_path
):
    defaults = {k: v for k, v in TINY.items() if k not in ("support_encoder", "support_size")}
    with pytest.warns(UserWarning, match="RANDOM SUPPORT ENCODER: timm:mobilenetv2_100"):
        fresh = Trainer(load_config(None, data=str(tiny_data), out=str(tmp_path / "a"), **defaults))
    arch = fresh.model.config
    assert (arch.support_encoder, arch.support_size) == ("timm:mobilenetv2_100", 224)
    assert (arch.verify_topk, arch.verify_scale) == (8, 2) and fresh.model.verifier is not None
    siamese = Trainer(load_config(None, data=str(tiny_data), out=str(tmp_path / "b"), **TINY)).model
    assert (siamese.config.verify_topk, siamese.config.verify_scale, siamese.verifier) == (0, 1, None)
    out, _ = straight  # a siamese run at 64 px
    stage2 = load_config(None, data=str(tiny_data), stage=2, weights=str(out / "best.pt"), **defaults)
    assert (stage2.support_encoder, stage2.support_size) == ("siamese", 64)
    with pytest.raises(ConfigError, match="support_encoder"):
        Trainer(replace(stage2, support_encoder="timm:mobilenetv2_100", out=str(tmp_path / "c")))


def test_epoch_ticks_are_whole_numbers():
    history = [{"epoch": e, "step": 3 * e, "loss/box": 1 / (e + 1), "val/map50": e / 10} for e in range(3)]
    figures = training_figures(history, [{"step": 0, "head": 1.0}, {"step": 3, "head": 0.5}])
    for name, fig in figures.items():
        ticks = fig.axes[0].get_xticks()
        assert len(ticks) and all(float(t).is_integer() for t in ticks), name


def test_train_help_is_light_and_runs_on_synth_output():
    code = (
        "import sys; import refdet_edge.training.commands; "
        "print(sorted(m for m in ('torch', 'ultralytics', 'timm', 'cv2') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "DESIGN.md" not in text and "--data demo_data" in text and "refdet train --resume runs/" in text


def train_subprocess(args: list[str], **kwargs) -> subprocess.Popen:
    """``refdet train`` in its own process, one thread (every run sums floats in the same order)."""
    return subprocess.Popen(
        [sys.executable, "-m", "refdet_edge.cli", "train", *args],
        env={**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_ctrl_c_in_refdet_train_saves_and_resume_alone_finishes_the_run(tiny_data, tmp_path):
    config = tmp_path / "run.yaml"
    options = {**TINY, "data": str(tiny_data), "episodes_per_epoch": 6, "seed": 3}
    config.write_text(yaml.safe_dump(options))
    straight = train_subprocess(["--config", str(config), "--out", str(tmp_path / "straight")])
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]

    out = tmp_path / "stopped"
    proc = train_subprocess(["--config", str(config), "--out", str(out), "--save-every", "1"])
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "last.pt").exists() and read_checkpoint(out / "last.pt")["train_state"]["step"] >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # in epoch 1, after its first step
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"refdet train --resume {out / 'last.pt'}" in stderr and "Traceback" not in stderr
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["epoch"] == -1 and 0 < state["batch"] < 6

    resumed = train_subprocess(["--resume", str(out / "last.pt")], cwd=tmp_path)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert_same_run(out / "last.pt", tmp_path / "straight" / "last.pt")


def test_ultralytics_pt_is_named_even_after_ultralytics_safe_loader_ran(tmp_path):
    # ultralytics' safe loader (used for --yolo-weights) allows its model classes for the whole process, so
    # torch.load(weights_only=True) would then load an ultralytics checkpoint: the hint must not depend on it
    from ultralytics.nn.tasks import torch_safe_load

    path = tiny_ultralytics_pt(tmp_path / "yolo.pt")
    torch_safe_load(str(path), safe_only=True)
    assert one_line_error(path).endswith("an ultralytics checkpoint: use --yolo-weights")


def test_verification_is_stored_in_best_pt_and_carried_by_the_next_stage(tiny_data, tmp_path):
    first = tmp_path / "s1"
    Trainer(load_config(None, data=str(tiny_data), out=str(first), verify_topk=3, **TINY)).fit()
    assert read_checkpoint(first / "best.pt")["config"]["verify_topk"] == 3

    def stage2(name, **extra):
        weights = str(first / "best.pt")
        return Trainer(
            load_config(
                None, data=str(tiny_data), out=str(tmp_path / name), stage=2, weights=weights, **extra
            )
        ).model

    carried = stage2("s2", **TINY)
    assert carried.config.verify_topk == 3 and carried.verifier is not None
    assert stage2("s2off", verify_topk=0, **TINY).verifier is None
    with pytest.raises(ConfigError, match="verify_topk"):
        load_config(None, data=str(tiny_data), verify_topk=-1)
