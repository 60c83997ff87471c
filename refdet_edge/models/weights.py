"""Pretrained weights from local files: an ultralytics YOLOv8 checkpoint, and timm or DINOv2 state dicts for
the support encoder (or, only when asked, a download through timm)."""

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
    """ultralytics DetectionModel key -> this model's key (backbone layers, and the Detect layer's box and
    class towers and DFL in the head), or None for a key outside the graph."""
    layer = re.match(r"model\.(\d+)\.(.*)", key)
    if layer is None:
        return None
    index, rest = int(layer.group(1)), layer.group(2)
    if index < detect_index:
        return f"backbone.layers.{index}.{rest}"
    return f"head.{rest}" if index == detect_index else None


def load_yolo_weights(model: RefDetModel, path: str | Path) -> dict[str, int]:
    """Load an ultralytics ``.pt`` checkpoint: backbone and neck, and the whole Detect layer (box towers
    ``cv2``, class towers ``cv3`` with the 80-class layer that gives the objectness prior, DFL) into the head.
    Every tensor of the file must fit one of the model's by name and shape, and every backbone and Detect
    tensor of the model must come from the file.
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
    mapped = {_yolo_key(k, detect_index) or k: v for k, v in state.items()}
    yolo_prefixes = ("backbone.", "head.cv2.", "head.cv3.", "head.dfl.")
    missing = {k for k in model.state_dict() if k.startswith(yolo_prefixes)} - mapped.keys()
    if missing:
        raise WeightsError(f"{path}: {len(missing)} YOLO tensors missing, e.g. {sorted(missing)[:3]}")
    return {"loaded": _match(model, mapped, path), "unused": 0}


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


def file_build_kwargs(path: str | Path, model_name: str) -> dict[str, str]:
    """The ``timm.create_model`` keyword arguments a safetensors file says it was made for (its metadata
    ``timm_kwargs``, such as ``pad_type=same``); {} when it names none. A file whose metadata ``arch`` is
    another model than ``model_name`` is refused."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("arch", model_name) != model_name:
        raise WeightsError(f"{path}: weights of timm model {meta['arch']!r}, not of {model_name!r}")
    pairs = [p.strip() for p in meta.get("timm_kwargs", "").split(",") if p.strip()]
    if any("=" not in p for p in pairs):
        raise WeightsError(
            f"{path}: metadata field 'timm_kwargs' {meta['timm_kwargs']!r} is not KEY=VALUE,..."
        )
    return dict(p.split("=", 1) for p in pairs)


def _support_net(model: RefDetModel, path: str | Path):
    net = getattr(model.support, "net", None)
    if net is None:
        raise WeightsError(
            f"{path}: the {model.config.support_encoder} support encoder shares the query backbone; "
            "its weights come with --yolo-weights"
        )
    return net


def _load_support_state(
    model: RefDetModel, state: dict[str, torch.Tensor], path: str | Path
) -> dict[str, int]:
    """Every tensor of the support encoder from ``state``; the file's classifier (unused: the encoder is built
    without one) is the only thing it may hold besides."""
    net = _support_net(model, path)
    own = net.state_dict()
    classifier = net.pretrained_cfg.get("classifier") or "classifier"
    unused = [k for k in state if k not in own and k.split(".")[0] == classifier]
    missing = sorted(own.keys() - state.keys())
    extra = sorted(state.keys() - own.keys() - set(unused))
    if missing or extra:
        raise WeightsError(
            f"{path}: does not fit support encoder {model.support.model_name!r}: {len(missing)} of its tensors "
            f"missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
        )
    mapped = {f"support.net.{k}": v for k, v in state.items() if k in own}
    return {"loaded": _match(model, mapped, Path(path)), "unused": len(unused)}


def load_dinov2_weights(model: RefDetModel, path: str | Path) -> dict[str, int]:
    """Load a timm or original-DINOv2 state dict into a DINOv2 support encoder (position embeddings resampled
    to the configured support size once, here, never at run time)."""
    path = Path(path)
    if model.config.support_encoder != "dinov2":
        raise WeightsError(
            f"{path}: DINOv2 weights, but the support encoder is {model.config.support_encoder!r}"
        )
    state = checkpoint_filter_fn(read_state_dict(path), _support_net(model, path))
    return _load_support_state(model, state, path)


def load_timm_weights(model: RefDetModel, path: str | Path) -> dict[str, int]:
    """Load a timm state dict (.safetensors, .pth) into a ``timm:NAME`` support encoder; every tensor must
    match, and a file that names its build arguments (safetensors metadata) must have been made for the
    configured ``support_kwargs``."""
    path = Path(path)
    _support_net(model, path)
    stated = file_build_kwargs(path, model.support.model_name)
    built = {k: str(v) for k, v in model.config.support_kwargs.items()}
    if any(built.get(k) != v for k, v in stated.items()):
        raise WeightsError(
            f"{path}: made for timm.create_model(..., {', '.join(f'{k}={v}' for k, v in stated.items())}), "
            f"but the encoder was built with support_kwargs {model.config.support_kwargs}"
        )
    return _load_support_state(model, read_state_dict(path), path)


def load_hub_weights(model: RefDetModel) -> dict[str, int]:
    """Download the support encoder's pretrained weights through timm (needs a network; only on request)."""
    import timm

    net = _support_net(model, "hub")
    kwargs = dict(model.config.support_kwargs)
    if getattr(net, "patch_embed", None) is not None:
        kwargs["img_size"] = model.config.support_size
    try:
        source = timm.create_model(model.support.model_name, pretrained=True, num_classes=0, **kwargs)
    except Exception as err:
        raise WeightsError(
            f"hub: could not download {model.support.model_name!r} through timm ({err})"
        ) from err
    return _load_support_state(model, source.state_dict(), "hub")


def load_support_weights(model: RefDetModel, path: str | Path) -> dict[str, int]:
    """The support encoder's weights from ``path`` (``hub``: downloaded through timm), by encoder kind."""
    if str(path) == "hub":
        return load_hub_weights(model)
    if model.config.support_encoder == "dinov2":
        return load_dinov2_weights(model, path)
    return load_timm_weights(model, path)
