"""Model: support encoder (siamese, timm or DINOv2), YOLOv8 query backbone, CHEAF fusion and the head."""

from refdet_edge.models.checkpoint import (
    atomic_save,
    checkpoint_payload,
    create_model,
    load_model,
    read_checkpoint,
)
from refdet_edge.models.refdet import ModelConfig, RefDetModel, References
from refdet_edge.models.weights import (
    WeightsError,
    load_dinov2_weights,
    load_support_weights,
    load_timm_weights,
    load_yolo_weights,
)

__all__ = [
    "ModelConfig",
    "RefDetModel",
    "References",
    "WeightsError",
    "atomic_save",
    "checkpoint_payload",
    "create_model",
    "load_dinov2_weights",
    "load_model",
    "load_support_weights",
    "load_timm_weights",
    "load_yolo_weights",
    "read_checkpoint",
]
