"""The per-frame PyTorch pairs (this model against plain YOLOv8n, uncached against cached references,
``return_features`` on and off) and the cost of the support path alone.

Weights are random (seeded): latency does not depend on them. Both models run unfused (Conv and BatchNorm
kept apart), with NMS at ``conf`` 0.25 and ``iou`` 0.5 over torchvision ``batched_nms``
(:func:`refdet_edge.postprocess.postprocess`). One frame per call.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from refdet_edge.benchmark.measure import Side, time_per_sample_ms
from refdet_edge.benchmark.settings import BenchSettings

CONF, IOU, MAX_DET = 0.25, 0.5, 100


def plain_yolov8n(device: torch.device) -> torch.nn.Module:
    """The ultralytics YOLOv8n DetectionModel (80 classes, its own Detect head), random weights, eval."""
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel("yolov8n.yaml", verbose=False).eval().to(device)


def decode_yolov8(pred: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv8's inference output (B, 4 + C, A): xywh boxes and class probabilities -> boxes (B, A, 4) xyxy
    and probabilities (B, A, C), the layout :func:`refdet_edge.postprocess.postprocess` takes."""
    from ultralytics.utils.ops import xywh2xyxy

    pred = torch.as_tensor(pred).transpose(1, 2)
    return xywh2xyxy(pred[..., :4]), pred[..., 4:]


def nms(boxes: torch.Tensor, scores: torch.Tensor) -> list:
    from refdet_edge.postprocess import postprocess

    return postprocess(boxes, scores, None, CONF, IOU, MAX_DET)


def frames(settings: BenchSettings, baseline: bool = False) -> torch.Tensor:
    """One frame at the model's input size, or at ``imgsz`` for plain YOLOv8n (``baseline``): the two
    differ for a model that verifies at a ``verify_scale`` above 1."""
    from refdet_edge.export.onnx_export import example_frames

    return example_frames(1, settings.imgsz if baseline else settings.input_size, seed=1)


def refdet_model(settings: BenchSettings, shared: dict) -> tuple[Any, torch.Tensor]:
    """This model (random weights, seed 0, the settings' encoder) in eval mode on the device, references of
    one target cached; built once per process and kept in ``shared``."""
    if "refdet" not in shared:
        from refdet_edge.export.onnx_export import example_references
        from refdet_edge.models import create_model

        torch.manual_seed(0)
        model = create_model(
            imgsz=settings.imgsz, support_size=settings.support_size, **settings.model_overrides
        ).eval()
        model.to(settings.torch_device)
        refs = example_references(1, settings.refs, settings.support_size, seed=0).to(settings.torch_device)
        model.set_references(refs)
        shared["refdet"] = (model, refs)
    return shared["refdet"]


def build_detection_vs_yolov8n(settings: BenchSettings, side: str, shared: dict) -> Side:
    images = frames(settings, baseline=side == "baseline").to(settings.torch_device)
    if side == "baseline":
        net = plain_yolov8n(settings.torch_device)

        @torch.inference_mode()
        def run_plain():
            return nms(*decode_yolov8(net(images)[0]))

        return Side(run_plain)
    model, _ = refdet_model(settings, shared)

    @torch.inference_mode()
    def run_cached():
        out = model(images)
        return nms(out["boxes"], out["pred_scores"].sigmoid())

    return Side(run_cached)


def build_uncached_vs_cached(settings: BenchSettings, side: str, shared: dict) -> Side:
    images = frames(settings).to(settings.torch_device)
    model, refs = refdet_model(settings, shared)
    if side == "baseline":
        return Side(torch.inference_mode()(lambda: model(images)))
    return Side(torch.inference_mode()(lambda: model(images, refs)))


def build_features_vs_plain(settings: BenchSettings, side: str, shared: dict) -> Side:
    images = frames(settings).to(settings.torch_device)
    model, _ = refdet_model(settings, shared)
    features = side == "candidate"
    return Side(torch.inference_mode()(lambda: model(images, return_features=features)))


def support_path(settings: BenchSettings) -> dict[str, Any]:
    """The chosen encoder's support path (support encoder and prototype projections) on one target's
    ``refs`` references: its name, parameters and GFLOPs (as ``refdet info`` counts them) and the median
    time of ``encode_references`` over ``repeats`` calls after ``warmup``."""
    from refdet_edge.models.summary import model_summary

    model, refs = refdet_model(replace(settings, device="cpu"), {})
    summary = model_summary(model, settings.refs)["support_path"]
    model.to(settings.torch_device)
    refs = refs.to(settings.torch_device)
    side = Side(torch.inference_mode()(lambda: model.encode_references(refs)))
    for _ in range(settings.warmup):
        side.run()
    times = [time_per_sample_ms(side, settings.torch_device)[0] for _ in range(settings.repeats)]
    return {
        "encoder": model.config.support_encoder,
        "refs": settings.refs,
        "support_size": settings.support_size,
        "params": summary["params"],
        "gflops": round(summary["gflops"], 3),
        "median_ms": round(statistics.median(times), 3),
    }
