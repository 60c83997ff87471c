"""CHEAF: Cross-scale Hybrid Efficient Attention Fusion of query features with a target's prototypes.

Fusion runs per (frame, target) item: item ``m`` of the features is fused with prototype set ``m`` only, so
a target's fused features depend on that target's references alone, in training with N targets as at
inference with one. CHEAF is an identity at initialisation (every residual branch ends in a zero-initialised
convolution and the gate is exactly 1), so the pretrained towers that read fused features start on the
neck's own features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.conv import DWConv


def zero_conv(c1: int, c2: int) -> nn.Conv2d:
    """A 1x1 convolution with zero weights and bias: the last layer of a residual branch that starts off."""
    conv = nn.Conv2d(c1, c2, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class LinearCrossAttention(nn.Module):
    """Query-frame tokens attend to their target's prototype tokens with kernelised linear attention.

    With phi(x) = elu(x) + 1, attention is phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1), linear in the number of
    query tokens. It is evaluated as (phi(Q) phi(K)^T) V: the same values, cheaper with few prototype tokens
    (T = 5) than the (C x C) key-value summary.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = zero_conv(channels, channels)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """x (M, C, H, W), prototypes (M, T, C) -> (M, C, H, W)."""
        q = F.elu(self.q(x).flatten(2)) + 1  # (M, C, HW)
        k = F.elu(self.k(prototypes)) + 1  # (M, T, C)
        weights = torch.einsum("mcl,mtc->mlt", q, k)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)
        attended = torch.einsum("mlt,mtc->mcl", weights, self.v(prototypes))
        return self.out(attended.reshape(x.shape))


class LevelFusion(nn.Module):
    """One pyramid level: local (short + long depthwise convolutions) and global (cross-attention) branches,
    both added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.short = DWConv(channels, channels, 3)
        self.long = DWConv(channels, channels, 7)
        self.mix = zero_conv(channels, channels)
        self.attn = LinearCrossAttention(channels)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.short(x) + self.long(x)) + self.attn(x, prototypes)


class PrototypeGate(nn.Module):
    """Channel and spatial gate driven by the item's target prototype (the mean of its tokens).

    Channel gate: 2 sigmoid(Linear(prototype)). Spatial gate: 2 sigmoid(scale * cosine(embed(x), prototype)
    + bias) per location. Linear, scale and bias start at zero, so both gates start at exactly 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = nn.Linear(channels, channels)
        nn.init.zeros_(self.channel.weight)
        nn.init.zeros_(self.channel.bias)
        self.embed = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.tensor(0.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        glob = prototypes.mean(1)  # (M, C)
        channel = 2 * torch.sigmoid(self.channel(glob))[:, :, None, None]
        similarity = torch.einsum("mchw,mc->mhw", F.normalize(self.embed(x), dim=1), F.normalize(glob, dim=1))
        spatial = 2 * torch.sigmoid(self.scale * similarity + self.bias)[:, None]
        return x * channel * spatial


class CHEAF(nn.Module):
    """Fuses P3/P4/P5 of M items with their prototypes (M, T, C_l): per-level hybrid fusion, top-down and
    bottom-up passes across levels, then the prototype-driven gate. Output channels equal input channels."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(LevelFusion(c) for c in channels)
        self.top_down = nn.ModuleList(
            zero_conv(channels[i + 1], channels[i]) for i in range(len(channels) - 1)
        )
        self.bottom_up = nn.ModuleList(
            nn.Sequential(DWConv(channels[i], channels[i], 3, 2), zero_conv(channels[i], channels[i + 1]))
            for i in range(len(channels) - 1)
        )
        self.gates = nn.ModuleList(PrototypeGate(c) for c in channels)

    def forward(self, feats: list[torch.Tensor], prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = [level(x, p) for level, x, p in zip(self.levels, feats, prototypes, strict=True)]
        for i in range(len(fused) - 2, -1, -1):
            fused[i] = fused[i] + F.interpolate(self.top_down[i](fused[i + 1]), size=fused[i].shape[-2:])
        for i in range(len(fused) - 1):
            fused[i + 1] = fused[i + 1] + self.bottom_up[i](fused[i])
        return [gate(x, p) for gate, x, p in zip(self.gates, fused, prototypes, strict=True)]
