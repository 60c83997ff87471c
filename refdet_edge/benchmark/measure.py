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
    """Per-sample times (ms) of both sides, one entry per round: wall clock, and the CPU time of this process
    (every thread of it), which time spent waiting for a core that another process holds does not count."""

    baseline: list[float]
    candidate: list[float]
    baseline_cpu: list[float]
    candidate_cpu: list[float]

    def round_ratios(self, cpu: bool = False) -> list[float]:
        """Candidate / baseline of each round: two calls next to each other, so load that comes and goes
        hits both."""
        base, cand = (self.baseline_cpu, self.candidate_cpu) if cpu else (self.baseline, self.candidate)
        return [c / b for b, c in zip(base, cand, strict=True) if b > 0]

    def spread(self, cpu: bool = False) -> dict[str, float] | None:
        """min, lower quartile, median, upper quartile and max of the per-round ratios."""
        ratios = sorted(self.round_ratios(cpu))
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


def time_per_sample_ms(side: Side, device: torch.device) -> tuple[float, float]:
    """One call of ``side``: wall-clock and process CPU milliseconds per sample (CUDA work finished inside
    the timing)."""
    _sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    side.run()
    _sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall * 1e3 / side.samples, cpu * 1e3 / side.samples


def interleaved_latencies(
    baseline: Side, candidate: Side, repeats: int, warmup: int, device: torch.device
) -> Latencies:
    """Per-sample times of both sides over ``repeats`` rounds, after ``warmup`` calls of each; the side that
    goes first alternates between rounds (baseline first in even rounds)."""
    for _ in range(warmup):
        baseline.run()
        candidate.run()
    times: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    sides = (baseline, candidate)
    for r in range(repeats):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            times[which].append(time_per_sample_ms(sides[which], device))
    (base_wall, base_cpu), (cand_wall, cand_cpu) = (list(zip(*times[w], strict=True)) for w in (0, 1))
    return Latencies(list(base_wall), list(cand_wall), list(base_cpu), list(cand_cpu))
