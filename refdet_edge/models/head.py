"""Anchor-free decoupled head: DFL box branch and a prototype-similarity score branch per target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.block import DFL
from ultralytics.nn.modules.conv import Conv
from ultralytics.utils.tal import dist2bbox, make_anchors


class PrototypeHead(nn.Module):
    """YOLOv8-style head whose classes are the N targets given at run time.

    Box branch: YOLOv8's ``cv2`` towers (4 x ``reg_max`` distribution per anchor). Score branch: YOLOv8's
    ``cv3`` towers (same layout, so pretrained YOLOv8 weights can seed them) ending in an embedding per
    anchor; its cosine with each target's projected prototype (the mean of its tokens), times a learned scale plus a learned bias,
    is one logit per target.
    """

    def __init__(
        self, channels: tuple[int, ...], strides: tuple[int, ...], reg_max: int = 16, embed_dim: int = 64
    ) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.strides = strides
        c2 = max(16, channels[0] // 4, reg_max * 4)
        c3 = max(channels[0], 80)
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in channels
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, embed_dim, 1)) for c in channels
        )
        with torch.no_grad():  # start with short box sides: targets are small (a few strides at most)
            for tower in self.cv2:
                tower[-1].bias.copy_((-0.5 * torch.arange(reg_max, dtype=torch.float)).repeat(4))
        self.proto = nn.ModuleList(nn.Linear(c, embed_dim) for c in channels)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.logit_bias = nn.Parameter(torch.tensor(-8.0))
        self.dfl = DFL(reg_max)

    def forward(self, feats: list[torch.Tensor], prototypes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fused levels (B, C_l, H_l, W_l) and prototypes (N, T, C_l) -> the detections dict.

        Keys: ``pred_dist`` (B, A, 4*reg_max) DFL logits, ``pred_scores`` (B, A, N) logits,
        ``anchor_points`` (A, 2) in grid units, ``stride_tensor`` (A, 1), ``boxes`` (B, A, 4) xyxy in
        model-input pixels.
        """
        dists, scores = [], []
        for cv2, cv3, proto, x, p in zip(self.cv2, self.cv3, self.proto, feats, prototypes, strict=True):
            dists.append(cv2(x).flatten(2))
            emb = F.normalize(cv3(x).flatten(2), dim=1)  # (B, E, HW)
            target = F.normalize(proto(p.mean(1)), dim=-1)  # (N, E)
            scores.append(torch.einsum("bea,ne->bna", emb, target))
        pred_dist = torch.cat(dists, 2)
        pred_scores = self.logit_scale * torch.cat(scores, 2) + self.logit_bias
        anchor_points, stride_tensor = make_anchors(feats, self.strides, 0.5)
        boxes = dist2bbox(self.dfl(pred_dist), anchor_points.transpose(0, 1)[None], xywh=False, dim=1)
        return {
            "pred_dist": pred_dist.transpose(1, 2),
            "pred_scores": pred_scores.transpose(1, 2),
            "anchor_points": anchor_points,
            "stride_tensor": stride_tensor,
            "boxes": (boxes * stride_tensor.transpose(0, 1)[None]).transpose(1, 2),
        }
