"""Training configuration: defaults, a YAML file (``--config``) and command-line flags over it, in that order.

The resolved configuration is written beside the checkpoints as ``config.yaml``, so a run can be repeated
with ``refdet train --config runs/x/config.yaml``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

NEGATIVE_STRATEGIES = ("background", "cross_class", "mixed")

# The encoder and verification a run starts with when no --weights says otherwise: the configuration that
# measured best on unseen objects (README, "Finding objects nobody trained on"). It is pretrained only with
# --support-weights (a timm state dict, or "hub"); without them training warns that the encoder is random.
DEFAULT_ENCODER = "timm:mobilenetv2_100"
FRESH_VERIFY_TOPK = 8
FRESH_VERIFY_SCALE = 2


class ConfigError(ValueError):
    """A bad configuration value; the message names the file (if any) and the field."""


def _encoder_ok(name: str) -> bool:
    from refdet_edge.models.support import check_encoder_name

    try:
        check_encoder_name(name)
    except ValueError:
        return False
    return True


def _support_multiple(name: str) -> int:
    """What the support size must be a multiple of (a timm model's own rule is checked when it is built)."""
    from refdet_edge.models.support import SIZE_MULTIPLE

    return SIZE_MULTIPLE.get(name, 1)


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
    weight_decay: float = 0.05  # AdamW's, on weight matrices only (never norms, biases, scalars)
    freeze_bn: bool = True  # BatchNorm running statistics stay fixed in training (affine weights train)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept as loaded in every stage
    warmup_steps: int = 50
    grad_accum: int = 1
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    ema_tau: float = 200.0
    amp: bool = True  # on CUDA only
    device: str = "auto"
    workers: int = 2
    yolo_weights: str | None = None
    support_encoder: str = DEFAULT_ENCODER  # siamese (the query backbone) | dinov2 | timm:NAME
    support_weights: str | None = None  # the support encoder's state dict, or "hub" (a download through timm)
    support_kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model arguments of timm:NAME
    verify_topk: int | None = None  # appearance verification of the head's best K per frame (0: off;
    # None: as the --weights checkpoint, else FRESH_VERIFY_TOPK, or off for siamese); verify_alpha: the
    # head's share of a verified score
    verify_alpha: float | None = None
    verify_scale: int | None = None  # the verifier crops from frames at this multiple of imgsz (None: as
    # --weights, else FRESH_VERIFY_SCALE when verifying, 1 when not)
    weights: str | None = None  # previous stage's checkpoint to start from
    resume: str | None = None  # last.pt of an interrupted run; the run's own settings come from it
    out: str = "runs/train"
    exist_ok: bool = False  # train into a folder that holds a run already (its best.pt kept unless beaten)
    save_every: int | None = None  # optimizer steps between mid-epoch saves of last.pt
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
                "support_encoder",
                _encoder_ok(self.support_encoder),
                "must be siamese, dinov2 or timm:NAME",
            ),
            (
                "support_size",
                self.support_size > 0 and self.support_size % _support_multiple(self.support_encoder) == 0,
                f"must be a positive multiple of {_support_multiple(self.support_encoder)} for the "
                f"{self.support_encoder} encoder",
            ),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("verify_topk", self.verify_topk is None or self.verify_topk >= 0, "must be >= 0"),
            (
                "verify_alpha",
                self.verify_alpha is None or 0.0 <= self.verify_alpha <= 1.0,
                "must be between 0 and 1",
            ),
            ("verify_scale", self.verify_scale is None or self.verify_scale >= 1, "must be >= 1"),
            (
                "freeze",
                isinstance(self.freeze, list) and all(isinstance(f, str) and f for f in self.freeze),
                "must be a list of parameter-name prefixes such as backbone or head.cv2",
            ),
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
            ("save_every", self.save_every is None or self.save_every >= 1, "must be >= 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name}: {why} (got {getattr(self, name)!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` whose value is not None. With ``resume``
    the run's stored configuration replaces the defaults (see :func:`resume_config`)."""
    values = given_options(path, **overrides)
    if values.get("resume") is not None:
        return resume_config(read_resumable(values["resume"])["train_config"], values)
    try:
        return TrainConfig(**architecture_of_weights(values))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    except TypeError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None


def architecture_of_weights(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the support encoder and size of the ``weights`` checkpoint where the user gave none:
    a stage goes on with the encoder it starts from (a different one is refused when the model is built)."""
    missing = [name for name in ("support_encoder", "support_size") if name not in values]
    if values.get("weights") is None or not missing:
        return values
    from refdet_edge.models.checkpoint import read_checkpoint

    stored = read_checkpoint(values["weights"]).get("config", {})
    return {**{name: stored[name] for name in missing if name in stored}, **values}


def given_options(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The options a user gave: the YAML file at ``path``, then ``overrides`` whose value is not None."""
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
    return values


def read_resumable(resume: str | Path) -> dict[str, Any]:
    """The checkpoint ``resume`` (a last.pt), which must hold a training state and its run's configuration."""
    from refdet_edge.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(resume)
    if "train_state" not in ckpt or not isinstance(ckpt.get("train_config"), dict):
        raise ConfigError(f"{resume}: holds no training state (a best.pt?); resume from a last.pt")
    return ckpt


RESUME_FREE = ("resume", "device", "workers", "val_batch_size", "save_every", "max_bad_steps", "exist_ok")
PATH_FIELDS = ("data", "out", "weights", "yolo_weights", "support_weights")


def _effective(name: str, value: Any, stage: int) -> Any:
    """A stored or given value as the run uses it: paths resolved, None epochs/lr as the stage's default."""
    if value is None and name in ("epochs", "lr"):
        from refdet_edge.training.stages import stage_spec

        return getattr(stage_spec(stage), name)
    if value is not None and name in PATH_FIELDS:
        return Path(value).resolve()
    return value


def resume_conflicts(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``--name value (the run: stored)`` for each given option that would change a resumed run."""
    stage = stored.get("stage", 1)
    return [
        f"--{name.replace('_', '-')} {value} (the run: {stored[name]})"
        for name, value in given.items()
        if name in stored
        and value is not None
        and name not in RESUME_FREE
        and not (name == "data" and stored[name] is None)
        and _effective(name, value, stage) != _effective(name, stored[name], stage)
    ]


def resume_config(stored: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """A resumed run's configuration: the ``train_config`` stored in its last.pt, written to the folder that
    holds that file. ``given`` may repeat stored values or change only what leaves the result as it is
    (``RESUME_FREE``); anything else is refused, as is a run whose data folder is not there."""
    resume = given["resume"]
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    values["out"] = str(Path(resume).parent)
    conflicts = resume_conflicts(values, given)
    if conflicts:
        raise ConfigError(
            f"{resume}: {', '.join(conflicts)} would change the run being resumed; resume with no other "
            "options, or start a new run from its weights with --weights"
        )
    values.update({k: v for k, v in given.items() if v is not None})
    if values.get("data") is None:
        raise ConfigError(f"{resume}: the run's data folder is not recorded; give it with --data")
    if not Path(values["data"]).is_dir():
        raise ConfigError(
            f"{resume}: the run's data folder {values['data']} is not there "
            "(a relative path is read from the folder the run was started in)"
        )
    try:
        return TrainConfig(**values)
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{resume}: {err}") from None


def save_config(config: TrainConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
