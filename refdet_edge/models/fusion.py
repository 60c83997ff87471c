"""CHEAF: Cross-scale Hybrid Efficient Attention Fusion of query features with target prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.conv import Conv, DWConv


class LinearCrossAttention(nn.Module):
    """Query-frame tokens attend to the prototype tokens of every target with linear-complexity attention.

    With the kernel feature map phi(x) = elu(x) + 1, attention is phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1):
    cost linear in the number of query tokens, and the (C x C) key-value summary is shared by the batch.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = F.elu(self.q(x).flatten(2)) + 1  # (B, C, HW)
        tokens = prototypes.reshape(-1, c)  # (N*T, C)
        k = F.elu(self.k(tokens)) + 1
        v = self.v(tokens)
        kv = k.transpose(0, 1) @ v  # (C, C)
        norm = torch.einsum("bcl,c->bl", q, k.sum(0)).clamp_min(1e-6)  # (B, HW)
        attended = torch.einsum("bcl,cd->bdl", q, kv) / norm[:, None]
        return self.out(attended.reshape(b, c, h, w))


class LevelFusion(nn.Module):
    """One pyramid level: local (short + long depthwise convolutions) and global (cross-attention) branches."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.short = DWConv(channels, channels, 3)
        self.long = DWConv(channels, channels, 7)
        self.mix = Conv(channels, channels, 1)
        self.attn = LinearCrossAttention(channels)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.short(x) + self.long(x)) + self.attn(x, prototypes)


class PrototypeGate(nn.Module):
    """Channel and spatial gate driven by the targets' global prototype (the mean of its tokens).

    Channel gate: a sigmoid of a projection of the mean target prototype. Spatial gate: for each location,
    the highest cosine similarity to any target's prototype, scaled and squashed, so locations that look
    like some target are kept and the rest damped.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = nn.Linear(channels, channels)
        self.embed = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        glob = prototypes.mean(1)  # (N, C)
        channel = torch.sigmoid(self.channel(glob.mean(0)))[None, :, None, None]
        similarity = torch.einsum(
            "bchw,nc->bnhw", F.normalize(self.embed(x), dim=1), F.normalize(glob, dim=1)
        )
        spatial = torch.sigmoid(self.scale * similarity.amax(1, keepdim=True) + self.bias)
        return x * (2 * channel) * (0.5 + spatial)


class CHEAF(nn.Module):
    """Fuses P3/P4/P5 with per-level prototypes: per-level hybrid fusion, top-down and bottom-up passes
    across levels, then the prototype-driven gate. Output channels equal input channels per level."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(LevelFusion(c) for c in channels)
        self.top_down = nn.ModuleList(Conv(channels[i + 1], channels[i], 1) for i in range(len(channels) - 1))
        self.bottom_up = nn.ModuleList(
            nn.Sequential(DWConv(channels[i], channels[i], 3, 2), Conv(channels[i], channels[i + 1], 1))
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
