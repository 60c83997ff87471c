"""The trainer: staged training with detection, triplet and mixed batches, checkpoints, resume, validation.

One step = one batch from the loader -> :class:`LossComputer` (one model pass per batch kind) -> the weighted
sum of the stage's loss components -> one backward. Around it: AdamW with linear warm-up and cosine decay,
gradient accumulation and clipping, AMP on CUDA, EMA weights (ultralytics ``ModelEMA``), a guard that skips
non-finite steps and stops after too many, per-module gradient norms, and DistributedDataParallel when
started by ``torchrun``. After every epoch the EMA model is validated on the validation split; ``last.pt``
and ``best.pt`` (chosen on validation, never on test) are written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from ultralytics.utils.torch_utils import ModelEMA

from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.splits import split_kind
from refdet_edge.evaluation.operating_point import choose_operating_point
from refdet_edge.evaluation.validator import Validator, ValidatorConfig, scored_frames
from refdet_edge.losses import combine
from refdet_edge.models import (
    ModelConfig,
    RefDetModel,
    WeightsError,
    atomic_save,
    checkpoint_payload,
    create_model,
)
from refdet_edge.models.checkpoint import read_checkpoint
from refdet_edge.training.batchnorm import calibrate_from_loader
from refdet_edge.training.config import (
    FRESH_VERIFY_SCALE,
    FRESH_VERIFY_TOPK,
    ConfigError,
    TrainConfig,
    read_resumable,
    resume_conflicts,
    save_config,
)
from refdet_edge.training.loaders import build_train_loader, ensure_demo_data
from refdet_edge.training.optim import param_groups
from refdet_edge.training.plots import plot_training
from refdet_edge.training.prepare import LossComputer
from refdet_edge.training.stages import stage_spec

GRAD_GROUPS = ("support", "projector", "backbone", "fusion", "head")
RUN_FILES = ("last.pt", "best.pt", "results.csv")  # a folder holding any of them holds a run
METRIC_KEYS = ("map50", "map50_95", "precision", "recall", "f1", "fp_per_background_frame", "st_iou")


class TrainingError(RuntimeError):
    """Training cannot go on (too many non-finite losses, diverging replicas); the message says why."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but no CUDA GPU is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global random generator's state, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "gauss": gauss,
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def grad_norms(model: RefDetModel) -> dict[str, float | None]:
    """L2 norm of the gradient of each module group (0.0 for a group that received none; None for a group
    without parameters of its own, such as the siamese support encoder, whose shared weights are counted
    once, under ``backbone``)."""
    norms: dict[str, float | None] = {}
    for group in GRAD_GROUPS:
        params = list(getattr(model, group).parameters())
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        norms[group] = (float(torch.stack(grads).norm()) if grads else 0.0) if params else None
    return norms


def fitness(row: dict) -> float:
    """What ``best.pt`` maximises: the mean of validation mAP@0.5 and raw ST-IoU (each frame's best detection)
    at the operating point chosen on that validation (``val/conf``; rows without one: at the default
    threshold). Raw, so the model chosen never depends on the temporal post-processing; online and offline
    ST-IoU are logged beside it."""
    st_iou = row.get("val/st_iou_at_conf")
    return 0.5 * (row["val/map50"] or 0.0) + 0.5 * ((row["val/st_iou"] if st_iou is None else st_iou) or 0.0)


def lr_factor(step: int, warmup: int, total: int, final: float = 0.01) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``final`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Trains one stage as configured by a :class:`TrainConfig` (see the module docstring)."""

    def __init__(self, config: TrainConfig) -> None:
        self.cfg = config
        self.spec = stage_spec(config.stage)
        self.epochs = config.epochs or self.spec.epochs
        self.lr = config.lr or self.spec.lr
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = select_device(config.device)
        if self.world_size > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0
        self.out = Path(config.out)
        self.cfg = config = replace(config, data=str(self._data_root()))
        earlier_best = self._check_out_folder()
        seed_everything(config.seed)

        resume_ckpt = self._read_resume() if config.resume else None
        self.start_metrics: dict | None = None  # validation of --weights, when it was run on the same data
        self.loaded: dict[str, dict[str, int]] = {}  # weights files read: tensors loaded and left unused
        self.model = self._build_model(resume_ckpt).to(self.device)
        groups = self.spec.apply(self.model, tuple(config.freeze))
        self.weights = self.spec.loss_weights(config.triplet_weight if config.use_triplet else 0.0)
        lrs = {"main": self.lr, "support": self.lr * self.spec.support_lr_scale}
        self.optimizer = torch.optim.AdamW(param_groups(self.model, groups, lrs, config.weight_decay))
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.train_data = DroneDataset(self._data_root(), "train", cache_size=config.imgsz)
        self.val_data = DroneDataset(self._data_root(), "val", cache_size=self.model.config.input_size)
        self.validator = Validator(
            self.val_data, ValidatorConfig(batch_size=config.val_batch_size, frame_stride=config.val_stride)
        )
        loader = build_train_loader(config, self.train_data, 0, self.world_size, self.rank)
        self.steps_per_epoch = len(loader)
        self.total_steps = self.epochs * max(1, self.steps_per_epoch // config.grad_accum)
        self.computer = LossComputer(
            self.model,
            self.weights,
            config.triplet_margin,
            freeze_bn=config.freeze_bn,
            run_batches=max(1, self.epochs * self.steps_per_epoch),
        ).to(self.device)
        self.step_module = (
            DistributedDataParallel(self.computer, find_unused_parameters=True)
            if self.world_size > 1
            else self.computer
        )
        calibrate_from_loader(self.model, loader, self.device)  # random-init batch norms only, before the EMA
        self.ema = ModelEMA(self.model, decay=config.ema_decay, tau=config.ema_tau)

        self.start_epoch = 0
        self.step = 0
        self.bad_steps = 0
        self.best_fitness = earlier_best  # best.pt is replaced only by a better model
        self.best_written = False  # whether this run wrote best.pt
        self.history: list[dict] = []
        self.grad_log: list[dict] = []
        self.epoch = 0  # the epoch in progress (or next)
        self.batch = 0  # batches of it already trained
        self.partial: dict = {"sums": {}, "counts": {}, "seconds": 0.0}  # that epoch's loss sums so far
        self.stop_requested = False  # set by Ctrl-C / SIGTERM
        self.interrupted = False  # the run stopped early and saved last.pt
        if resume_ckpt is not None:
            self._restore(resume_ckpt)

    def _data_root(self) -> Path:
        """The dataset root; the demo set (generated on first use) only for a new run without --data."""
        if self.cfg.data is not None:
            return Path(self.cfg.data)
        if self.cfg.resume is not None:
            raise ConfigError(f"{self.cfg.resume}: resuming needs the run's data folder; give it with --data")
        return ensure_demo_data()

    def describe(self) -> list[str]:
        """What the run is, printed as it starts: device, starting weights, support encoder, data, schedule."""
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)}{', AMP' if self.use_amp else ''})"
        else:
            device += f" ({torch.get_num_threads()} threads)"
        if self.cfg.resume is not None:
            weights = f"resumed from {self.cfg.resume} at {self.position()}"
        elif self.loaded:
            weights = "; ".join(
                f"{path}: {n['loaded']} tensors matched" + (f", {n['unused']} unused" if n["unused"] else "")
                for path, n in self.loaded.items()
            )
        else:
            weights = "random initialisation"
        arch = self.model.config
        own = list(self.model.support.parameters())
        support = f"{arch.support_encoder} at {arch.support_size} px, " + (
            f"{sum(p.numel() for p in own) / 1e6:.2f} M parameters "
            f"({sum(p.numel() for p in own if p.requires_grad) / 1e6:.2f} M trained in this stage)"
        )
        if not own:
            support = f"{arch.support_encoder} (the query backbone's weights) at {arch.support_size} px"
        return [
            f"device: {device}",
            f"weights: {weights}",
            f"support encoder: {support}",
            f"data: {self.cfg.data}: {len(self.train_data.videos)} training videos, "
            f"{len(self.val_data.videos)} validation videos ({split_kind(Path(self.cfg.data), 'val')})",
            f"stage {self.cfg.stage}: {self.epochs} epochs x {self.steps_per_epoch} steps, into {self.out}",
        ]

    def position(self) -> str:
        """Where the run stands: epoch, batches trained of it, optimizer steps."""
        if self.epoch >= self.epochs:
            return f"the end of epoch {self.epochs}/{self.epochs} (step {self.step})"
        if self.batch == 0:
            return f"the start of epoch {self.epoch + 1}/{self.epochs} (step {self.step})"
        return f"epoch {self.epoch + 1}/{self.epochs}, batch {self.batch}/{self.steps_per_epoch} (step {self.step})"

    def _check_out_folder(self) -> float:
        """Refuse to start a new run in a folder holding a run, unless --exist-ok; then its best.pt stays
        unless this run beats it. Returns the fitness to beat (-inf when there is none)."""
        found = [name for name in RUN_FILES if (self.out / name).exists()]
        if self.cfg.resume is not None or not found:
            return -math.inf
        if not self.cfg.exist_ok:
            raise ConfigError(
                f"{self.out}: holds a run already ({', '.join(found)}); continue it with --resume "
                f"{self.out / 'last.pt'}, choose another --out, or pass --exist-ok"
            )
        try:
            metrics = read_checkpoint(self.out / "best.pt").get("metrics")
            return fitness(metrics) if isinstance(metrics, dict) else -math.inf
        except (WeightsError, KeyError):
            return -math.inf

    def _read_resume(self) -> dict:
        """The checkpoint to resume; it must hold a training state and agree with this run's options."""
        ckpt = read_resumable(self.cfg.resume)
        given = {k: v for k, v in self.cfg.to_dict().items() if k != "out"}
        conflicts = resume_conflicts(ckpt["train_config"], given)
        if conflicts:
            raise ConfigError(f"{self.cfg.resume}: {', '.join(conflicts)} would change the run being resumed")
        return ckpt

    def _verify_settings(self, fresh: bool = False) -> dict[str, Any]:
        """The verification fields of ModelConfig this run sets (the others come from --weights or
        ModelConfig's defaults). A ``fresh`` model (no --weights) verifies FRESH_VERIFY_TOPK candidates at
        FRESH_VERIFY_SCALE unless told otherwise, except with the siamese encoder, whose view of a crop is
        the backbone's that the head already scores."""
        cfg = self.cfg
        topk = cfg.verify_topk
        if fresh and topk is None:
            topk = 0 if cfg.support_encoder == "siamese" else FRESH_VERIFY_TOPK
        scale = cfg.verify_scale
        if scale is None and (fresh or topk == 0):
            scale = FRESH_VERIFY_SCALE if topk else 1  # no verification: no larger input to crop from
        values = {"verify_topk": topk, "verify_alpha": cfg.verify_alpha, "verify_scale": scale}
        return {key: value for key, value in values.items() if value is not None}

    def _build_model(self, resume_ckpt: dict | None) -> RefDetModel:
        cfg = self.cfg
        if resume_ckpt is not None:
            model = RefDetModel(ModelConfig(**resume_ckpt["config"]))
            model.load_state_dict(resume_ckpt["train_state"]["model"])
            return model
        if cfg.weights is not None:
            ckpt = read_checkpoint(cfg.weights)
            arch = ModelConfig(**{**ckpt["config"], "imgsz": cfg.imgsz, **self._verify_settings()})
            if arch.support_size != cfg.support_size:
                raise ConfigError(
                    f"{cfg.weights}: field 'config.support_size' is {arch.support_size}, "
                    f"but --support-size is {cfg.support_size}"
                )
            if arch.support_encoder != cfg.support_encoder:
                raise ConfigError(
                    f"{cfg.weights}: field 'config.support_encoder' is {arch.support_encoder!r}, "
                    f"but --support-encoder is {cfg.support_encoder!r}"
                )
            model = RefDetModel(arch)
            model.load_state_dict(ckpt["model"])
            self.loaded[cfg.weights] = {"loaded": len(ckpt["model"]), "unused": 0}
            previous = ckpt.get("train_config", {})
            if "metrics" in ckpt and (previous.get("data"), previous.get("imgsz")) == (cfg.data, cfg.imgsz):
                self.start_metrics = {k: v for k, v in ckpt["metrics"].items() if k.startswith("val/")}
            return model
        try:
            arch = ModelConfig(
                imgsz=cfg.imgsz,
                support_size=cfg.support_size,
                support_encoder=cfg.support_encoder,
                support_kwargs=cfg.support_kwargs,
                **self._verify_settings(fresh=True),
            )
            model = create_model(arch, cfg.yolo_weights, cfg.support_weights, report=self.loaded)
        except WeightsError:
            raise
        except ValueError as err:
            raise ConfigError(f"support_encoder {cfg.support_encoder!r}: {err}") from None
        siamese = cfg.support_encoder == "siamese"
        if (cfg.yolo_weights if siamese else cfg.support_weights) is None:
            flag = "--yolo-weights" if siamese else "--support-weights FILE (or hub, a download through timm)"
            warnings.warn(
                f"RANDOM SUPPORT ENCODER: {cfg.support_encoder} starts from random weights (no {flag}); "
                "a random encoder cannot describe objects it never saw, so the detector will not find unseen "
                "targets",
                stacklevel=2,
            )
        return model

    def _restore(self, ckpt: dict) -> None:
        state = ckpt["train_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema.ema.load_state_dict(ckpt["model"])
        self.ema.updates = state["ema_updates"]
        self.computer.detection_loss.load_state_dict(state["detection_loss"])
        self.start_epoch = self.epoch = state["epoch"] + 1
        self.batch = state.get("batch", 0)
        self.partial = state.get("partial", self.partial)
        self.step = state["step"]
        self.bad_steps = state["bad_steps"]
        self.best_fitness = state["best_fitness"]
        self.history = state["history"]
        self.grad_log = state["grad_log"]
        set_rng_state(state["rng"])

    def _save(self, epoch: int, fitness: float) -> None:
        """best.pt when the epoch's ``fitness`` beats every earlier one, then last.pt."""
        if fitness > self.best_fitness:
            self.best_fitness = fitness
            self.best_written = True
            best = checkpoint_payload(
                self.ema.ema, epoch=epoch, metrics=self.history[-1], train_config=self.cfg.to_dict()
            )
            atomic_save(best, self.out / "best.pt")
        self._save_last(epoch)

    def _save_last(self, epoch: int) -> None:
        """last.pt: the EMA weights and everything --resume needs to go on exactly from this step (``epoch``
        is the last completed epoch, ``batch`` the batches trained of the next one)."""
        train_state = {
            "stage": self.cfg.stage,
            "epoch": epoch,
            "batch": self.batch,
            "partial": self.partial,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_updates": self.ema.updates,
            "detection_loss": self.computer.detection_loss.state_dict(),
            "bad_steps": self.bad_steps,
            "best_fitness": self.best_fitness,
            "history": self.history,
            "grad_log": self.grad_log,
            "rng": rng_state(),
        }
        payload = checkpoint_payload(self.ema.ema, train_state=train_state, train_config=self.cfg.to_dict())
        atomic_save(payload, self.out / "last.pt")

    def _set_lr(self) -> None:
        factor = lr_factor(self.step, self.cfg.warmup_steps, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.main and self.step % self.cfg.log_every == 0:
            self.grad_log.append({"step": self.step, **grad_norms(self.model)})
        torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.grad_clip
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1

    def train_epoch(self, epoch: int) -> dict[str, float] | None:
        """One pass over the training loader, from the batch a resumed run had reached. Returns the mean of
        each loss component (over the steps that had it: a triplet term exists only in batches that drew
        triplets) and of the weighted total; None when a stop was asked for, after last.pt was written at
        the step reached. ``save_every`` steps also write last.pt."""
        loader = build_train_loader(self.cfg, self.train_data, epoch, self.world_size, self.rank, self.batch)
        self.computer.train()
        sums, counts = self.partial["sums"], self.partial["counts"]
        started = time.perf_counter() - self.partial["seconds"]
        bar = tqdm(
            loader,
            desc=f"stage {self.cfg.stage} epoch {epoch + 1}/{self.epochs}",
            initial=self.batch,
            total=self.steps_per_epoch,
            disable=not self.main,
            leave=False,
        )
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar, start=self.batch):
            stepped = self._train_batch(i, batch)
            self.batch = i + 1
            if counts.get("total"):
                bar.set_postfix(
                    loss=f"{sums['total'] / counts['total']:.3f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                )
            if self.batch % self.cfg.grad_accum:
                continue
            self.partial["seconds"] = time.perf_counter() - started
            if self._should_stop():
                bar.close()
                if self.main:
                    self._save_last(epoch - 1)
                return None
            if stepped and self.main and self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self._save_last(epoch - 1)
        bar.close()
        self.batch, self.partial = 0, {"sums": {}, "counts": {}, "seconds": 0.0}
        return {name: value / counts[name] for name, value in sums.items()}

    def _train_batch(self, i: int, batch) -> bool:
        """Forward and backward of batch ``i`` of the epoch, adding its loss terms to the epoch's sums, and an
        optimizer step when it closes an accumulation; a non-finite loss is skipped and counted. Returns
        whether the optimizer stepped."""
        self._set_lr()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            terms = self.step_module(self._to_device(batch))
        total = combine(terms, self.weights)
        if not torch.isfinite(total):
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.bad_steps > self.cfg.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_steps} steps with a non-finite loss (last: "
                    f"{ {k: float(v.detach()) for k, v in terms.items()} }); lower --lr or check the data"
                )
            return False
        self.scaler.scale(total / self.cfg.grad_accum).backward()
        sums, counts = self.partial["sums"], self.partial["counts"]
        for name, value in (*terms.items(), ("total", total)):
            sums[name] = sums.get(name, 0.0) + float(value.detach())
            counts[name] = counts.get(name, 0) + 1
        if (i + 1) % self.cfg.grad_accum:
            return False
        self._optimizer_step()
        return True

    def _should_stop(self) -> bool:
        """Whether a stop was asked for (in any process: every process stops at the same step)."""
        stop = self.stop_requested
        if self.world_size > 1:
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    @contextlib.contextmanager
    def _stop_on_signal(self):
        """While training, Ctrl-C (SIGINT) or SIGTERM asks for a stop at the end of the step in progress,
        with last.pt written there; the same signal again then ends the process at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum, frame) -> None:
            self.stop_requested = True
            signal.signal(signum, previous[signum])
            if self.main:
                name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                tqdm.write(
                    f"{name}: finishing this step, then saving last.pt ({name} again: quit without saving)"
                )

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, ask_to_stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def validate(self) -> dict[str, float]:
        """The EMA model's ``val/`` figures: raw metrics at the default threshold, online and offline ST-IoU,
        and the operating point chosen on this validation (``val/conf``, ``val/st_iou_at_conf``)."""
        total = sum(len(scored_frames(v, self.cfg.val_stride)) for v in self.val_data.videos)
        with tqdm(total=total, desc="validation", unit="frame", leave=False) as bar:
            metrics, raw = self.validator(self.ema.ema, bar.update)
        scores = {f"val/{k}": metrics["raw"]["overall"][k] for k in METRIC_KEYS}
        scores.update({f"val/st_iou_{m}": metrics[m]["overall"]["st_iou"] for m in ("online", "offline")})
        point = choose_operating_point(self.validator, raw)
        scores.update({"val/conf": point["conf"], "val/st_iou_at_conf": point["st_iou"]})
        return scores

    def _record(
        self, epoch: int, losses: dict[str, float], seconds: float, scores: dict | None = None
    ) -> None:
        """Validate the EMA model (unless ``scores`` already hold its ``val/`` figures), append the epoch's
        row, write checkpoints, results.csv and plots."""
        row = {"epoch": epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({f"loss/{k}": v for k, v in losses.items()})
        row.update(self.validate() if scores is None else scores)
        row["fitness"] = fitness(row)
        row["bad_steps"] = self.bad_steps
        row["epoch_seconds"] = seconds
        self.history.append(row)
        self._save(epoch, row["fitness"])
        self._write_results()

    def fit(self) -> dict:
        """Train every remaining epoch; returns the last row of ``results.csv``.

        Row 0 (``epoch`` 0) scores the starting weights before any step, so every run carries its own
        baseline and ``best.pt`` is never worse on validation than what the run started from. When
        ``--weights`` is a ``best.pt`` validated on the same data and size, its stored figures are row 0.
        """
        with self._stop_on_signal():
            if self.main:
                for line in self.describe():
                    tqdm.write(line)
                self.out.mkdir(parents=True, exist_ok=True)
                for stale in self.out.glob(".*.pt.*.tmp"):  # left by a run killed while writing a checkpoint
                    stale.unlink()
                save_config(self.cfg, self.out / "config.yaml")
                if not self.history:
                    self._record(-1, {}, 0.0, self.start_metrics)
            for epoch in range(self.start_epoch, self.epochs):
                self.epoch = epoch
                if self._should_stop():
                    self.interrupted = True
                    break
                start = time.perf_counter() - self.partial["seconds"]
                losses = self.train_epoch(epoch)
                if losses is None:
                    self.interrupted = True
                    break
                if self.world_size > 1:
                    self._check_replicas()
                if self.main:
                    self._record(epoch, losses, time.perf_counter() - start)
        if self.world_size > 1:
            dist.barrier()
        return self.history[-1] if self.history else {}

    def _write_results(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with open(self.out / "results.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        plot_training(self.history, self.grad_log, self.out)

    def _check_replicas(self) -> None:
        """Every process must hold the same weights after an epoch; a mismatch stops the run."""
        digest = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(digest) for _ in range(self.world_size)]
        dist.all_gather(gathered, digest)
        values = [float(g) for g in gathered]
        if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
            raise TrainingError(f"replicas diverged: weight checksums {values}")
