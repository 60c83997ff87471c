"""Building models and saving/loading this project's checkpoints (atomic writes, ``weights_only`` loads)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from refdet_edge import __version__
from refdet_edge.models.refdet import ModelConfig, RefDetModel
from refdet_edge.models.weights import (
    WeightsError,
    file_build_kwargs,
    load_support_weights,
    load_yolo_weights,
)

CHECKPOINT_FORMAT = "refdet-edge/1"


def create_model(
    config: ModelConfig | None = None,
    yolo_weights: str | Path | None = None,
    support_weights: str | Path | None = None,
    report: dict[str, dict[str, int]] | None = None,
    **overrides: Any,
) -> RefDetModel:
    """The one entry point for a fresh model: architecture from ``config`` (or keyword overrides of the
    defaults), random initialisation unless weights are given: ``yolo_weights`` an ultralytics ``.pt``,
    ``support_weights`` the support encoder's state dict (or ``hub``, see :func:`load_support_weights`).
    A timm safetensors file that names its build arguments adds them to ``support_kwargs``. ``report``, when
    given, receives each weights file's tensor counts (``{path: {"loaded": n, "unused": m}}``)."""
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        raise TypeError("pass either a ModelConfig or keyword overrides, not both")
    if support_weights is not None and config.support_encoder.startswith("timm:"):
        stated = file_build_kwargs(support_weights, config.support_encoder.removeprefix("timm:"))
        config = replace(config, support_kwargs={**stated, **config.support_kwargs})
    model = RefDetModel(config)
    report = {} if report is None else report
    if yolo_weights is not None:
        report[str(yolo_weights)] = load_yolo_weights(model, yolo_weights)
    if support_weights is not None:
        report[str(support_weights)] = load_support_weights(model, support_weights)
    return model


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file under the process umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename: never a truncated file. The
    file gets the user's usual permissions (``mkstemp`` alone would leave it readable by its owner only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_payload(model: RefDetModel, **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds: format tag, package version, architecture config, weights, and ``extra``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


ULTRALYTICS_HINT = "an ultralytics checkpoint: use --yolo-weights"


def _pickles_ultralytics_model(path: Path) -> bool:
    """Whether the torch archive at ``path`` pickles an ultralytics model (judged from its bytes, nothing
    unpickled). Checked before loading: once ultralytics' own safe loader has run in the process (it does
    for ``--yolo-weights``), its model classes are allowed globals and ``weights_only=True`` would load one."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        return bool(pickles) and b"ultralytics.nn." in archive.read(pickles[0])


def _why_unreadable(path: Path) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is, judged from its bytes (nothing is
    unpickled): cut short, or something else."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        return "truncated (the file ends early)" if head in (b"", b"PK\x03\x04") else "not a checkpoint"
    return "not a refdet-edge checkpoint (it holds Python objects, not only tensors)"


def _format_number(tag: Any) -> int | None:
    """``N`` of a ``refdet-edge/N`` format tag, else None."""
    prefix = CHECKPOINT_FORMAT.split("/")[0] + "/"
    if isinstance(tag, str) and tag.startswith(prefix) and tag[len(prefix) :].isdigit():
        return int(tag[len(prefix) :])
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of this project with ``weights_only=True`` (loading never runs code). Every failure
    is a one-line :class:`WeightsError`: no such file, not a checkpoint, an ultralytics checkpoint, truncated,
    or written by a newer version."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint")
    if _pickles_ultralytics_model(path):
        raise WeightsError(f"{path}: {ULTRALYTICS_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise WeightsError(f"{path}: {_why_unreadable(path)}") from None
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    number = _format_number(found)
    if number is not None and number > _format_number(CHECKPOINT_FORMAT):
        raise WeightsError(
            f"{path}: from a newer version of refdet-edge ({ckpt.get('version', '?')}, format {found}); "
            f"this is {__version__}, which reads {CHECKPOINT_FORMAT}: upgrade refdet-edge"
        )
    if found != CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{path}: not a refdet-edge checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    return ckpt


def load_model(path: str | Path) -> RefDetModel:
    """Rebuild the architecture stored in a checkpoint and load its weights; a mismatch names the file."""
    ckpt = read_checkpoint(path)
    try:
        model = RefDetModel(ModelConfig(**ckpt["config"]))
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: field 'config' does not describe a known architecture ({err})") from err
    result = model.load_state_dict(ckpt["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{path}: weights do not fit the architecture (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
    return model
