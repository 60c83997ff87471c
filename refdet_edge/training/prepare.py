"""Loss preparation: the small layer between model and losses, one function per batch kind.

Each function runs the model once on its batch and returns the unweighted loss components as live tensors;
the trainer weighs them with :func:`refdet_edge.losses.combine` and backpropagates the sum once.

- detection batch: box / DFL / BCE over every anchor from :class:`DetectionLoss`; with stage 2+ weights also
  CPE (each query's fused global feature against the N prototypes of the batch; "none of these" for
  background and mismatched queries) and SupCon (support and query global features of the same target pulled
  together).
- triplet batch: anchor = support-path embedding of a reference photo, positive and negative = query-path
  embeddings of crops, triplet margin loss with label checks.
- mixed batch: both, merged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from refdet_edge.losses import (
    DetectionLoss,
    LossWeights,
    PrototypeContrastiveLoss,
    SupConLoss,
    TripletLoss,
)
from refdet_edge.models.refdet import RefDetModel

BATCH_TYPES = ("detection", "triplet", "mixed")


def query_class_index(query_labels: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
    """(B,) index of each query's target among the N supports, -1 when it is not among them."""
    match = query_labels[:, None] == support_labels[None, :]
    return torch.where(match.any(1), match.float().argmax(1), torch.full_like(query_labels, -1))


class LossComputer(nn.Module):
    """Holds the loss modules of a run and turns a batch into loss components (see module docstring).

    It is an ``nn.Module`` with the model inside so that one ``forward`` (the thing DistributedDataParallel
    wraps) covers every model call of a step.
    """

    def __init__(self, model: RefDetModel, weights: LossWeights, triplet_margin: float = 0.3) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.detection_loss = DetectionLoss(reg_max=model.config.reg_max)
        self.supcon = SupConLoss()
        self.cpe = PrototypeContrastiveLoss()
        self.triplet = TripletLoss(triplet_margin)

    def detection(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch["query_images"], batch["support_images"], return_features=True)
        terms = self.detection_loss.terms(out["detections"], batch["targets"])
        if self.weights.cpe or self.weights.supcon:
            feats = out["features"]
            support_labels, query_labels = batch["support_labels"], batch["query_labels"]
            terms["cpe"] = self.cpe(
                feats["fused_global"],
                feats["support_global"],
                query_class_index(query_labels, support_labels),
            )
            present = query_labels >= 0
            terms["supcon"] = self.supcon(
                torch.cat([feats["support_global"], feats["query_global"][present]]),
                torch.cat([support_labels, query_labels[present]]),
            )
        return terms

    def triplet_terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        anchor = self.model.embed_references(batch["anchor_images"])
        positive = self.model.embed_images(batch["positive_images"])
        negative = self.model.embed_images(batch["negative_images"])
        loss = self.triplet(anchor, positive, negative, batch["anchor_labels"], batch["negative_labels"])
        return {"triplet": loss}

    def forward(self, batch: Mapping) -> dict[str, torch.Tensor]:
        kind = batch.get("batch_type")
        if kind == "detection":
            return self.detection(batch)
        if kind == "triplet":
            return self.triplet_terms(batch)
        if kind == "mixed":
            terms: dict[str, torch.Tensor] = {}
            if batch.get("detection") is not None:
                terms.update(self.detection(batch["detection"]))
            if batch.get("triplet") is not None:
                terms.update(self.triplet_terms(batch["triplet"]))
            if not terms:
                raise ValueError("mixed batch holds neither a detection nor a triplet batch")
            return terms
        raise ValueError(f"unknown batch_type {kind!r}: expected one of {BATCH_TYPES}")
