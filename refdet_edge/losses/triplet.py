"""Triplet loss with cosine distance (stage 3): an anchor against its positive and a set of negatives.

In training the rows come from the per-frame head (see :mod:`refdet_edge.training.prepare`): the anchor is
a target's prototype as the head sees it, the positive the head's embedding at the target's box, the
negatives the hardest head embeddings of a background frame or of another target. Labels are target
identities; a label < 0 marks background and is different from every label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import float32


class TripletLoss(nn.Module):
    """Triplet margin loss on cosine distance ``d = 1 - cos``.

    Row i has an anchor, P positives and K negatives (P = 1, K = 1 for (M, E) inputs)::

        loss_i = mean_{j,k} relu(d(a_i, p_ij) - d(a_i, n_ik) + margin)   over valid positives j, negatives k
        loss   = mean_i loss_i                                             over rows with a valid pair

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
        positive_mask: torch.Tensor | None = None,
        negative_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            anchor: (M, E).
            positive: (M, E), or (M, P, E) for P positives per row.
            negative: (M, E), or (M, K, E) for K negatives per row.
            anchor_labels, negative_labels: optional (M,) int, checked: a negative with its anchor's label
                raises ValueError.
            positive_mask, negative_mask: optional bool (M, P) and (M, K), which positives and negatives
                are valid (all when omitted).

        Returns:
            0-dim loss; 0 (still in the graph) when no row has a valid pair.
        """
        positive = positive[:, None] if positive.ndim == 2 else positive
        negative = negative[:, None] if negative.ndim == 2 else negative
        if anchor.ndim != 2 or any(
            t.ndim != 3 or (t.shape[0], t.shape[2]) != tuple(anchor.shape) for t in (positive, negative)
        ):
            raise ValueError(
                "TripletLoss: anchor must be (M, E), positive (M, E) or (M, P, E), negative (M, E) or "
                f"(M, K, E), got {tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
            )
        m = anchor.shape[0]
        masks = []
        for name, rows, mask in (
            ("positive", positive, positive_mask),
            ("negative", negative, negative_mask),
        ):
            if mask is None:
                mask = torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)
            if mask.shape != rows.shape[:2]:
                raise ValueError(
                    f"TripletLoss: {name}_mask must be {tuple(rows.shape[:2])}, got {tuple(mask.shape)}"
                )
            masks.append(mask)
        if (anchor_labels is None) != (negative_labels is None):
            raise ValueError("TripletLoss: give both anchor_labels and negative_labels, or neither")
        if anchor_labels is not None:
            if anchor_labels.shape != (m,) or negative_labels.shape != (m,):
                raise ValueError(
                    f"TripletLoss: labels must be ({m},), got {tuple(anchor_labels.shape)} "
                    f"and {tuple(negative_labels.shape)}"
                )
            clash = (anchor_labels == negative_labels).nonzero().flatten()
            if clash.numel():
                raise ValueError(
                    f"TripletLoss: negative has the anchor's label in triplet rows {clash.tolist()} "
                    "(a negative must be a different target or background)"
                )
        anchor = F.normalize(anchor.float(), dim=-1)
        d_ap = 1.0 - torch.einsum("me,mpe->mp", anchor, F.normalize(positive.float(), dim=-1))
        d_an = 1.0 - torch.einsum("me,mke->mk", anchor, F.normalize(negative.float(), dim=-1))
        valid = masks[0][:, :, None] & masks[1][:, None, :]  # (M, P, K)
        hinge = F.relu(d_ap[:, :, None] - d_an[:, None, :] + self.margin) * valid
        count = valid.sum((1, 2))
        rows = count > 0
        if not rows.any():
            return hinge.sum() * 0.0
        return (hinge.sum((1, 2))[rows] / count[rows]).mean()
