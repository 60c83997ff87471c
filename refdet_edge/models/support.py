"""Support encoders: reference images -> a global feature and feature maps, behind one small interface.

Every encoder takes RGB images in [0, 1] at the fixed support size (it applies its own normalisation) and
returns :class:`SupportFeatures`. :func:`create_support_encoder` builds one from its name:

- ``siamese``: the query backbone itself (same module, shared weights, no parameters of its own); its
  P3/P4/P5 maps of the reference are the maps, so prototypes live in the space the head scores.
- ``timm:NAME``: any timm model; maps = its last feature map (CNN) or its patch tokens as a grid (ViT);
  global = its pooled output or CLS token. Normalisation comes from the model's timm pretrained config.
- ``dinov2``: ``timm:vit_small_patch14_dinov2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import group_parameters
from torch import nn

DINOV2_MODEL = "vit_small_patch14_dinov2"
TIMM_PREFIX = "timm:"
SIZE_MULTIPLE = {"siamese": 32, "dinov2": 14}  # timm:NAME: checked when built (its patch size or stride)


def check_encoder_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is ``siamese``, ``dinov2`` or ``timm:NAME``."""
    if name not in SIZE_MULTIPLE and not (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)):
        raise ValueError(f"support encoder must be 'siamese', 'dinov2' or 'timm:NAME', got {name!r}")


def support_size_multiple(name: str) -> int | None:
    """What the support size of encoder ``name`` must be a multiple of (None: known once the timm model
    is built)."""
    check_encoder_name(name)
    return SIZE_MULTIPLE.get(name)


@dataclass
class SupportFeatures:
    """Encoded reference images: a global feature (M, D_g) and feature maps (M, D_i, h_i, w_i), one map
    (timm, DINOv2) or one per pyramid level P3/P4/P5 (siamese)."""

    global_feature: torch.Tensor
    maps: list[torch.Tensor]


class SiameseEncoder(nn.Module):
    """The query backbone encoding the references: maps = its P3/P4/P5 outputs, global = the mean of P5.

    The backbone is held without being registered as a submodule, so its weights appear once (under
    ``backbone.``) in state dicts and parameter lists: this encoder has no parameters of its own and trains
    whenever the backbone does. Input: [0, 1] RGB, as the query frames (no normalisation).
    """

    def __init__(self, backbone: nn.Module, img_size: int) -> None:
        super().__init__()
        self._shared = (backbone,)  # a tuple: nn.Module does not register what it holds
        self.img_size = img_size
        self.map_dims = tuple(backbone.channels)
        self.global_dim = backbone.channels[-1]
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.ones(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> SupportFeatures:
        maps = self._shared[0](images)
        return SupportFeatures(maps[-1].mean((2, 3)), maps)

    def stage_parameters(self, blocks: int) -> list[nn.Parameter]:
        """None: the shared weights are the backbone's, trained with it in every stage."""
        return []


class TimmEncoder(nn.Module):
    """A timm model (CNN or ViT) as a support encoder; ``kwargs`` go to ``timm.create_model``.

    A ViT is built for ``img_size`` (its position embeddings are never interpolated at run time, which keeps
    the exported graph static); the support size must be a multiple of its patch size, or of a CNN's total
    stride.
    """

    def __init__(self, model_name: str, img_size: int, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        if not timm.is_model(model_name):
            raise ValueError(f"support encoder: {model_name!r} is not a timm model name")
        try:
            net = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
            if getattr(net, "patch_embed", None) is not None and tuple(net.patch_embed.img_size) != (
                img_size,
                img_size,
            ):
                net = timm.create_model(
                    model_name, pretrained=False, num_classes=0, img_size=img_size, **kwargs
                )
        except TypeError as err:
            raise ValueError(
                f"support_kwargs {kwargs} do not fit timm model {model_name!r} ({err})"
            ) from None
        self.net = net
        self.model_name = model_name
        self.img_size = img_size
        self.is_vit = getattr(net, "patch_embed", None) is not None
        multiple = net.patch_embed.patch_size[0] if self.is_vit else net.feature_info[-1]["reduction"]
        if img_size % multiple:
            raise ValueError(
                f"support size {img_size} must be a multiple of {multiple} for timm model {model_name!r}"
            )
        self.map_dims = (net.num_features,)
        self.global_dim = net.num_features
        data = resolve_data_config(model=net)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> SupportFeatures:
        feats = self.net.forward_features((images - self.mean) / self.std)
        pooled = self.net.forward_head(feats, pre_logits=True)
        if self.is_vit:
            grid = self.net.patch_embed.grid_size
            patches = feats[:, self.net.num_prefix_tokens :]
            feats = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)
        return SupportFeatures(pooled, [feats])

    def stage_parameters(self, blocks: int) -> list[nn.Parameter]:
        """Parameters of the last ``blocks`` block groups of timm's coarse grouping: transformer blocks
        (the last one with the final norm) or CNN stages (the last one with the head convolution/norm)."""
        if blocks <= 0:
            return []
        groups = list(group_parameters(self.net, self.net.group_matcher(coarse=True)).values())
        params = dict(self.net.named_parameters())
        return [params[name] for group in groups[-blocks:] for name in group]


def create_support_encoder(
    name: str, img_size: int, backbone: nn.Module, kwargs: dict[str, Any] | None = None
) -> SiameseEncoder | TimmEncoder:
    """The support encoder called ``name`` (see the module docstring) at support size ``img_size``."""
    multiple = support_size_multiple(name)
    if multiple is not None and img_size % multiple:
        raise ValueError(
            f"support_size must be a multiple of {multiple} for the {name} encoder, got {img_size}"
        )
    if name == "siamese":
        if kwargs:
            raise ValueError(f"the siamese encoder takes no support_kwargs, got {kwargs}")
        return SiameseEncoder(backbone, img_size)
    return TimmEncoder(DINOV2_MODEL if name == "dinov2" else name[len(TIMM_PREFIX) :], img_size, kwargs)
