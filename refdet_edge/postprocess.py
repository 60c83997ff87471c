"""Post-processing shared by every backend: score threshold, NMS, ``max_det``, boxes to original pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from refdet_edge.preprocess import LetterboxInfo


@dataclass(frozen=True)
class FrameDetections:
    """Detections of one frame: ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,) target index."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.scores.numel()


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    infos: list[LetterboxInfo] | None = None,
    conf: float = 0.25,
    iou: float = 0.5,
    max_det: int = 100,
) -> list[FrameDetections]:
    """Decoded boxes (B, A, 4) xyxy in model-input pixels and probabilities (B, A, N) -> per-frame detections.

    Every (anchor, target) pair over ``conf`` is a candidate; NMS runs per target (torchvision
    ``batched_nms``). With ``infos`` the boxes are mapped back to the original frame's pixels (clipped to
    it). Boxes without area are dropped (a box in the letterbox bars clips to zero height), then the
    ``max_det`` best survive.
    """
    if boxes.dim() != 3 or scores.dim() != 3 or boxes.shape[:2] != scores.shape[:2] or boxes.shape[2] != 4:
        raise ValueError(
            f"expected boxes (B, A, 4) and scores (B, A, N), got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    results = []
    for i in range(boxes.shape[0]):
        anchor, label = (scores[i] > conf).nonzero(as_tuple=True)
        cand_boxes, cand_scores = boxes[i, anchor].float(), scores[i, anchor, label].float()
        keep = batched_nms(cand_boxes, cand_scores, label, iou)
        kept = cand_boxes[keep]
        if infos is not None:
            kept = infos[i].to_original(kept)
        area = (kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])
        keep, kept = keep[area][:max_det], kept[area][:max_det]
        results.append(FrameDetections(kept, cand_scores[keep], label[keep]))
    return results
