"""Loss preparation: the small layer between model and losses, one function per batch kind.

Every batch kind runs the model once and returns the unweighted loss components as live tensors; the
trainer weighs them with :func:`refdet_edge.losses.combine` and backpropagates the sum once.

- detection batch: box / DFL / BCE over every anchor from :class:`DetectionLoss`; with stage 2+ weights also
  CPE (each query's fused global feature against the N prototypes of the batch; "none of these" for
  background and mismatched queries) and SupCon (support and query global features of the same target pulled
  together).
- triplet batch: a triplet loss in the space the per-frame head scores with (its ``embeddings`` and
  ``target_embeddings``), for triplet m of target c:
  anchor = ``target_embeddings[c]``, c's prototype as the head sees it;
  positives = the head's embeddings at the anchors ``TaskAlignedAssigner`` gives c's box in the positive
  frame (the anchors the BCE trains to fire there; a triplet whose box gets none is left out), each paired
  with every negative;
  negatives = the ``hard_negatives`` highest-scoring anchors for c of the negative frame (the would-be false
  positives): anywhere on a background frame, inside the other target's box on a cross-class frame (anywhere
  when no anchor centre lies in it).
- mixed batch: both parts in one forward pass: the frames concatenated (detection queries first) and scored
  against the union of both parts' targets; the detection terms come from the detection queries, the
  triplet term from the triplet frames.

With ``freeze_bn`` (the default) every BatchNorm stays in eval mode in training: its running statistics never
move, while its affine weights still train (see :mod:`refdet_edge.training.batchnorm`).
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
    wiou_momentum,
)
from refdet_edge.losses.detection import DEFAULT_RUN_BATCHES
from refdet_edge.models.refdet import RefDetModel
from refdet_edge.training.batchnorm import freeze_batchnorm

BATCH_TYPES = ("detection", "triplet", "mixed")
#: Keys of the detections dict that hold one entry per query frame (the others are shared by all frames).
PER_FRAME_KEYS = ("pred_dist", "pred_scores", "boxes", "embeddings", "objectness")


def query_class_index(query_labels: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
    """(B,) index of each query's target among the N supports, -1 when it is not among them."""
    match = query_labels[:, None] == support_labels[None, :]
    return torch.where(match.any(1), match.float().argmax(1), torch.full_like(query_labels, -1))


def select_frames(detections: Mapping[str, torch.Tensor], index: slice | torch.Tensor) -> dict:
    """The detections dict of the query frames ``index`` (shared keys such as ``anchor_points`` kept)."""
    return {k: v[index] if k in PER_FRAME_KEYS else v for k, v in detections.items()}


def merge_mixed(detection: Mapping, triplet: Mapping) -> tuple[dict, int]:
    """A mixed batch's two parts as one batch for one forward pass; returns it and its detection query count.

    Query frames: the detection part's, then the triplet part's. Supports: the union by label, the detection
    part's first, so its ``targets`` keep their class indices; a detection query showing a target that only
    the triplet part brought gets a target row too (as :class:`~refdet_edge.data.collate.RefDetCollator`
    merges episodes). ``triplets`` rows are re-indexed into the merged batch.
    """
    for key in ("query_images", "support_images"):
        if detection[key].shape[1:] != triplet[key].shape[1:]:
            raise ValueError(
                f"mixed batch: detection {key} {tuple(detection[key].shape)} and triplet {key} "
                f"{tuple(triplet[key].shape)} differ in their per-item shape"
            )
    device = detection["query_images"].device
    class_of = {label: i for i, label in enumerate(detection["support_labels"].tolist())}
    triplet_labels = triplet["support_labels"].tolist()
    new = [i for i, label in enumerate(triplet_labels) if label not in class_of]
    for i in new:
        class_of[triplet_labels[i]] = len(class_of)
    brought = {triplet_labels[i] for i in new}
    n = len(detection["query_images"])
    extra = [
        torch.cat([torch.tensor([b, class_of[label]], device=device), detection["query_boxes"][b].float()])
        for b, label in enumerate(detection["query_labels"].tolist())
        if label in brought
    ]
    remap = torch.tensor([class_of[label] for label in triplet_labels], device=device)
    triplets = triplet["triplets"].clone()
    triplets[:, 0] = remap[triplets[:, 0]]
    triplets[:, 1:] += n
    merged = {
        "batch_type": "mixed",
        "query_images": torch.cat([detection["query_images"], triplet["query_images"]]),
        "support_images": torch.cat([detection["support_images"], triplet["support_images"][new]]),
        "support_labels": torch.tensor(list(class_of), device=device),
        "query_labels": torch.cat([detection["query_labels"], triplet["query_labels"]]),
        "query_boxes": torch.cat([detection["query_boxes"], triplet["query_boxes"]]),
        "targets": torch.cat([detection["targets"], *[row[None] for row in extra]]),
        "triplets": triplets,
    }
    return merged, n


class LossComputer(nn.Module):
    """Holds the loss modules of a run and turns a batch into loss components (see module docstring).

    It is an ``nn.Module`` with the model inside so that one ``forward`` (the thing DistributedDataParallel
    wraps) covers every model call of a step.

    Args:
        model: the detector.
        weights: the stage's loss weights (CPE and SupCon are computed only when weighted).
        triplet_margin: margin of the triplet loss (cosine distance).
        hard_negatives: negative anchors per triplet.
        freeze_bn: keep every BatchNorm in eval mode in training (see the module docstring).
        run_batches: training batches of the whole run; sets WIoU v3's running-mean momentum
            (:func:`~refdet_edge.losses.wiou_momentum`).
    """

    def __init__(
        self,
        model: RefDetModel,
        weights: LossWeights,
        triplet_margin: float = 0.3,
        hard_negatives: int = 10,
        freeze_bn: bool = True,
        run_batches: int = DEFAULT_RUN_BATCHES,
    ) -> None:
        super().__init__()
        if hard_negatives < 1:
            raise ValueError(f"hard_negatives must be >= 1, got {hard_negatives}")
        self.model = model
        self.weights = weights
        self.hard_negatives = hard_negatives
        self.freeze_bn = freeze_bn
        self.detection_loss = DetectionLoss(
            reg_max=model.config.reg_max, wiou_momentum=wiou_momentum(run_batches)
        )
        self.supcon = SupConLoss()
        self.cpe = PrototypeContrastiveLoss()
        self.triplet = TripletLoss(triplet_margin)

    def train(self, mode: bool = True) -> LossComputer:
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm(self.model)
        return self

    def _run(self, batch: Mapping) -> dict:
        return self.model(batch["query_images"], batch["support_images"], return_features=True)

    def detection_terms(self, out: Mapping, batch: Mapping, frames: int) -> dict[str, torch.Tensor]:
        """Detection (and, when weighted, CPE and SupCon) terms of the first ``frames`` query frames."""
        detections = out["detections"]
        if frames != len(batch["query_images"]):
            detections = select_frames(detections, slice(0, frames))
        terms = self.detection_loss.terms(detections, batch["targets"])
        if self.weights.cpe or self.weights.supcon:
            feats = out["features"]
            support_labels, query_labels = batch["support_labels"], batch["query_labels"][:frames]
            terms["cpe"] = self.cpe(
                feats["fused_global"][:frames],
                feats["support_global"],
                query_class_index(query_labels, support_labels),
            )
            present = query_labels >= 0
            terms["supcon"] = self.supcon(
                torch.cat([feats["support_global"], feats["query_global"][:frames][present]]),
                torch.cat([support_labels, query_labels[present]]),
            )
        return terms

    def triplet_terms(
        self, detections: Mapping[str, torch.Tensor], batch: Mapping
    ) -> dict[str, torch.Tensor]:
        """The triplet term of ``batch["triplets"]`` in the head's embedding space (see module docstring)."""
        missing = [k for k in ("embeddings", "target_embeddings") if k not in detections]
        if missing:
            raise ValueError(f"triplet loss: the head's detections dict lacks {missing}")
        cls, pos, neg = batch["triplets"].unbind(1)
        emb = detections["embeddings"]  # (B, A, E), or (B, N, A, E) when fused per target
        pos_emb, neg_emb = (emb[pos, cls], emb[neg, cls]) if emb.ndim == 4 else (emb[pos], emb[neg])
        anchors = detections["target_embeddings"][cls]  # (M, E)

        rows = torch.arange(len(cls), device=cls.device, dtype=torch.float32)
        targets = torch.cat([rows[:, None], cls[:, None].float(), batch["query_boxes"][pos].float()], 1)
        fg = self.detection_loss.assign(select_frames(detections, pos), targets).fg_mask  # (M, A)

        with torch.no_grad():
            centres = detections["anchor_points"] * detections["stride_tensor"]  # (A, 2) pixels
            box = batch["query_boxes"][neg].to(centres.dtype)
            inside = ((centres[None] > box[:, None, :2]) & (centres[None] < box[:, None, 2:])).all(-1)
            negative_labels = batch["query_labels"][neg]
            in_box = ((negative_labels >= 0) & inside.any(1))[:, None]
            candidates = torch.where(in_box, inside, torch.ones_like(inside))
            scores = detections["pred_scores"][neg, :, cls].float().masked_fill(~candidates, float("-inf"))
            top, index = scores.topk(min(self.hard_negatives, scores.shape[1]), dim=1)
        negatives = torch.gather(neg_emb, 1, index[..., None].expand(-1, -1, neg_emb.shape[-1]))
        loss = self.triplet(
            anchors,
            pos_emb,
            negatives,
            batch["support_labels"][cls],
            negative_labels,
            positive_mask=fg,
            negative_mask=torch.isfinite(top),
        )
        return {"triplet": loss}

    def forward(self, batch: Mapping) -> dict[str, torch.Tensor]:
        kind = batch.get("batch_type")
        if kind == "detection":
            return self.detection_terms(self._run(batch), batch, len(batch["query_images"]))
        if kind == "triplet":
            return self.triplet_terms(self._run(batch)["detections"], batch)
        if kind == "mixed":
            if batch.get("detection") is None or batch.get("triplet") is None:
                raise ValueError("a mixed batch must hold both a detection and a triplet batch")
            merged, frames = merge_mixed(batch["detection"], batch["triplet"])
            out = self._run(merged)
            return {
                **self.detection_terms(out, merged, frames),
                **self.triplet_terms(out["detections"], merged),
            }
        raise ValueError(f"unknown batch_type {kind!r}: expected one of {BATCH_TYPES}")
