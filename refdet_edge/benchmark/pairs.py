"""The registry of pairs: what each side is, its unit, its target, how it is built and what it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from refdet_edge.benchmark.inference import (
    build_detection_vs_yolov8n,
    build_features_vs_plain,
    build_uncached_vs_cached,
)
from refdet_edge.benchmark.measure import Side
from refdet_edge.benchmark.onnx_pair import build_onnx_detector_vs_yolov8n, onnx_unavailable, prepare_exports
from refdet_edge.benchmark.predict_pair import (
    build_predict_vs_model,
    predict_extra,
    predict_unavailable,
    prepare_predict,
)
from refdet_edge.benchmark.report import PairResult
from refdet_edge.benchmark.settings import BenchSettings
from refdet_edge.benchmark.training_pair import TRAIN_MAX_REPEATS, build_train_mixed_vs_detection, train_extra


@dataclass(frozen=True)
class Target:
    """A bound on a ratio (candidate / baseline): ``at_most`` or at least ``bound``."""

    bound: float
    at_most: bool
    text: str

    def met(self, ratio: float | None) -> bool | None:
        if ratio is None:
            return None
        return ratio <= self.bound if self.at_most else ratio >= self.bound


@dataclass(frozen=True)
class PairSpec:
    """``build(settings, side, shared)`` makes side ``"baseline"`` or ``"candidate"``; both sides of one
    run share ``shared`` (a model built once). ``prepare`` writes the files the sides read (once per work
    folder); ``unavailable`` names what this machine lacks, if anything."""

    key: str
    baseline: str
    candidate: str
    unit: str
    build: Callable[[BenchSettings, str, dict], Side]
    latency_target: Target | None = None
    memory_target: Target | None = None
    prepare: Callable[[BenchSettings], None] | None = None
    unavailable: Callable[[BenchSettings], str | None] = lambda settings: None
    max_repeats: int | None = None
    extra: Callable[[PairResult], dict[str, Any]] = lambda result: {}


PAIRS: dict[str, PairSpec] = {
    spec.key: spec
    for spec in (
        PairSpec(
            "detection_vs_yolov8n",
            "plain YOLOv8n + NMS",
            "cached prototypes + NMS",
            "ms/frame",
            build_detection_vs_yolov8n,
            latency_target=Target(1.25, True, "latency <= 1.25x"),
        ),
        PairSpec(
            "uncached_vs_cached",
            "cached prototypes",
            "support encoder every frame",
            "ms/frame",
            build_uncached_vs_cached,
            latency_target=Target(3.0, False, "latency >= 3x"),
        ),
        PairSpec(
            "features_vs_plain",
            "return_features=False",
            "return_features=True",
            "ms/frame",
            build_features_vs_plain,
            latency_target=Target(1.03, True, "latency <= 1.03x"),
            memory_target=Target(1.05, True, "memory <= 1.05x"),
        ),
        PairSpec(
            "onnx_detector_vs_yolov8n",
            "YOLOv8n ONNX + NMS",
            "detector.onnx + NMS",
            "ms/frame",
            build_onnx_detector_vs_yolov8n,
            latency_target=Target(1.25, True, "latency <= 1.25x"),
            prepare=prepare_exports,
            unavailable=onnx_unavailable,
        ),
        PairSpec(
            "train_mixed_vs_detection",
            "detection-only step",
            "detection + triplet step",
            "ms/sample",
            build_train_mixed_vs_detection,
            latency_target=Target(1.15, True, "time/sample <= 1.15x"),
            memory_target=Target(1.25, True, "memory <= 1.25x"),
            max_repeats=TRAIN_MAX_REPEATS,
            extra=train_extra,
        ),
        PairSpec(
            "predict_vs_model",
            "model only",
            "predict pipeline",
            "ms/frame",
            build_predict_vs_model,
            latency_target=Target(1.25, True, "frames/s >= 0.8x (latency <= 1.25x)"),
            prepare=prepare_predict,
            unavailable=predict_unavailable,
            extra=predict_extra,
        ),
    )
}
