"""YOLOv8-style detection loss for reference-based episodes: WIoU v3 box loss, DFL and all-anchor BCE.

The model scores every anchor of a query image against the N targets of its episode (one logit per
target), so "class" here means "which of the episode's N references". Targets are assigned with
ultralytics' ``TaskAlignedAssigner`` exactly as YOLOv8 trains; the differences from ultralytics'
``v8DetectionLoss`` are the box loss (Wise-IoU v3 instead of CIoU), targets given as pixel xyxy rows per
episode, and the number of classes taken from each call (N changes from episode to episode).

The classification BCE runs over every anchor and every target: anchors that match no box (and all
anchors of a background frame) are pushed towards 0 for every target, which is how the model learns to
stay silent on frames where the object is absent (trap 3 of DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.utils.loss import DFLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import TaskAlignedAssigner, bbox2dist, dist2bbox

from ._precision import float32
from .weights import combine

#: Weight the initial value of WIoU v3's running mean keeps after ``n * t`` updates (the paper's 0.05).
WIOU_RESIDUAL = 0.05
#: Run length (training batches) assumed by losses built outside a trainer; the trainer passes its own.
DEFAULT_RUN_BATCHES = 1000


def wiou_momentum(run_batches: int) -> float:
    """Momentum of WIoU v3's running mean for a run of ``run_batches`` training batches.

    The paper (Tong et al. 2023, section on WIoU v3; reference code ``1 - pow(0.05, 1 / (n * t))``, n batches
    per epoch, t epochs) sets ``m = 1 - 0.05 ** (1 / (n * t))``: after the run the mean's initial value keeps
    a weight of 5%, so the focusing follows the IoU level of the whole run instead of a fixed window.
    """
    if run_batches < 1:
        raise ValueError(f"WIoU run length must be at least 1 batch, got {run_batches}")
    return 1.0 - WIOU_RESIDUAL ** (1.0 / run_batches)


class Assignment(NamedTuple):
    """What ``TaskAlignedAssigner`` gives one batch: decoded boxes (B, A, 4) in grid units, assigned boxes
    (B, A, 4) xyxy in pixels, soft targets (B, A, N) and the foreground mask (B, A)."""

    pred_bboxes: torch.Tensor
    target_bboxes: torch.Tensor
    target_scores: torch.Tensor
    fg_mask: torch.Tensor


class WIoULoss(nn.Module):
    """Wise-IoU v3 (Tong et al. 2023, arXiv:2301.10051): IoU loss with a dynamic non-monotonic focusing.

    For a predicted box and its target, with ``L_IoU = 1 - IoU``::

        R_WIoU = exp(((x - x_gt)^2 + (y - y_gt)^2) / (W_g^2 + H_g^2)*)   # centres; W_g, H_g enclosing box
        beta   = L_IoU* / mean(L_IoU)                                    # outlier degree
        r      = beta / (delta * alpha^(beta - delta))                   # focusing coefficient
        loss   = r * R_WIoU * L_IoU

    ``*`` marks a value detached from the graph (the enclosing diagonal and ``L_IoU`` inside beta).
    ``mean(L_IoU)`` is the buffer ``iou_mean``, an exponential running mean (initial value 1) updated in
    training mode with the batch mean of ``L_IoU`` *before* beta is computed, as in the paper's reference
    code; in eval mode it is frozen. The mean is kept per process (not synchronised across DDP ranks).

    Args:
        alpha: focusing parameter alpha (1.9 in the paper).
        delta: focusing parameter delta (3 in the paper): ``r = 1`` where ``beta = delta``.
        momentum: weight of the new batch mean in the running mean update (:func:`wiou_momentum` of the
            run's length).
        eps: added to the enclosing diagonal to avoid a division by zero.
    """

    iou_mean: torch.Tensor

    def __init__(
        self,
        alpha: float = 1.9,
        delta: float = 3.0,
        momentum: float | None = None,
        eps: float = 1e-7,
    ):
        super().__init__()
        momentum = wiou_momentum(DEFAULT_RUN_BATCHES) if momentum is None else momentum
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"WIoU momentum must be in [0, 1], got {momentum}")
        self.alpha = alpha
        self.delta = delta
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("iou_mean", torch.tensor(1.0))

    def forward(self, pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Per-pair WIoU v3 loss.

        Args:
            pred_boxes: (n, 4) predicted boxes, xyxy.
            target_boxes: (n, 4) target boxes, xyxy, same units as ``pred_boxes``.

        Returns:
            (n,) loss of each pair (an empty tensor for n = 0; the running mean is then left unchanged).
        """
        if pred_boxes.ndim != 2 or pred_boxes.shape[-1] != 4 or pred_boxes.shape != target_boxes.shape:
            raise ValueError(
                f"WIoULoss expects pred and target boxes of shape (n, 4), got {tuple(pred_boxes.shape)} "
                f"and {tuple(target_boxes.shape)}"
            )
        iou_loss = 1.0 - bbox_iou(pred_boxes, target_boxes, xywh=False).squeeze(-1)
        if self.training and iou_loss.numel():
            with torch.no_grad():
                batch_mean = iou_loss.detach().mean().to(self.iou_mean.dtype)
                self.iou_mean.mul_(1.0 - self.momentum).add_(self.momentum * batch_mean)

        pred_centre = (pred_boxes[:, :2] + pred_boxes[:, 2:]) / 2
        target_centre = (target_boxes[:, :2] + target_boxes[:, 2:]) / 2
        centre_dist2 = (pred_centre - target_centre).pow(2).sum(-1)
        enclose_lt = torch.minimum(pred_boxes[:, :2], target_boxes[:, :2])
        enclose_rb = torch.maximum(pred_boxes[:, 2:], target_boxes[:, 2:])
        enclose_diag2 = (enclose_rb - enclose_lt).pow(2).sum(-1).add(self.eps).detach()
        r_wiou = torch.exp(centre_dist2 / enclose_diag2)

        beta = iou_loss.detach() / self.iou_mean
        focus = beta / (self.delta * torch.pow(self.alpha, beta - self.delta))
        return focus * r_wiou * iou_loss


class BoxLoss(nn.Module):
    """WIoU v3 + DFL over foreground anchors, weighted by target scores (ultralytics' ``BboxLoss`` with WIoU).

    Args:
        reg_max: DFL bins per box side (16 in YOLOv8).
        wiou: the WIoU v3 module (holds the running mean); a default one when omitted.
    """

    def __init__(self, reg_max: int = 16, wiou: WIoULoss | None = None):
        super().__init__()
        self.reg_max = reg_max
        self.wiou = wiou if wiou is not None else WIoULoss()
        self.dfl = DFLoss(reg_max)

    def forward(
        self,
        pred_dist: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        target_bboxes: torch.Tensor,
        target_scores: torch.Tensor,
        target_scores_sum: torch.Tensor,
        fg_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Box and DFL losses; boxes and anchors in grid units (pixels / stride).

        Args:
            pred_dist: (B, A, 4 * reg_max) DFL logits, 4 sides (l, t, r, b) x reg_max bins.
            pred_bboxes: (B, A, 4) boxes decoded from ``pred_dist``, xyxy.
            anchor_points: (A, 2) anchor centres.
            target_bboxes: (B, A, 4) assigned target boxes, xyxy.
            target_scores: (B, A, N) assigned soft targets (zero rows off the foreground).
            target_scores_sum: 0-dim normaliser, ``max(target_scores.sum(), 1)``.
            fg_mask: (B, A) bool, foreground anchors.

        Returns:
            ``(box, dfl)``: 0-dim tensors, each ``sum_fg(loss * weight) / target_scores_sum`` with ``weight``
            the anchor's target score summed over targets; both exactly 0 (still in the graph) when no
            anchor is foreground.
        """
        fg = fg_mask.nonzero(as_tuple=True)
        weight = target_scores[fg].sum(-1)  # (n_fg,)
        loss_box = (self.wiou(pred_bboxes[fg], target_bboxes[fg]) * weight).sum() / target_scores_sum

        target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max - 1)  # (B, A, 4)
        loss_dfl = self.dfl(pred_dist[fg].view(-1, self.reg_max), target_ltrb[fg])  # (n_fg, 1)
        loss_dfl = (loss_dfl.squeeze(-1) * weight).sum() / target_scores_sum
        return loss_box, loss_dfl


class DetectionLoss(nn.Module):
    """Detection loss of one batch of episodes: WIoU v3 box loss, DFL and BCE over every anchor.

    Args:
        box, dfl, cls: gains of the three components in the returned total (ultralytics' defaults).
        reg_max: DFL bins per box side; ``pred_dist`` must have ``4 * reg_max`` channels.
        topk, alpha, beta: ``TaskAlignedAssigner`` settings (YOLOv8's 10, 0.5, 6.0). ``topk`` is capped at
            the number of anchors.
        wiou_alpha, wiou_delta, wiou_momentum: WIoU v3 settings, see :class:`WIoULoss` (the trainer passes
            :func:`wiou_momentum` of its run's length).

    The WIoU running mean is a buffer of this module: it moves in training mode only (``.eval()`` freezes it,
    e.g. for validation losses), and it is saved with the module's ``state_dict`` so that a resumed run
    continues with the same focusing.
    """

    def __init__(
        self,
        box: float = 7.5,
        dfl: float = 1.5,
        cls: float = 0.5,
        reg_max: int = 16,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        wiou_alpha: float = 1.9,
        wiou_delta: float = 3.0,
        wiou_momentum: float | None = None,
    ):
        super().__init__()
        self.gains = {"box": box, "dfl": dfl, "cls": cls}
        self.reg_max = reg_max
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.box_loss = BoxLoss(reg_max, WIoULoss(wiou_alpha, wiou_delta, wiou_momentum))
        self.register_buffer("proj", torch.arange(reg_max, dtype=torch.float), persistent=False)

    @float32
    def assign(self, detections: Mapping[str, torch.Tensor], targets: torch.Tensor) -> Assignment:
        """Assign targets to anchors with ``TaskAlignedAssigner`` (inputs as in :meth:`terms`)."""
        pred_dist, pred_scores, anchor_points, stride_tensor = self._check(detections)
        batch_size, num_anchors, num_classes = pred_scores.shape
        gt_labels, gt_bboxes, mask_gt = self._pad_targets(
            targets, batch_size, num_classes, pred_scores.device
        )
        dist = pred_dist.view(batch_size, num_anchors, 4, self.reg_max).softmax(-1).matmul(self.proj)
        pred_bboxes = dist2bbox(dist, anchor_points, xywh=False)  # grid units, (B, A, 4)
        assigner = TaskAlignedAssigner(
            topk=min(self.topk, num_anchors),
            num_classes=num_classes,
            alpha=self.alpha,
            beta=self.beta,
            stride=torch.unique(stride_tensor).tolist(),
        )
        _, target_bboxes, target_scores, fg_mask, _ = assigner(
            pred_scores.detach().sigmoid(),
            pred_bboxes.detach() * stride_tensor,
            anchor_points * stride_tensor,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        return Assignment(pred_bboxes, target_bboxes, target_scores.to(pred_scores.dtype), fg_mask.bool())

    @float32
    def terms(self, detections: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three loss components, unweighted and attached to the graph.

        Args:
            detections: the model's detections dict for B query images scored against N targets, A anchors:
                ``pred_dist`` (B, A, 4 * reg_max) DFL logits (4 sides x reg_max bins), ``pred_scores``
                (B, A, N) logits, ``anchor_points`` (A, 2) anchor centres in grid units, ``stride_tensor``
                (A, 1). Other keys (``boxes``) are ignored.
            targets: (T, 6) rows ``[batch_idx, class_idx, x1, y1, x2, y2]``, class_idx in 0..N-1, boxes in
                model-input pixels. Images with no row are background frames; T may be 0.

        Returns:
            ``{"box", "dfl", "cls"}``: 0-dim float32 tensors. ``box`` and ``dfl`` are exactly 0 when no
            anchor is assigned (zero targets); ``cls`` is the BCE summed over all B * A * N logits divided
            by ``max(target_scores_sum, 1)``, as in YOLOv8.
        """
        pred_bboxes, target_bboxes, target_scores, fg_mask = self.assign(detections, targets)
        pred_dist, pred_scores, anchor_points, stride_tensor = self._check(detections)
        target_scores_sum = target_scores.sum().clamp(min=1)

        loss_cls = (
            F.binary_cross_entropy_with_logits(pred_scores, target_scores, reduction="sum")
            / target_scores_sum
        )
        loss_box, loss_dfl = self.box_loss(
            pred_dist,
            pred_bboxes,
            anchor_points,
            target_bboxes / stride_tensor,
            target_scores,
            target_scores_sum,
            fg_mask,
        )
        return {"box": loss_box, "dfl": loss_dfl, "cls": loss_cls}

    def forward(
        self, detections: Mapping[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gain-weighted total and its components (see :meth:`terms` for the inputs).

        Returns:
            ``(total, components)``: ``total`` is the 0-dim tensor ``box_gain * box + dfl_gain * dfl +
            cls_gain * cls`` to backpropagate (not multiplied by the batch size, unlike ultralytics);
            ``components`` maps ``"box"``, ``"dfl"``, ``"cls"`` to *detached, unweighted* 0-dim tensors, so
            ``combine(components, gains)`` reproduces ``total``.
        """
        parts = self.terms(detections, targets)
        return combine(parts, self.gains), {name: value.detach() for name, value in parts.items()}

    def _check(self, detections: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Validate the detections dict; return float32 (pred_dist, pred_scores, anchor_points, stride_tensor)."""
        missing = [
            k for k in ("pred_dist", "pred_scores", "anchor_points", "stride_tensor") if k not in detections
        ]
        if missing:
            raise ValueError(f"detections dict is missing {missing}; it has {sorted(detections)}")
        pred_dist = detections["pred_dist"].float()
        pred_scores = detections["pred_scores"].float()
        anchor_points = detections["anchor_points"].float()
        stride_tensor = detections["stride_tensor"].float()
        if pred_scores.ndim != 3 or pred_scores.shape[-1] == 0:
            raise ValueError(f"pred_scores must be (B, A, N) with N >= 1, got {tuple(pred_scores.shape)}")
        batch_size, num_anchors, _ = pred_scores.shape
        if pred_dist.shape != (batch_size, num_anchors, 4 * self.reg_max):
            raise ValueError(
                f"pred_dist must be (B, A, 4*reg_max) = ({batch_size}, {num_anchors}, {4 * self.reg_max}), "
                f"got {tuple(pred_dist.shape)}"
            )
        if anchor_points.shape != (num_anchors, 2):
            raise ValueError(
                f"anchor_points must be (A, 2) = ({num_anchors}, 2), got {tuple(anchor_points.shape)}"
            )
        if stride_tensor.shape != (num_anchors, 1):
            raise ValueError(
                f"stride_tensor must be (A, 1) = ({num_anchors}, 1), got {tuple(stride_tensor.shape)}"
            )
        return pred_dist, pred_scores, anchor_points, stride_tensor

    @staticmethod
    def _pad_targets(
        targets: torch.Tensor, batch_size: int, num_classes: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T, 6) target rows -> padded per image: labels (B, n, 1), xyxy boxes (B, n, 4), valid mask (B, n, 1)."""
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(
                f"targets must be (T, 6) rows [batch_idx, class_idx, x1, y1, x2, y2], got {tuple(targets.shape)}"
            )
        targets = targets.to(device=device, dtype=torch.float32)
        batch_idx = targets[:, 0].long()
        if targets.shape[0]:
            if batch_idx.min() < 0 or batch_idx.max() >= batch_size:
                raise ValueError(
                    f"target batch_idx must be in [0, {batch_size}), got {batch_idx.unique().tolist()}"
                )
            class_idx = targets[:, 1]
            if class_idx.min() < 0 or class_idx.max() >= num_classes:
                raise ValueError(
                    f"target class_idx must be in [0, {num_classes}) (N from pred_scores), "
                    f"got {class_idx.unique().tolist()}"
                )
            boxes = targets[:, 2:]
            if (boxes[:, 2:] < boxes[:, :2]).any():
                raise ValueError("target boxes must be xyxy with x2 >= x1 and y2 >= y1")
        counts = torch.bincount(batch_idx, minlength=batch_size)
        n_max = int(counts.max()) if targets.shape[0] else 0
        order = torch.argsort(batch_idx, stable=True)
        sorted_idx = batch_idx[order]
        within = torch.arange(targets.shape[0], device=device) - (counts.cumsum(0) - counts)[sorted_idx]
        padded = torch.zeros(batch_size, n_max, 5, device=device)
        padded[sorted_idx, within] = targets[order, 1:]
        mask_gt = (torch.arange(n_max, device=device) < counts[:, None]).unsqueeze(-1).float()
        return padded[..., :1], padded[..., 1:], mask_gt
