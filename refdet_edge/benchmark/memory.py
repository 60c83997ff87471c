"""Peak memory of one side of a pair, measured in a fresh spawned process that holds nothing else.

On CPU the figure is that process's peak resident set size (``VmHWM``) minus its RSS once the libraries
were imported (the floor, about 1 GB with a CUDA build of torch, the same for every side): what the side's
weights, activations and buffers take at their peak. On CUDA it is ``torch.cuda.max_memory_allocated``
(sides run by ONNX Runtime or TensorRT allocate outside torch: not measured).
"""

from __future__ import annotations

import multiprocessing
import platform
import resource
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import torch

from refdet_edge.benchmark.measure import Side
from refdet_edge.benchmark.settings import BenchSettings, apply_threads

MEMORY_CALLS = 3  # calls of a side, after its warm-up, in the process that measures its memory


def import_libraries() -> None:
    """Import every library a side may use, so that the memory floor is the same for all of them."""
    import onnxruntime  # noqa: F401
    import ultralytics.nn.tasks  # noqa: F401

    import refdet_edge.benchmark.pairs  # noqa: F401
    import refdet_edge.data.synth  # noqa: F401
    import refdet_edge.evaluation.predict  # noqa: F401
    import refdet_edge.export.pipeline  # noqa: F401
    import refdet_edge.runtime  # noqa: F401
    import refdet_edge.training.prepare  # noqa: F401


def peak_memory_mb(side: Side, settings: BenchSettings, floor_mb: float) -> float | None:
    """Memory ``side`` takes in the current process (warm-up and :data:`MEMORY_CALLS` calls): on CPU the peak
    RSS minus ``floor_mb`` (the RSS before the side was built), on CUDA ``max_memory_allocated``. Meant for a
    fresh process that holds this side alone (see :func:`side_peak_memory`)."""
    device = settings.torch_device
    if device.type == "cuda":
        if not side.torch_memory:
            return None
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(settings.warmup + MEMORY_CALLS):
        side.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb() - floor_mb


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB): ``VmHWM`` of ``/proc/self/status``, the high-water mark
    of this program's own address space. (``ru_maxrss`` would not do: Linux carries the parent's peak over
    fork and exec into a spawned child's.) Elsewhere, ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if platform.system() == "Darwin" else maxrss / 1024


def _child_peak_memory(key: str, side: str, settings: BenchSettings) -> tuple[float | None, float]:
    import_libraries()
    from refdet_edge.benchmark.pairs import PAIRS

    apply_threads(settings)
    floor = psutil.Process().memory_info().rss / 2**20
    torch.manual_seed(0)
    return peak_memory_mb(PAIRS[key].build(settings, side, {}), settings, floor), floor


def side_peak_memory(key: str, side: str, settings: BenchSettings) -> tuple[float | None, float]:
    """Memory (MB) that side ``side`` ("baseline" or "candidate") of pair ``key`` takes, measured in a new
    spawned process that imports the libraries, reads its RSS (the floor), then builds and runs that side
    alone; returns the figure and the floor. The pair's files must be prepared."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child_peak_memory, key, side, settings).result()
