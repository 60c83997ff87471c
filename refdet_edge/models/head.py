"""Head: COCO YOLOv8 box and objectness towers on the neck, a target-identity branch on the fused features.

Per anchor ``a`` of frame ``b`` and target ``n``::

    logit[b, a, n] = obj_weight * objectness[b, a] + logit_scale * cosine[b, n, a] + logit_bias

- ``objectness``: the COCO Detect class towers (``cv3``, with their 80-class layer) on the neck features,
  max over the 80 class logits, so sigmoid(objectness) is YOLOv8's own max class score. Shared by targets.
- boxes: the COCO Detect box towers (``cv2``, DFL) on the neck features. Shared by targets.
- ``cosine``: between the anchor's identity embedding, computed from the features fused with target ``n``,
  and target ``n``'s embedding of its prototypes.

At initialisation ``obj_weight`` = 1 and ``logit_bias`` = -``logit_scale``, so a logit is objectness plus
``logit_scale * (cosine - 1)``: never above the pretrained objectness, lowered where the anchor looks unlike
the target. Identity is learned on top of the prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.tal import dist2bbox, make_anchors

# Of 0.5-8, the best-ranking start on ../shared/data/sot with COCO weights and an untrained siamese encoder
# (max-score anchor on the target in 44.7% of frames; objectness alone 44.0%).
INIT_LOGIT_SCALE = 2.0


class IdentityEmbedding(nn.Module):
    """Per-level linear maps C_l -> E (E = sum of C_l) shared by anchors and prototype tokens.

    Initialised as block identities (level ``l``'s channels into their own block of E), so at initialisation
    the cosine of an anchor's embedding with a target's embedding is the cosine of the anchor's features with
    the prototype of its own level, over sqrt(levels).
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.dim = sum(channels)
        self.levels = nn.ModuleList(nn.Conv2d(c, self.dim, 1) for c in channels)
        offset = 0
        with torch.no_grad():
            for conv, c in zip(self.levels, channels, strict=True):
                conv.weight.zero_()
                conv.weight[offset : offset + c, :, 0, 0] = torch.eye(c)
                conv.bias.zero_()
                offset += c

    def anchors(self, fused: list[torch.Tensor]) -> torch.Tensor:
        """Fused levels (M, C_l, H_l, W_l) -> L2-normalised per-anchor embeddings (M, E, A)."""
        return F.normalize(
            torch.cat([conv(x).flatten(2) for conv, x in zip(self.levels, fused, strict=True)], 2), dim=1
        )

    def targets(self, prototypes: list[torch.Tensor]) -> torch.Tensor:
        """Prototypes (N, T, C_l) -> (N, E): the L2-normalised sum over levels of each level's normalised
        embedding of the mean prototype token."""
        per_level = [
            F.normalize(F.linear(p.mean(1), conv.weight.flatten(1), conv.bias), dim=-1)
            for conv, p in zip(self.levels, prototypes, strict=True)
        ]
        return F.normalize(torch.stack(per_level).sum(0), dim=-1)


class PrototypeHead(nn.Module):
    """YOLOv8 head whose classes are the N targets given at run time (see the module docstring).

    ``cv2``, ``cv3`` and ``dfl`` are the ultralytics Detect layer's own modules (same names and shapes, so
    every tensor of a YOLOv8 checkpoint's Detect layer loads).
    """

    def __init__(self, detect: Detect, channels: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        self.reg_max = detect.reg_max
        self.strides = strides
        self.num_classes = detect.nc
        self.cv2, self.cv3, self.dfl = detect.cv2, detect.cv3, detect.dfl
        with torch.no_grad():  # random init: short box sides, targets are small (a few strides at most)
            for tower in self.cv2:
                tower[-1].bias.copy_((-0.5 * torch.arange(self.reg_max, dtype=torch.float)).repeat(4))
        self.identity = IdentityEmbedding(channels)
        self.obj_weight = nn.Parameter(torch.tensor(1.0))
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.logit_bias = nn.Parameter(torch.tensor(-INIT_LOGIT_SCALE))

    @property
    def embed_dim(self) -> int:
        return self.identity.dim

    def objectness(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Neck levels -> (B, A) COCO objectness logits: the max of the 80 class logits per anchor."""
        return torch.cat([cv3(x).flatten(2) for cv3, x in zip(self.cv3, feats, strict=True)], 2).amax(1)

    def forward(
        self, feats: list[torch.Tensor], fused: list[torch.Tensor], prototypes: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Neck levels (B, C_l, H_l, W_l), the same fused with each target (B*N, C_l, H_l, W_l; item
        b*N + n is frame b with target n) and prototypes (N, T, C_l) -> the detections dict.

        Keys: ``pred_dist`` (B, A, 4*reg_max) DFL logits, ``pred_scores`` (B, A, N) logits,
        ``anchor_points`` (A, 2) in grid units, ``stride_tensor`` (A, 1), ``boxes`` (B, A, 4) xyxy in
        model-input pixels, ``objectness`` (B, A) logits, ``embeddings`` (B, N, A, E) and
        ``target_embeddings`` (N, E), both L2-normalised.
        """
        b = feats[0].shape[0]
        pred_dist = torch.cat([cv2(x).flatten(2) for cv2, x in zip(self.cv2, feats, strict=True)], 2)
        objectness = self.objectness(feats)
        embeddings = self.identity.anchors(fused).unflatten(0, (b, -1))  # (B, N, E, A)
        targets = self.identity.targets(prototypes)
        cosine = torch.einsum("bnea,ne->ban", embeddings, targets)
        pred_scores = self.obj_weight * objectness[..., None] + self.logit_scale * cosine + self.logit_bias
        anchor_points, stride_tensor = make_anchors(feats, self.strides, 0.5)
        boxes = dist2bbox(self.dfl(pred_dist), anchor_points.transpose(0, 1)[None], xywh=False, dim=1)
        return {
            "pred_dist": pred_dist.transpose(1, 2),
            "pred_scores": pred_scores,
            "anchor_points": anchor_points,
            "stride_tensor": stride_tensor,
            "boxes": (boxes * stride_tensor.transpose(0, 1)[None]).transpose(1, 2),
            "objectness": objectness,
            "embeddings": embeddings.transpose(2, 3),
            "target_embeddings": targets,
        }
