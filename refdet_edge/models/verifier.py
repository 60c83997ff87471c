"""Appearance verification: the head's best candidates re-scored by the support encoder's view of them.

The head proposes; the support encoder, which describes the references, looks at each proposal. Per frame
and target, the ``topk`` local maxima of the head's logits (3 x 3 peaks on each pyramid level, so that one
object does not fill every slot) are cropped from the query frame with ``roi_align``: a square around the
box, ``context`` of its longer side added on every side, resampled to the support size, grey outside the
frame (as the letterbox pads the references). Each crop's global feature is compared with the target's
appearance (the mean of its L2-normalised reference features), and the candidate scores::

    score = cosine ** (1 - alpha) * sigmoid(head logit) ** alpha      (cosine clipped to [0, 1])

``alpha = 0`` is the cosine alone, the two-stage pipeline's ranking; every other anchor is suppressed. The
crops, the encoder and the scatter are all in the graph, so ``detector.onnx`` holds the verification too.
Only at inference: training scores the head alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from refdet_edge.preprocess import PAD_VALUE

SUPPRESSED_LOGIT = -20.0  # sigmoid ~ 2e-9: below any operating point
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

    def __init__(self, encoder: nn.Module, size: int, topk: int, context: float, alpha: float) -> None:
        super().__init__()
        if topk <= 0:
            raise ValueError(f"verify_topk must be positive, got {topk}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"verify_alpha must be in [0, 1], got {alpha}")
        if context < 0:
            raise ValueError(f"verify_context must be >= 0, got {context}")
        self._encoder = (encoder,)
        self.size, self.topk, self.context, self.alpha = size, topk, context, alpha

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
        top, index = candidates.transpose(1, 2).topk(k, dim=2)  # (B, N, K)
        picked = torch.gather(boxes[:, None].expand(-1, n, -1, -1), 2, index[..., None].expand(-1, -1, -1, 4))
        frame = torch.arange(b, device=boxes.device, dtype=boxes.dtype).view(b, 1, 1, 1).expand(-1, n, k, 1)
        rois = torch.cat([frame, square_regions(picked, self.context)], -1).flatten(0, 2)
        grey = PAD_VALUE / 255.0
        crops = roi_align(images - grey, rois, self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        cosine = (self.embed(crops + grey).view(b, n, k, -1) * appearance[None, :, None]).sum(-1)
        score = cosine.clamp(EPS, 1.0) ** (1.0 - self.alpha) * torch.sigmoid(top) ** self.alpha
        score = score.clamp(EPS, 1.0 - EPS)
        verified = torch.full_like(logits.transpose(1, 2), SUPPRESSED_LOGIT)
        return verified.scatter(2, index, torch.log(score) - torch.log1p(-score)).transpose(1, 2)
