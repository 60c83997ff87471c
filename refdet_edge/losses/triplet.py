"""Triplet loss with cosine distance (stage 3), with explicit triplets or batch-hard mining.

Labels are target identities; a label < 0 marks background and is different from every label, another
background label included (two background crops are not the same object).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import float32


def cosine_distance_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a_i, b_j)`` for a (M, E) and b (K, E); returns (M, K) in [0, 2]."""
    return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def mine_batch_hard(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hardest positive and hardest negative of each row, by cosine distance (no gradient).

    A positive of row i is another row with the same label >= 0; a negative is a row whose label differs
    from row i's (background labels < 0 differ from every label, so background rows are negatives of every
    anchor and never have positives).

    Args:
        embeddings: (M, E).
        labels: (M,) int.

    Returns:
        ``(pos_idx, neg_idx, valid)``, each (M,): the index of the farthest positive and of the nearest
        negative of each row, and whether the row has both (rows without them hold index 0 and must be
        ignored).
    """
    with torch.no_grad():
        dist = cosine_distance_matrix(embeddings.float(), embeddings.float())
        self_mask = torch.eye(len(labels), dtype=torch.bool, device=dist.device)
        same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
        pos_mask = same & ~self_mask
        neg_mask = ~same & ~self_mask
        pos_idx = dist.masked_fill(~pos_mask, float("-inf")).argmax(1)
        neg_idx = dist.masked_fill(~neg_mask, float("inf")).argmin(1)
        valid = pos_mask.any(1) & neg_mask.any(1)
    return pos_idx, neg_idx, valid


class TripletLoss(nn.Module):
    """Triplet margin loss on cosine distance: ``mean(relu(d(a, p) - d(a, n) + margin))``, ``d = 1 - cos``.

    Two ways to call it:

    - ``loss(anchor, positive, negative)`` with explicit (M, E) rows (optionally ``anchor_labels`` and
      ``negative_labels`` (M,), which are checked: a negative with its anchor's label raises ValueError);
    - ``loss.batch_hard(embeddings, labels)`` mines, for every row, the hardest positive and negative in the
      batch (:func:`mine_batch_hard`) and averages over rows that have both.

    Args:
        margin: the triplet margin (cosine distance lies in [0, 2]).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        if margin < 0:
            raise ValueError(f"TripletLoss margin must be >= 0, got {margin}")
        self.margin = margin

    @float32
    def forward(
        self,
        anchor: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        anchor_labels: torch.Tensor | None = None,
        negative_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: anchor, positive, negative (M, E); optional labels (M,) int. Returns: 0-dim loss."""
        if anchor.ndim != 2 or anchor.shape != positive.shape or anchor.shape != negative.shape:
            raise ValueError(
                "TripletLoss: anchor, positive and negative must all be (M, E), got "
                f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
            )
        if (anchor_labels is None) != (negative_labels is None):
            raise ValueError("TripletLoss: give both anchor_labels and negative_labels, or neither")
        if anchor_labels is not None:
            if anchor_labels.shape != (anchor.shape[0],) or negative_labels.shape != (anchor.shape[0],):
                raise ValueError(
                    f"TripletLoss: labels must be ({anchor.shape[0]},), got {tuple(anchor_labels.shape)} "
                    f"and {tuple(negative_labels.shape)}"
                )
            clash = (anchor_labels == negative_labels).nonzero().flatten()
            if clash.numel():
                raise ValueError(
                    f"TripletLoss: negative has the anchor's label in triplet rows {clash.tolist()} "
                    "(a negative must be a different target or background)"
                )
        if anchor.shape[0] == 0:
            return anchor.sum() * 0.0
        d_ap = 1.0 - F.cosine_similarity(anchor.float(), positive.float(), dim=1)
        d_an = 1.0 - F.cosine_similarity(anchor.float(), negative.float(), dim=1)
        return F.relu(d_ap - d_an + self.margin).mean()

    @float32
    def batch_hard(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batch-hard triplet loss.

        Args:
            embeddings: (M, E).
            labels: (M,) int; < 0 for background.

        Returns:
            0-dim loss averaged over rows that have a positive and a negative; 0 (still in the graph) when
            none has.
        """
        if embeddings.ndim != 2:
            raise ValueError(
                f"TripletLoss.batch_hard: embeddings must be (M, E), got {tuple(embeddings.shape)}"
            )
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(
                f"TripletLoss.batch_hard: labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}"
            )
        labels = labels.to(embeddings.device)
        pos_idx, neg_idx, valid = mine_batch_hard(embeddings, labels)
        if not valid.any():
            return embeddings.sum() * 0.0
        anchor = embeddings[valid]
        return self(anchor, embeddings[pos_idx[valid]], embeddings[neg_idx[valid]])
