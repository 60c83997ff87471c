"""Per-stage loss weights and the weighted sum the trainer backpropagates.

Component names are shared by every loss in this package: ``box``, ``dfl`` and ``cls`` come from
:class:`~refdet_edge.losses.detection.DetectionLoss`, ``supcon``, ``cpe`` and ``triplet`` from the embedding
losses. :func:`combine` is the only place where weights are applied, so a logged total is always the
weighted sum of its logged parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss component in the training objective (all >= 0).

    The detection gains default to ultralytics' YOLOv8 values (box 7.5, dfl 1.5, cls 0.5); the embedding
    losses default to 0; :mod:`refdet_edge.training.stages` sets them per training stage.
    """

    box: float = 7.5
    dfl: float = 1.5
    cls: float = 0.5
    supcon: float = 0.0
    cpe: float = 0.0
    triplet: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"loss weight {f.name!r} must be a number >= 0, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        """The weights as a plain dict keyed by component name."""
        return asdict(self)


def combine(
    components: Mapping[str, torch.Tensor], weights: LossWeights | Mapping[str, float]
) -> torch.Tensor:
    """Weighted sum ``sum_k weights[k] * components[k]`` over the components present.

    Args:
        components: component name -> scalar loss tensor (0-dim or one element). Pass live tensors to get
            a total that can be backpropagated; detached ones give a detached total (for logging).
        weights: a :class:`LossWeights` or a mapping name -> weight. Every component must have a weight;
            weights of absent components are ignored (a detection-only batch has no ``triplet``).

    Returns:
        0-dim tensor, the weighted sum.

    Raises:
        ValueError: on an empty ``components``, a component without a weight, or a non-scalar component.
    """
    weight_map = weights.as_dict() if isinstance(weights, LossWeights) else dict(weights)
    if not components:
        raise ValueError("combine() needs at least one loss component")
    missing = [name for name in components if name not in weight_map]
    if missing:
        raise ValueError(f"no weight for loss component(s) {missing}; weights given for {sorted(weight_map)}")
    terms = []
    for name, value in components.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"loss component {name!r} must be a one-element tensor, got {value!r}")
        terms.append(value.reshape(()) * weight_map[name])
    return torch.stack(terms).sum()
