"""Pretrained weights from local files: an ultralytics YOLOv8 checkpoint and a timm/DINOv2 state dict."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from refdet_edge.models.refdet import RefDetModel


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or does not fit the model; the message names the file."""


def _match(model: RefDetModel, mapped: dict[str, torch.Tensor], path: Path) -> int:
    own = model.state_dict()
    bad = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    if bad:
        detail = ", ".join(
            f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape) if k in own else 'absent'}"
            for k in bad[:3]
        )
        raise WeightsError(f"{path}: {len(bad)} tensors do not fit this architecture ({detail})")
    model.load_state_dict(mapped, strict=False)
    return len(mapped)


def _yolo_key(key: str, detect_index: int) -> str | None:
    """ultralytics DetectionModel key -> this model's key, or None for tensors this model has no use for."""
    layer = re.match(r"model\.(\d+)\.(.*)", key)
    if layer is None:
        return None
    index, rest = int(layer.group(1)), layer.group(2)
    if index < detect_index:
        return f"backbone.layers.{index}.{rest}"
    return f"head.{rest}" if re.match(r"(cv2\.\d+\.\d+|cv3\.\d+\.[01])\.", rest) else None


def load_yolo_weights(model: RefDetModel, path: str | Path) -> dict[str, int]:
    """Load an ultralytics ``.pt`` checkpoint: backbone and neck, plus the Detect box towers (``cv2``) and
    the first two layers of its class towers (``cv3``) into the head. The 80-class output layer and the fixed
    DFL are not used. Every tensor the model takes from the file must match in name and shape.
    """
    from ultralytics.nn.tasks import torch_safe_load

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such YOLO weights file")
    if path.suffix != ".pt":
        raise WeightsError(f"{path}: expected an ultralytics .pt checkpoint")
    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: not a readable ultralytics checkpoint ({err})") from err
    source = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if source is None or not hasattr(source, "state_dict"):
        raise WeightsError(f"{path}: no 'model' entry; is it an ultralytics checkpoint?")
    state = source.float().state_dict()
    detect_index = len(model.backbone.layers)
    mapped = {new: v for k, v in state.items() if (new := _yolo_key(k, detect_index)) is not None}
    backbone_keys = {k for k in model.state_dict() if k.startswith("backbone.")}
    missing = backbone_keys - mapped.keys()
    if missing:
        raise WeightsError(f"{path}: {len(missing)} backbone tensors missing, e.g. {sorted(missing)[:3]}")
    loaded = _match(model, mapped, path)
    return {"loaded": loaded, "unused": len(state) - loaded}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (loaded with ``weights_only=True``)."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: not a readable state dict ({err})") from err
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a dict of tensors")
    return state


def load_dinov2_weights(model: RefDetModel, path: str | Path) -> dict[str, int]:
    """Load a timm or original-DINOv2 state dict into the support encoder (position embeddings resampled to
    the configured support size once, here, never at run time)."""
    path = Path(path)
    state = checkpoint_filter_fn(read_state_dict(path), model.support.vit)
    own = model.support.vit.state_dict()
    missing = own.keys() - state.keys()
    if missing:
        raise WeightsError(
            f"{path}: {len(missing)} support-encoder tensors missing, e.g. {sorted(missing)[:3]}"
        )
    mapped = {f"support.vit.{k}": v for k, v in state.items() if k in own}
    return {"loaded": _match(model, mapped, path), "unused": len(state) - len(mapped)}
