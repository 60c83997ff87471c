"""Support encoder: reference images -> a global feature and patch tokens (DINOv2 ViT-S/14 from timm)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from refdet_edge.preprocess import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_SUPPORT_MODEL = "vit_small_patch14_dinov2"


class SupportEncoder(nn.Module):
    """Any timm ViT behind one small interface: ``images -> (global (M, D), tokens (M, P, D))``.

    Images come in as RGB in [0, 1] at a fixed ``img_size`` (the position embeddings are built for that size
    and never interpolated at run time, which keeps the exported graph static); ImageNet normalisation is
    applied here so that every caller feeds the same [0, 1] tensors.
    """

    def __init__(self, model_name: str = DEFAULT_SUPPORT_MODEL, img_size: int = 224) -> None:
        super().__init__()
        self.vit = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=0)
        patch = self.vit.patch_embed.patch_size[0]
        if img_size % patch:
            raise ValueError(f"support size {img_size} must be a multiple of the patch size {patch}")
        self.model_name = model_name
        self.img_size = img_size
        self.embed_dim = self.vit.num_features
        self.grid = self.vit.patch_embed.grid_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features((images - self.mean) / self.std)
        prefix = self.vit.num_prefix_tokens
        return tokens[:, 0], tokens[:, prefix:]

    def last_blocks(self, n: int) -> list[nn.Module]:
        """The last ``n`` transformer blocks and the final norm: what stage 2 unfreezes."""
        return [*list(self.vit.blocks)[len(self.vit.blocks) - n :], self.vit.norm] if n > 0 else []
