"""The figures of a pair (:class:`PairResult`), the table ``refdet bench`` prints and its JSON file."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from refdet_edge import __version__
from refdet_edge.benchmark.settings import BenchSettings

MEMORY_CPU = (
    "peak RSS (VmHWM) of a fresh process per side, minus its RSS after importing the libraries "
    "(memory_floor_mb)"
)
MEMORY_CUDA = "torch.cuda.max_memory_allocated in a fresh process per side"
LATENCY_RATIO = (
    "median of the per-round ratios (candidate / baseline, the two calls of one round), of wall-clock time; "
    "cpu_time_ratio: the same of this process's CPU time (on CPU), which time spent waiting for a core held "
    "by another process does not count"
)


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or baseline is None or baseline <= 0:
        return None
    return candidate / baseline


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class PairResult:
    """The figures of one pair; :meth:`to_dict` is its JSON entry. ``spread`` holds the min, quartiles and
    max of the per-round latency ratios, the latency ratio is their median; ``cpu_spread`` the same of the
    per-round CPU-time ratios (CPU devices only)."""

    key: str
    baseline: str
    candidate: str
    unit: str
    baseline_ms: float | None = None
    candidate_ms: float | None = None
    baseline_min_ms: float | None = None
    candidate_min_ms: float | None = None
    spread: dict[str, float] | None = None
    cpu_spread: dict[str, float] | None = None
    baseline_memory_mb: float | None = None
    candidate_memory_mb: float | None = None
    latency_target: str | None = None
    latency_met: bool | None = None
    memory_target: str | None = None
    memory_met: bool | None = None
    memory_floor_mb: float | None = None
    repeats: int = 0
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_ratio(self) -> float | None:
        if self.spread is not None:
            return self.spread["median"]
        return ratio(self.candidate_ms, self.baseline_ms)

    @property
    def cpu_ratio(self) -> float | None:
        return None if self.cpu_spread is None else self.cpu_spread["median"]

    @property
    def memory_ratio(self) -> float | None:
        return ratio(self.candidate_memory_mb, self.baseline_memory_mb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "unit": self.unit,
            "baseline_median_ms": rounded(self.baseline_ms, 3),
            "candidate_median_ms": rounded(self.candidate_ms, 3),
            "latency_ratio": rounded(self.latency_ratio, 3),
            "latency_ratio_spread": _rounded_spread(self.spread),
            "cpu_time_ratio": rounded(self.cpu_ratio, 3),
            "cpu_time_ratio_spread": _rounded_spread(self.cpu_spread),
            "baseline_min_ms": rounded(self.baseline_min_ms, 3),
            "candidate_min_ms": rounded(self.candidate_min_ms, 3),
            "min_latency_ratio": rounded(ratio(self.candidate_min_ms, self.baseline_min_ms), 3),
            "baseline_peak_memory_mb": rounded(self.baseline_memory_mb, 1),
            "candidate_peak_memory_mb": rounded(self.candidate_memory_mb, 1),
            "memory_ratio": rounded(self.memory_ratio, 3),
            "latency_target": self.latency_target,
            "latency_met": self.latency_met,
            "memory_target": self.memory_target,
            "memory_met": self.memory_met,
            "memory_floor_mb": rounded(self.memory_floor_mb, 1),
            "repeats": self.repeats,
            "skipped": self.skipped,
            **self.extra,
        }


def _rounded_spread(spread: dict[str, float] | None) -> dict[str, float] | None:
    return None if spread is None else {k: round(v, 3) for k, v in spread.items()}


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _verdict(target: str | None, met: bool | None) -> str | None:
    if target is None:
        return None
    return f"{target}: {'-' if met is None else 'met' if met else 'missed'}"


def _spread_cell(spread: dict[str, float] | None) -> str:
    """The middle half of the per-round ratios and their full range: ``q1-q3 (min-max)``."""
    if spread is None:
        return "-"
    return f"{spread['q1']:.2f}-{spread['q3']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})"


def format_table(results: list[PairResult]) -> str:
    """One row per pair: medians, latency ratio and the spread of the per-round ratios, the CPU-time ratio,
    peak memories, memory ratio, targets with met/missed."""
    header = (
        "pair",
        "unit",
        "base ms",
        "cand ms",
        "ratio",
        "rounds q1-q3 (min-max)",
        "cpu ratio",
        "base MB",
        "cand MB",
        "ratio",
        "target (issue 7)",
    )
    rows = [header]
    for r in results:
        if r.skipped:
            rows.append((r.key, r.unit, *["-"] * 8, f"skipped: {r.skipped}"))
            continue
        verdicts = [
            v
            for v in (_verdict(r.latency_target, r.latency_met), _verdict(r.memory_target, r.memory_met))
            if v
        ]
        rows.append(
            (
                r.key,
                r.unit,
                _fmt(r.baseline_ms, 1),
                _fmt(r.candidate_ms, 1),
                _fmt(r.latency_ratio, 2, "x"),
                _spread_cell(r.spread),
                _fmt(r.cpu_ratio, 2, "x"),
                _fmt(r.baseline_memory_mb, 0),
                _fmt(r.candidate_memory_mb, 0),
                _fmt(r.memory_ratio, 3, "x"),
                "; ".join(verdicts),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(settings: BenchSettings) -> dict[str, Any]:
    """Where and how the pairs ran; ``load_average`` is the 1, 5 and 15 minute load when this was read
    (other processes on the machine disturb the figures)."""
    device = settings.torch_device
    return {
        "refdet_edge": __version__,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": psutil.cpu_count(),
        "threads": settings.num_threads,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "backend": settings.backend,
        "imgsz": settings.imgsz,
        "support_size": settings.support_size,
        "refs": settings.refs,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "latency_ratio": LATENCY_RATIO,
        "memory": MEMORY_CUDA if device.type == "cuda" else MEMORY_CPU,
    }


def results_json(
    results: list[PairResult], settings: BenchSettings, support_path: dict[str, Any] | None = None
) -> dict:
    """``{"environment": {...}, "support_path": {...}, "pairs": {key: {...}}}``."""
    return {
        "environment": environment(settings),
        "support_path": support_path,
        "pairs": {r.key: r.to_dict() for r in results},
    }


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
