"""Appearance verification: the head's best candidates re-scored by the support encoder's view of them.

The head proposes; the support encoder, which describes the references, looks at each proposal. Per frame
and target, the ``topk`` local maxima of the head's logits (3 x 3 peaks on each pyramid level, so that one
object does not fill every slot) are cropped from the query frame with ``roi_align``: a square around the
box, ``context`` of its longer side added on every side, resampled to the support size, grey outside the
frame (as the letterbox pads the references). Each crop's global feature is compared with the target's
appearance (the mean of its L2-normalised reference features), and the candidate scores::

    score = cosine ** (1 - alpha) * sigmoid(head logit) ** alpha      (cosine clipped to [0, 1])

``alpha = 0`` is the cosine alone, the two-stage pipeline's ranking; every other anchor is suppressed. With
``iou`` < 1 the ``topk`` are distinct: a peak that a better one overlaps by more than ``iou`` (the same
object on another pyramid level) gives its slot to the next object. With ``crop="letterbox"`` the crop
shows the box grown by ``context`` of its own width and height and grey on the rest of its square, as a
reference photo (the box and its margin, letterboxed) shows its target. The crops, the encoder and the
scatter are all in the graph, so ``detector.onnx`` holds the verification too. Only at inference:
training scores the head alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from refdet_edge.preprocess import PAD_VALUE

SUPPRESSED_LOGIT = -20.0  # sigmoid ~ 2e-9: below any operating point
POOL = 4  # with verify_iou < 1: distinct candidates are chosen among the best POOL * topk peaks
OVERLAP_PENALTY = 1e5  # an overlapped candidate ranks after every distinct one
CROPS = ("square", "letterbox")
EPS = 1e-6


def local_peaks(logits: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, A, N) logits over the levels' grids (``shapes``, row-major, in anchor order) -> (B, A, N) bool,
    True where an anchor is the maximum of its 3 x 3 neighbourhood on its level."""
    b, _, n = logits.shape
    peaks, start = [], 0
    for h, w in shapes:
        grid = logits[:, start : start + h * w].transpose(1, 2).reshape(b, n, h, w)
        pooled = F.max_pool2d(grid, 3, stride=1, padding=1)
        peaks.append((grid >= pooled).flatten(2).transpose(1, 2))
        start += h * w
    return torch.cat(peaks, 1)


def square_regions(boxes: torch.Tensor, context: float, min_side: float = 4.0) -> torch.Tensor:
    """(..., 4) xyxy boxes -> (..., 4) xyxy squares on the same centres, side = longer side * (1 + 2
    ``context``), at least ``min_side``."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    side = (boxes[..., 2:] - boxes[..., :2]).amax(-1, keepdim=True) * (1 + 2 * context)
    half = side.clamp(min=min_side) / 2
    return torch.cat([centre - half, centre + half], -1)


class AppearanceVerifier(nn.Module):
    """Re-scores the head's ``topk`` peaks per frame and target with ``encoder`` (see the module docstring).

    ``encoder`` is the model's support encoder, held without being registered (its weights stay under
    ``support.``): the verifier has no parameters of its own.
    """

    def __init__(
        self,
        encoder: nn.Module,
        size: int,
        topk: int,
        context: float,
        alpha: float,
        iou: float = 1.0,
        crop: str = "square",
    ) -> None:
        super().__init__()
        if topk <= 0:
            raise ValueError(f"verify_topk must be positive, got {topk}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"verify_alpha must be in [0, 1], got {alpha}")
        if context < 0:
            raise ValueError(f"verify_context must be >= 0, got {context}")
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"verify_iou must be in (0, 1], got {iou}")
        if crop not in CROPS:
            raise ValueError(f"verify_crop must be one of {CROPS}, got {crop!r}")
        self._encoder = (encoder,)
        self.size, self.topk, self.context, self.alpha, self.iou = size, topk, context, alpha, iou
        self.crop = crop

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) images in [0, 1] -> (M, D) L2-normalised global features."""
        return F.normalize(self._encoder[0](images).global_feature, dim=-1)

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor,
        logits: torch.Tensor,
        appearance: torch.Tensor,
        shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Query frames (B, 3, H, W), the head's boxes (B, A, 4) in input pixels and logits (B, A, N), the
        targets' appearance (N, D) -> verified logits (B, A, N)."""
        b, a, n = logits.shape
        k = min(self.topk, a)
        candidates = torch.where(local_peaks(logits, shapes), logits, torch.full_like(logits, -1e4))
        if self.iou < 1.0:
            top, index = self._distinct(candidates.transpose(1, 2), boxes, k)
        else:
            top, index = candidates.transpose(1, 2).topk(k, dim=2)  # (B, N, K)
        picked = torch.gather(boxes[:, None].expand(-1, n, -1, -1), 2, index[..., None].expand(-1, -1, -1, 4))
        frame = torch.arange(b, device=boxes.device, dtype=boxes.dtype).view(b, 1, 1, 1).expand(-1, n, k, 1)
        squares = square_regions(picked, self.context)
        rois = torch.cat([frame, squares], -1).flatten(0, 2)
        grey = PAD_VALUE / 255.0
        crops = roi_align(images - grey, rois, self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        if self.crop == "letterbox":
            crops = crops * self._letterbox_mask(picked.flatten(0, 2), squares.flatten(0, 2))[:, None]
        cosine = (self.embed(crops + grey).view(b, n, k, -1) * appearance[None, :, None]).sum(-1)
        score = cosine.clamp(EPS, 1.0) ** (1.0 - self.alpha) * torch.sigmoid(top) ** self.alpha
        score = score.clamp(EPS, 1.0 - EPS)
        verified = torch.full_like(logits.transpose(1, 2), SUPPRESSED_LOGIT)
        return verified.scatter(2, index, torch.log(score) - torch.log1p(-score)).transpose(1, 2)

    def _letterbox_mask(self, boxes: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
        """(M, S, S) masks of the ``letterbox`` crop: 1 on the box grown by ``context`` of its own width and
        height (a reference photo's crop), 0 on the rest of its square, which then shows the grey padding that
        letterboxing gave the references."""
        grown = (boxes[:, 2:] - boxes[:, :2]) * (1 + 2 * self.context)
        share = grown / (squares[:, 2:] - squares[:, :2])  # (M, 2): the grown box's share of the side
        grid = (
            (torch.arange(self.size, device=boxes.device, dtype=boxes.dtype) + 0.5) / self.size - 0.5
        ).abs()
        inside_x = grid[None, :] <= share[:, :1] / 2
        inside_y = grid[None, :] <= share[:, 1:] / 2
        return (inside_y[:, :, None] & inside_x[:, None, :]).to(boxes.dtype)

    def _distinct(
        self, candidates: torch.Tensor, boxes: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best of (B, N, A) candidate logits that no better one overlaps by IoU > ``iou``, among
        the best ``POOL * k`` (fast NMS: the peaks of one object on several levels take one slot, not
        several); the overlapped ones fill the slots that are left. -> logits and anchor indices (B, N, K)."""
        b, n, a = candidates.shape
        top, index = candidates.topk(min(POOL * k, a), dim=2)  # (B, N, M), best first
        pool = torch.gather(boxes[:, None].expand(-1, n, -1, -1), 2, index[..., None].expand(-1, -1, -1, 4))
        lt = torch.maximum(pool[..., :, None, :2], pool[..., None, :, :2])
        rb = torch.minimum(pool[..., :, None, 2:], pool[..., None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        area = (pool[..., 2:] - pool[..., :2]).clamp(min=0).prod(-1)
        iou = inter / (area[..., :, None] + area[..., None, :] - inter + EPS)  # (B, N, M, M)
        better = torch.ones(iou.shape[-1], iou.shape[-1], dtype=torch.bool, device=iou.device).triu(1)
        overlapped = ((iou > self.iou) & better).any(-2)  # (B, N, M): a better candidate covers it
        order = torch.where(overlapped, top - OVERLAP_PENALTY, top).topk(k, dim=2).indices
        return torch.gather(top, 2, order), torch.gather(index, 2, order)
