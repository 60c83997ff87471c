"""The three training stages in one place: what trains, at which learning rate, with which loss weights.

| stage | trains | losses |
|---|---|---|
| 1 base | query backbone, fusion, head (support encoder frozen) | box + DFL + BCE |
| 2 meta | + prototype projections, global embeddings, last support blocks | + SupCon + CPE |
| 3 fine-tune | the same modules at a lower learning rate | + triplet |

"Last support blocks" are defined by the encoder (``stage_parameters``): DINOv2 and timm ViTs their last
transformer blocks and final norm, timm CNNs their last stages and head convolution. The siamese encoder is
the query backbone itself, so it trains with the backbone from stage 1 on.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from refdet_edge.losses import LossWeights
from refdet_edge.models.refdet import RefDetModel

DETECTOR_MODULES = ("backbone", "fusion", "head")
EMBEDDING_MODULES = (*DETECTOR_MODULES, "projector", "query_embed", "fused_embed")


@dataclass(frozen=True)
class StageSpec:
    """One stage: trainable top-level modules of :class:`RefDetModel`, unfrozen support block groups, base
    learning rate (the support blocks train at ``support_lr_scale`` times it) and loss weights."""

    stage: int
    modules: tuple[str, ...]
    support_blocks: int
    lr: float
    support_lr_scale: float
    epochs: int
    contrastive_weight: float  # SupCon and CPE

    def loss_weights(self, triplet_weight: float) -> LossWeights:
        """Detection gains (YOLOv8's), the stage's contrastive weight, and ``triplet_weight`` from stage 2 on
        (triplet batches are mixed in only from stage 2)."""
        return LossWeights(
            supcon=self.contrastive_weight,
            cpe=self.contrastive_weight,
            triplet=triplet_weight if self.stage > 1 else 0.0,
        )

    def apply(self, model: RefDetModel, freeze: tuple[str, ...] = ()) -> dict[str, list[nn.Parameter]]:
        """Freeze everything, unfreeze this stage's modules except the parameters whose name starts with one
        of ``freeze`` (e.g. ``backbone``, ``head.cv2``: kept as loaded, as ultralytics' ``freeze``); returns
        the trainable parameters by group (``main`` and ``support``), each parameter in exactly one group."""
        model.requires_grad_(False)
        fixed = {id(p) for p in model.head.dfl.parameters()}  # the DFL's fixed 0..reg_max-1 projection
        fixed |= {id(p) for name, p in model.named_parameters() if name.startswith(freeze)}
        main = [p for name in self.modules for p in getattr(model, name).parameters() if id(p) not in fixed]
        support = [p for p in model.support.stage_parameters(self.support_blocks) if id(p) not in fixed]
        for p in (*main, *support):
            p.requires_grad_(True)
        return {"main": main, "support": support}


STAGES: dict[int, StageSpec] = {
    1: StageSpec(
        1,
        DETECTOR_MODULES,
        support_blocks=0,
        lr=1e-3,
        support_lr_scale=0.0,
        epochs=100,
        contrastive_weight=0.0,
    ),
    2: StageSpec(
        2,
        EMBEDDING_MODULES,
        support_blocks=2,
        lr=5e-4,
        support_lr_scale=0.1,
        epochs=100,
        contrastive_weight=1.0,
    ),
    3: StageSpec(
        3,
        EMBEDDING_MODULES,
        support_blocks=2,
        lr=1e-4,
        support_lr_scale=0.1,
        epochs=50,
        contrastive_weight=1.0,
    ),
}


def stage_spec(stage: int) -> StageSpec:
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}: expected one of {sorted(STAGES)}")
    return STAGES[stage]
