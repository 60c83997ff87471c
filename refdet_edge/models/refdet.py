"""The reference-conditioned detector: support encoder, query backbone, CHEAF fusion and prototype head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refdet_edge.models.backbone import QueryBackbone, yolo_graph
from refdet_edge.models.fusion import CHEAF
from refdet_edge.models.head import PrototypeHead
from refdet_edge.models.prototypes import COMBINE_MODES, PrototypeProjector
from refdet_edge.models.support import create_support_encoder, support_size_multiple
from refdet_edge.models.verifier import AppearanceVerifier

DEFAULT_SUPPORT_ENCODER = "siamese"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the architecture; stored in every checkpoint.

    ``support_encoder``: ``siamese`` | ``dinov2`` | ``timm:NAME`` (see :mod:`refdet_edge.models.support`);
    ``support_kwargs``: keyword arguments of ``timm.create_model`` that change the graph (such as
    ``pad_type="same"``), kept so that a checkpoint rebuilds the same graph. ``verify_topk`` > 0 adds the
    :class:`AppearanceVerifier` (``verify_context``, ``verify_alpha``, ``verify_iou``, ``verify_crop``) to
    the per-frame path. With ``verify_scale`` s > 1 it crops from frames at s times the backbone's
    resolution: the per-frame input is then ``imgsz * s`` pixels square and the backbone sees it reduced to
    ``imgsz`` (:attr:`input_size`).
    """

    imgsz: int = 640
    support_size: int = 224
    support_encoder: str = DEFAULT_SUPPORT_ENCODER
    support_kwargs: dict[str, Any] = field(default_factory=dict)
    yolo_cfg: str = "yolov8n.yaml"
    embed_dim: int = 128
    reg_max: int = 16
    prototype_pool: int = 2
    combine: str = "mean"
    verify_topk: int = 0
    verify_context: float = 0.25
    verify_alpha: float = 0.0
    verify_scale: int = 1
    verify_iou: float = 0.75  # and the crop: chosen on the validation objects (README)
    verify_crop: str = "letterbox"

    def __post_init__(self) -> None:
        if self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32, got {self.imgsz}")
        multiple = support_size_multiple(self.support_encoder) or 1
        if self.support_size <= 0 or self.support_size % multiple:
            raise ValueError(
                f"support_size must be a positive multiple of {multiple} for the {self.support_encoder} "
                f"encoder, got {self.support_size}"
            )
        if self.verify_scale < 1 or (self.verify_scale > 1 and not self.verify_topk):
            raise ValueError(
                f"verify_scale must be 1, or above 1 with verify_topk > 0, got {self.verify_scale} "
                f"(verify_topk {self.verify_topk})"
            )
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")

    @property
    def input_size(self) -> int:
        """Side of the per-frame input outside training: ``imgsz * verify_scale``."""
        return self.imgsz * self.verify_scale

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class References:
    """Encoded references of N targets: per-level prototypes (N, T, C_l), a global embedding (N, E) and
    the appearance (N, D): the mean L2-normalised global feature of the support encoder itself."""

    prototypes: list[torch.Tensor]
    global_embedding: torch.Tensor
    appearance: torch.Tensor


class RefDetModel(nn.Module):
    """Finds the targets shown in reference images in query frames.

    ``set_references(images)`` encodes the references once and caches their prototypes; ``forward(query)``
    then reuses them. ``forward(query, references)`` encodes references on the fly (training). Images are
    RGB in [0, 1] (see :mod:`refdet_edge.preprocess`): queries (B, 3, imgsz, imgsz), references
    (N, K, 3, S, S) for N targets with K photos each, or (K, 3, S, S) for one target. Outside training a
    model with ``verify_scale`` s takes queries at ``config.input_size`` and returns boxes in their pixels.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        graph = yolo_graph(cfg.yolo_cfg)
        backbone = QueryBackbone(graph)
        channels = backbone.channels
        self.support = create_support_encoder(
            cfg.support_encoder, cfg.support_size, backbone, cfg.support_kwargs
        )
        self.backbone = backbone
        self.projector = PrototypeProjector(
            self.support.map_dims, self.support.global_dim, channels, cfg.embed_dim, cfg.prototype_pool
        )
        self.fusion = CHEAF(channels)
        self.head = PrototypeHead(graph.model[-1], channels, backbone.strides)
        if self.head.reg_max != cfg.reg_max:
            raise ValueError(f"reg_max {cfg.reg_max} does not match {cfg.yolo_cfg}'s {self.head.reg_max}")
        self.verifier = (
            AppearanceVerifier(
                self.support,
                cfg.support_size,
                cfg.verify_topk,
                cfg.verify_context,
                cfg.verify_alpha,
                cfg.verify_iou,
                cfg.verify_crop,
            )
            if cfg.verify_topk
            else None
        )
        self.query_embed = nn.Linear(channels[-1], cfg.embed_dim)
        self.fused_embed = nn.Linear(channels[-1], cfg.embed_dim)
        self._cache: References | None = None

    @property
    def num_prototype_tokens(self) -> int:
        return self.projector.num_tokens

    def _check_references(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            images = images[None]
        s = self.config.support_size
        if images.dim() != 5 or images.shape[2] != 3 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(
                f"references must be (N, K, 3, {s}, {s}) or (K, 3, {s}, {s}) RGB images at the support size, "
                f"got shape {tuple(images.shape)}"
            )
        return images

    @property
    def scale(self) -> int:
        """Input pixels per backbone pixel: ``verify_scale`` outside training, else 1."""
        return 1 if self.training or self.verifier is None else self.config.verify_scale

    def _check_query(self, query: torch.Tensor) -> None:
        multiple = 32 * self.scale
        if query.dim() != 4 or query.shape[1] != 3 or query.shape[2] % multiple or query.shape[3] % multiple:
            raise ValueError(
                f"query must be (B, 3, H, W) RGB images with H and W multiples of {multiple}, "
                f"got shape {tuple(query.shape)}"
            )

    def _backbone_view(self, query: torch.Tensor) -> torch.Tensor:
        """The query as the backbone sees it: area-reduced by :attr:`scale`."""
        return query if self.scale == 1 else F.avg_pool2d(query, self.scale)

    def encode_references(self, images: torch.Tensor) -> References:
        """(N, K, 3, S, S) or (K, 3, S, S) reference images -> :class:`References` (gradients flow)."""
        images = self._check_references(images)
        n, k = images.shape[:2]
        features = self.support(images.flatten(0, 1))
        prototypes, embedding = self.projector(features, n, k, self.config.combine)
        unit = F.normalize(features.global_feature, dim=-1)
        appearance = F.normalize(unit.view(n, k, -1).mean(1), dim=-1)
        return References(prototypes, embedding, appearance)

    def detector_inputs(self, refs: References) -> list[torch.Tensor]:
        """What the per-frame path takes per target set: the level prototypes, and the appearance when the
        model verifies (the inputs of ``detector.onnx`` after the frames)."""
        return [*refs.prototypes, refs.appearance] if self.verifier is not None else list(refs.prototypes)

    @torch.no_grad()
    def set_references(self, images: torch.Tensor) -> References:
        """Encode the references once and cache them for every following ``forward(query)``."""
        self._cache = self.encode_references(images)
        return self._cache

    def clear_references(self) -> None:
        self._cache = None

    def _fuse_and_score(
        self,
        query: torch.Tensor,
        feats: list[torch.Tensor],
        prototypes: list[torch.Tensor],
        appearance: torch.Tensor | None,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Neck levels of B frames and prototypes of N targets -> (detections, fused levels of the B*N
        (frame, target) items). The backbone ran once; fusion and identity run per item. Outside training a
        verifying model re-scores the head's candidates (``pred_scores``) with ``appearance``."""
        b, n = feats[0].shape[0], prototypes[0].shape[0]
        fused = self.fusion(
            [f[:, None].expand(-1, n, -1, -1, -1).flatten(0, 1) for f in feats],
            [p[None].expand(b, -1, -1, -1).flatten(0, 1) for p in prototypes],
        )
        detections = self.head(feats, fused, prototypes)
        if self.verifier is not None and not self.training:
            shapes = [(f.shape[2], f.shape[3]) for f in feats]
            boxes = detections["boxes"] * self.scale
            detections["pred_scores"] = self.verifier(
                query, boxes, detections["pred_scores"], appearance, shapes
            )
            detections["boxes"] = boxes
        return detections, fused

    def detect(self, query: torch.Tensor, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-frame path: query frames and :meth:`detector_inputs` -> detections (what
        ``detector.onnx`` holds)."""
        self._check_query(query)
        levels = len(self.backbone.channels)
        if len(inputs) != levels + (self.verifier is not None):
            raise ValueError(
                f"detect takes {levels} level prototypes{' and the appearance' if self.verifier else ''}, "
                f"got {len(inputs)} tensors"
            )
        appearance = inputs[levels] if self.verifier is not None else None
        feats = self.backbone(self._backbone_view(query))
        return self._fuse_and_score(query, feats, inputs[:levels], appearance)[0]

    def forward(
        self, query: torch.Tensor, references: torch.Tensor | None = None, return_features: bool = False
    ) -> dict:
        """Detections of every target in every query frame; see :meth:`PrototypeHead.forward` for the keys.

        With ``return_features=True`` the result is ``{"detections": ..., "features": {...}}`` with
        ``support_global`` (N, E), ``query_global`` (B, E), ``fused_global`` (B, E) (the mean over the N
        targets of each frame's fused P5 embedding) and ``prototypes`` (list of (N, T, C_l)), all from the
        same single pass.
        """
        self._check_query(query)
        if references is not None:
            refs = self.encode_references(references)
        elif self._cache is not None:
            refs = self._cache
        else:
            raise RuntimeError(
                "no references: call model.set_references(images) first or pass forward(query, references)"
            )
        feats = self.backbone(self._backbone_view(query))
        detections, fused = self._fuse_and_score(query, feats, refs.prototypes, refs.appearance)
        if not return_features:
            return detections
        fused_global = self.fused_embed(fused[-1].mean((2, 3))).unflatten(0, (query.shape[0], -1)).mean(1)
        features = {
            "support_global": refs.global_embedding,
            "query_global": self.query_embed(feats[-1].mean((2, 3))),
            "fused_global": fused_global,
            "prototypes": refs.prototypes,
        }
        return {"detections": detections, "features": features}
