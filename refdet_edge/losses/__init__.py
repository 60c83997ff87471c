"""Training losses: detection (WIoU v3 + DFL + all-anchor BCE), SupCon, prototype contrastive, triplet.

Every loss returns a 0-dim tensor (``DetectionLoss`` also a dict of its components); :func:`combine` makes
the weighted sum with :class:`LossWeights`, the single place where per-stage weights are applied.
"""

from .contrastive import PrototypeContrastiveLoss, SupConLoss
from .detection import Assignment, BoxLoss, DetectionLoss, WIoULoss, wiou_momentum
from .triplet import TripletLoss
from .weights import LossWeights, combine

__all__ = [
    "Assignment",
    "BoxLoss",
    "DetectionLoss",
    "LossWeights",
    "PrototypeContrastiveLoss",
    "SupConLoss",
    "TripletLoss",
    "WIoULoss",
    "combine",
    "wiou_momentum",
]
