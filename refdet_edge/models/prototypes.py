"""Prototypes: K reference encodings of each of N targets -> one prototype set per target and level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COMBINE_MODES = ("mean", "robust")


def combine_references(features: torch.Tensor, mode: str = "mean", temperature: float = 0.1) -> torch.Tensor:
    """Weights (N, K) that combine K reference features (N, K, D) of each target.

    ``mean`` weighs every reference alike (the mean of L2-normalised features). ``robust`` weighs each
    reference by a softmax of its cosine similarity to the target's mean direction, so that one outlier
    photo (wrong crop, occlusion) pulls the prototype less.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")
    n, k, _ = features.shape
    if mode == "mean":
        return features.new_full((n, k), 1.0 / k)
    unit = F.normalize(features, dim=-1)
    centre = F.normalize(unit.mean(dim=1, keepdim=True), dim=-1)
    return torch.softmax((unit * centre).sum(-1) / temperature, dim=1)


class PrototypeProjector(nn.Module):
    """Projects combined reference encodings into per-level prototype tokens and a global embedding.

    Per target the prototype of level ``l`` is a (T, C_l) token set: token 0 is the projected CLS feature,
    the other ``pool * pool`` tokens are projected patch tokens average-pooled to a ``pool`` x ``pool`` grid.
    ``embed`` maps the mean of the token set (CLS and pooled patches, before projection) into the shared
    embedding space used by the contrastive losses.
    """

    def __init__(
        self,
        in_dim: int,
        level_channels: tuple[int, ...],
        embed_dim: int,
        grid: tuple[int, int],
        pool: int = 2,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.pool = pool
        self.levels = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, c)) for c in level_channels
        )
        self.embed = nn.Linear(in_dim, embed_dim)

    @property
    def num_tokens(self) -> int:
        return 1 + self.pool * self.pool

    def tokens(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(M, D) CLS and (M, P, D) patch tokens -> (M, T, D) token set before projection."""
        m, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(m, d, *self.grid)
        pooled = F.adaptive_avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return torch.cat([cls[:, None], pooled], dim=1)

    def forward(
        self, cls: torch.Tensor, patches: torch.Tensor, n: int, k: int, mode: str = "mean"
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encodings of N*K references -> ([N, T, C_l] per level, global embedding (N, E))."""
        tokens = F.normalize(self.tokens(cls, patches), dim=-1).view(n, k, self.num_tokens, -1)
        weights = combine_references(tokens[:, :, 0], mode)
        combined = (tokens * weights[:, :, None, None]).sum(dim=1)
        return [proj(combined) for proj in self.levels], self.embed(combined.mean(1))
