"""Latency of two sides measured side by side: interleaved rounds, medians and per-round ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Side:
    """One side of a pair: ``run()`` processes ``samples`` frames (or training samples) per call;
    ``torch_memory`` says whether its memory lives in torch's allocator (what CUDA measurement reads)."""

    run: Callable[[], Any]
    samples: int = 1
    torch_memory: bool = True


@dataclass(frozen=True)
class Latencies:
    """Per-sample times (ms) of both sides, one entry per round."""

    baseline: list[float]
    candidate: list[float]

    @property
    def round_ratios(self) -> list[float]:
        """Candidate / baseline of each round: two calls next to each other, so load that comes and goes
        hits both."""
        return [c / b for b, c in zip(self.baseline, self.candidate, strict=True) if b > 0]

    def spread(self) -> dict[str, float] | None:
        """min, lower quartile, median, upper quartile and max of the per-round ratios."""
        ratios = sorted(self.round_ratios)
        if not ratios:
            return None
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
        return {
            "min": ratios[0],
            "q1": q1,
            "median": statistics.median(ratios),
            "q3": q3,
            "max": ratios[-1],
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_sample_ms(side: Side, device: torch.device) -> float:
    """One call of ``side``, in milliseconds per sample (CUDA work finished inside the timing)."""
    _sync(device)
    start = time.perf_counter()
    side.run()
    _sync(device)
    return (time.perf_counter() - start) * 1e3 / side.samples


def interleaved_latencies(
    baseline: Side, candidate: Side, repeats: int, warmup: int, device: torch.device
) -> Latencies:
    """Per-sample times of both sides over ``repeats`` rounds, after ``warmup`` calls of each; the side that
    goes first alternates between rounds (baseline first in even rounds)."""
    for _ in range(warmup):
        baseline.run()
        candidate.run()
    times: dict[int, list[float]] = {0: [], 1: []}
    sides = (baseline, candidate)
    for r in range(repeats):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            times[which].append(time_per_sample_ms(sides[which], device))
    return Latencies(times[0], times[1])
