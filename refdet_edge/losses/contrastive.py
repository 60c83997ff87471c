"""Embedding losses of stage 2 (meta): supervised contrastive (SupCon) and prototype contrastive (CPE).

Labels are target identities within a batch; a label < 0 marks background (a background frame or a region
that is none of the targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import float32


def _check_embeddings(name: str, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"{name}: embeddings must be (M, E), got {tuple(embeddings.shape)}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{name}: labels must be (M,) = ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name}: labels must be an integer tensor, got {labels.dtype}")


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, "L_out" form).

    For each anchor i with positives P(i) (other rows with the same label)::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{k != i} exp(z_i.z_k / T) )

    with ``z`` the L2-normalised features; the loss is the mean of ``loss_i`` over anchors that have at
    least one positive (the others are skipped). Rows with a label < 0 (background) are all distinct: a
    background row is nobody's positive, not even another background row's, so it is never an anchor but
    appears as a negative in every denominator. With no valid anchor the loss is 0 (still in the graph).

    Args:
        temperature: T > 0.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SupConLoss temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @float32
    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: features (M, E) float, normalised inside; labels (M,) int. Returns: 0-dim loss."""
        _check_embeddings("SupConLoss", features, labels)
        z = F.normalize(features.float(), dim=1)
        num = z.shape[0]
        self_mask = torch.eye(num, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / self.temperature).masked_fill(self_mask, float("-inf"))
        labels = labels.to(z.device)
        positives = (labels[:, None] == labels[None, :]) & ~self_mask & (labels[:, None] >= 0)
        n_pos = positives.sum(1)
        valid = n_pos > 0
        if not valid.any():
            return z.sum() * 0.0
        log_prob = logits[valid] - torch.logsumexp(logits[valid], dim=1, keepdim=True)
        pos_log_prob = log_prob.masked_fill(~positives[valid], 0.0).sum(1) / n_pos[valid]
        return -pos_log_prob.mean()


class PrototypeContrastiveLoss(nn.Module):
    """Prototype contrastive loss (CPE): classify embeddings against the N target prototypes.

    Logits are cosine similarities divided by the temperature, plus one "background" logit whose
    similarity is the fixed ``margin``::

        logits_i = [cos(e_i, p_0), ..., cos(e_i, p_{N-1}), margin] / T
        loss     = mean_i cross_entropy(logits_i, label_i if label_i >= 0 else N)

    A row labelled -1 ("none of these") is thus pushed to have every prototype similarity below
    ``margin``; a labelled row must beat both the other prototypes and the margin, which is the decision
    the detector makes at run time (a target is present only if similar enough). With M = 0 the loss is 0
    (still in the graph).

    Args:
        temperature: T > 0.
        margin: similarity of the background logit, in [-1, 1].
    """

    def __init__(self, temperature: float = 0.1, margin: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"PrototypeContrastiveLoss temperature must be > 0, got {temperature}")
        if not -1.0 <= margin <= 1.0:
            raise ValueError(
                f"PrototypeContrastiveLoss margin is a cosine similarity in [-1, 1], got {margin}"
            )
        self.temperature = temperature
        self.margin = margin

    @float32
    def forward(
        self, embeddings: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Args: embeddings (M, E), prototypes (N, E), labels (M,) int in [0, N) or -1. Returns: 0-dim loss."""
        _check_embeddings("PrototypeContrastiveLoss", embeddings, labels)
        if prototypes.ndim != 2 or prototypes.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"PrototypeContrastiveLoss: prototypes must be (N, E) with E = {embeddings.shape[1]}, "
                f"got {tuple(prototypes.shape)}"
            )
        num_protos = prototypes.shape[0]
        labels = labels.to(embeddings.device)
        if labels.numel() and (labels.min() < -1 or labels.max() >= num_protos):
            raise ValueError(
                f"PrototypeContrastiveLoss: labels must be in [0, {num_protos}) or -1, got {labels.unique().tolist()}"
            )
        cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(prototypes.float(), dim=1).T  # (M, N)
        if cos.shape[0] == 0:
            return cos.sum() * 0.0
        logits = torch.cat((cos, cos.new_full((cos.shape[0], 1), self.margin)), dim=1) / self.temperature
        return F.cross_entropy(logits, torch.where(labels < 0, num_protos, labels).long())
