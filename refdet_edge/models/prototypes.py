"""Prototypes: K reference encodings of each of N targets -> one prototype set per target and level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refdet_edge.models.support import SupportFeatures

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


def grid_pool(maps: torch.Tensor, pool: int) -> torch.Tensor:
    """(M, D, h, w) -> (M, pool * pool, D): the cells of ``adaptive_avg_pool2d(maps, pool)``, computed with
    static slices so that any h, w (such as P5's 7 x 7 at support size 224) exports to ONNX. The cell bounds
    are floor and ceiling of non-negative quotients only: the tracer records this arithmetic on the traced
    sizes, and ONNX's integer division truncates where Python's floors (a ceiling written as
    ``-(-a // b)`` came out one row short on 7 x 7 maps)."""
    h, w = maps.shape[-2:]
    rows = [(i * h // pool, ((i + 1) * h + pool - 1) // pool) for i in range(pool)]
    cols = [(j * w // pool, ((j + 1) * w + pool - 1) // pool) for j in range(pool)]
    cells = [maps[:, :, r0:r1, c0:c1].mean((2, 3)) for r0, r1 in rows for c0, c1 in cols]
    return torch.stack(cells, dim=1)


class PrototypeProjector(nn.Module):
    """Projects combined reference encodings into per-level prototype tokens and a global embedding.

    Per target the prototype of level ``l`` is a (T, C_l) token set: token 0 describes the whole reference
    (the encoder's global feature for a one-map encoder, the level map's mean for the siamese one), the other
    ``pool * pool`` tokens are the map average-pooled to a ``pool`` x ``pool`` grid.

    - One map (timm, DINOv2): tokens are L2-normalised, combined over the K references, then each level has
      its own LayerNorm + Linear to C_l.
    - One map per level (siamese, maps already in the level's space): level ``l`` reads map ``l`` through a
      Linear initialised to the identity, so at initialisation prototypes are the reference's pooled neck
      features themselves.

    ``embed`` maps the combined global feature into the embedding space of the contrastive losses.
    """

    def __init__(
        self,
        map_dims: tuple[int, ...],
        global_dim: int,
        level_channels: tuple[int, ...],
        embed_dim: int,
        pool: int = 2,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.per_level = tuple(map_dims) == tuple(level_channels)
        if self.per_level:
            self.levels = nn.ModuleList(nn.Linear(c, c) for c in level_channels)
            with torch.no_grad():
                for proj in self.levels:
                    proj.weight.copy_(torch.eye(proj.in_features))
                    proj.bias.zero_()
        elif len(map_dims) == 1:
            d = map_dims[0]
            self.levels = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(d), nn.Linear(d, c)) for c in level_channels
            )
        else:
            raise ValueError(f"support maps of {map_dims} channels do not fit levels of {level_channels}")
        self.embed = nn.Linear(global_dim, embed_dim)

    @property
    def num_tokens(self) -> int:
        return 1 + self.pool * self.pool

    def tokens(self, features: SupportFeatures) -> list[torch.Tensor]:
        """One (M, T, D_i) token set per map, before projection."""
        if self.per_level:
            return [torch.cat([m.mean((2, 3))[:, None], grid_pool(m, self.pool)], 1) for m in features.maps]
        (m,) = features.maps
        tokens = torch.cat([features.global_feature[:, None], grid_pool(m, self.pool)], 1)
        return [F.normalize(tokens, dim=-1)]

    def forward(
        self, features: SupportFeatures, n: int, k: int, mode: str = "mean"
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encodings of N*K references -> ([N, T, C_l] per level, global embedding (N, E))."""
        glob = features.global_feature.view(n, k, -1)
        weights = combine_references(glob, mode)
        combined = [
            (t.view(n, k, *t.shape[1:]) * weights[:, :, None, None]).sum(1) for t in self.tokens(features)
        ]
        if not self.per_level:
            combined = combined * len(self.levels)
        prototypes = [proj(tokens) for proj, tokens in zip(self.levels, combined, strict=True)]
        embedding = self.embed((F.normalize(glob, dim=-1) * weights[:, :, None]).sum(1))
        return prototypes, embedding
