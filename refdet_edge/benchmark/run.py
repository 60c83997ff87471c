"""Measure one pair (latency side by side in this process, then each side's memory in a fresh process),
or every pair."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from refdet_edge.benchmark.measure import interleaved_latencies
from refdet_edge.benchmark.memory import side_peak_memory
from refdet_edge.benchmark.pairs import PAIRS
from refdet_edge.benchmark.report import PairResult
from refdet_edge.benchmark.settings import BenchSettings, apply_threads


def run_pair(key: str, settings: BenchSettings, memory: bool = True) -> PairResult:
    """Measure pair ``key``: interleaved latencies in this process (torch and ONNX Runtime at the settings'
    thread count), then each side's peak memory in a fresh process. A pair whose requirements are missing
    comes back with ``skipped`` set to the reason."""
    spec = PAIRS[key]
    result = PairResult(key, spec.baseline, spec.candidate, spec.unit)
    if spec.latency_target:
        result.latency_target = spec.latency_target.text
    if spec.memory_target:
        result.memory_target = spec.memory_target.text
    reason = spec.unavailable(settings)
    if reason:
        result.skipped = reason
        return result
    apply_threads(settings)
    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    if spec.prepare is not None:
        spec.prepare(settings)
    torch.manual_seed(0)
    shared: dict[str, Any] = {}
    baseline, candidate = (spec.build(settings, side, shared) for side in ("baseline", "candidate"))
    repeats = min(settings.repeats, spec.max_repeats or settings.repeats)
    times = interleaved_latencies(baseline, candidate, repeats, settings.warmup, settings.torch_device)
    del baseline, candidate, shared
    gc.collect()
    result.repeats = repeats
    result.baseline_ms = statistics.median(times.baseline)
    result.candidate_ms = statistics.median(times.candidate)
    result.baseline_min_ms, result.candidate_min_ms = min(times.baseline), min(times.candidate)
    result.spread = times.spread()
    if settings.torch_device.type == "cpu":
        result.cpu_spread = times.spread(cpu=True)
    if spec.latency_target:
        result.latency_met = spec.latency_target.met(result.latency_ratio)
    result.extra = spec.extra(result)
    if memory:
        result.baseline_memory_mb, floor = side_peak_memory(key, "baseline", settings)
        result.candidate_memory_mb, _ = side_peak_memory(key, "candidate", settings)
        result.memory_floor_mb = floor
        if spec.memory_target:
            result.memory_met = spec.memory_target.met(result.memory_ratio)
    return result


def run_pairs(
    settings: BenchSettings,
    keys: list[str] | None = None,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[PairResult]:
    results = []
    for key in keys or list(PAIRS):
        if progress is not None:
            progress(key)
        results.append(run_pair(key, settings, memory))
    return results
