"""Training configuration: defaults, a YAML file (``--config``) and command-line flags over it, in that order.

The resolved configuration is written beside the checkpoints as ``config.yaml``, so a run can be repeated
with ``refdet train --config runs/x/config.yaml``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

NEGATIVE_STRATEGIES = ("background", "cross_class", "mixed")


class ConfigError(ValueError):
    """A bad configuration value; the message names the file (if any) and the field."""


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = None  # dataset root; None: the synthetic demo set, generated on first use
    stage: int = 1
    use_triplet: bool = False
    triplet_ratio: float = 0.3
    negative_strategy: str = "mixed"
    samples_per_class: int = 100
    triplet_weight: float = 0.5
    triplet_margin: float = 0.3
    epochs: int | None = None  # None: the stage's default
    batch_size: int = 2  # episodes (or triplet groups) per step
    n_way: int = 2
    k_shot: int = 3
    n_query: int = 4
    episodes_per_epoch: int | None = None  # None: enough episodes to show every training frame about once
    imgsz: int = 640
    crop: int | None = (
        None  # train on crop x crop windows of the imgsz-scaled frames (validation: whole frames)
    )
    support_size: int = 224
    lr: float | None = None  # None: the stage's default
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_accum: int = 1
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    ema_tau: float = 200.0
    amp: bool = True  # on CUDA only
    device: str = "auto"
    workers: int = 2
    yolo_weights: str | None = None
    dinov2_weights: str | None = None
    weights: str | None = None  # previous stage's checkpoint to start from
    resume: str | None = None  # last.pt of an interrupted run
    out: str = "runs/train"
    seed: int = 0
    log_every: int = 10  # steps between gradient-norm records
    max_bad_steps: int = 20  # non-finite losses tolerated before the run stops
    val_batch_size: int = 8
    val_stride: int = 1  # validate on every k-th frame of the validation split (refdet eval scores them all)

    def __post_init__(self) -> None:
        checks = [
            ("stage", self.stage in (1, 2, 3), "must be 1, 2 or 3"),
            (
                "negative_strategy",
                self.negative_strategy in NEGATIVE_STRATEGIES,
                f"must be one of {NEGATIVE_STRATEGIES}",
            ),
            ("triplet_ratio", 0.0 < self.triplet_ratio < 1.0, "must be between 0 and 1 (exclusive)"),
            (
                "use_triplet",
                not (self.use_triplet and self.stage == 1),
                "triplet mixing applies from stage 2 on",
            ),
            ("imgsz", self.imgsz > 0 and self.imgsz % 32 == 0, "must be a positive multiple of 32"),
            (
                "crop",
                self.crop is None or (self.crop % 32 == 0 and 0 < self.crop <= self.imgsz),
                "must be a multiple of 32 no larger than imgsz",
            ),
            (
                "support_size",
                self.support_size > 0 and self.support_size % 14 == 0,
                "must be a positive multiple of 14",
            ),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("val_stride", self.val_stride >= 1, "must be >= 1"),
            ("n_way", self.n_way >= 1, "must be >= 1"),
            ("k_shot", self.k_shot >= 1, "must be >= 1"),
            ("n_query", self.n_query >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("epochs", self.epochs is None or self.epochs >= 1, "must be >= 1"),
            ("lr", self.lr is None or self.lr > 0, "must be > 0"),
            ("samples_per_class", self.samples_per_class >= 1, "must be >= 1"),
            (
                "episodes_per_epoch",
                self.episodes_per_epoch is None or self.episodes_per_epoch >= 1,
                "must be >= 1",
            ),
            ("weights", not (self.weights and self.resume), "give --weights or --resume, not both"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name}: {why} (got {getattr(self, name)!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` whose value is not None."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: not a readable YAML file ({err})") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {unknown}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    except TypeError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None


def save_config(config: TrainConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
