"""Side-by-side benchmarks: what the reference branch, feature extraction, triplet training and the predict
pipeline cost, each as the ratio of two sides measured in the same process at the same input size.

Pairs (stable keys; ratio = candidate / baseline):

| key | baseline | candidate | target (issue 7) |
|---|---|---|---|
| ``detection_vs_yolov8n`` | plain YOLOv8n + NMS | this model, cached prototypes, + the same NMS | latency <= 1.25x |
| ``uncached_vs_cached`` | cached prototypes | support encoder every frame | latency >= 3x |
| ``features_vs_plain`` | ``return_features=False`` | ``return_features=True`` | latency <= 1.03x, memory <= 1.05x |
| ``onnx_detector_vs_yolov8n`` | YOLOv8n ONNX + NMS | ``detector.onnx`` + the same NMS | latency <= 1.25x |
| ``train_mixed_vs_detection`` | detection-only step | detection + triplet step | per sample <= 1.15x, memory <= 1.25x |
| ``predict_vs_model`` | model only | decode, preprocess, model, post-process, write | frames/s >= 0.8x |

Latency: both sides are built in one process, warmed up, then timed in interleaved rounds (baseline first in
even rounds, candidate first in odd ones), so load from other processes on the machine hits both alike; the
median per frame (per sample for the training pair) is reported, and in the JSON also the fastest call of
each side (the least disturbed by other load). Per-frame pairs run one frame per call.

Memory: each side is built and run again in a fresh spawned process that holds nothing else. On CPU the
figure is that process's peak resident set size (``VmHWM``) minus its RSS once the libraries were imported
(``memory_floor_mb`` in the JSON, about 1 GB with a CUDA build of torch, the same for every side): what the
side's weights, activations and buffers take at their peak. On CUDA it is ``torch.cuda.max_memory_allocated``
(sides run by ONNX Runtime or TensorRT allocate outside torch: not measured).

Weights are random (seeded): latency does not depend on them. Both models run unfused (Conv and BatchNorm
kept apart), with NMS at ``conf`` 0.25 and ``iou`` 0.5 over torchvision ``batched_nms``
(:func:`refdet_edge.postprocess.postprocess`).
"""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from refdet_edge import __version__

CONF, IOU, MAX_DET = 0.25, 0.5, 100
TRAIN_EPISODES, N_WAY, K_SHOT, N_QUERY = 2, 2, 3, 4  # the `refdet train` defaults (batch of 2 episodes)
TRIPLET_RATIO, TRIPLET_WEIGHT = 0.5, 0.5  # the typical stage-3 run: --triplet-ratio 0.5 --triplet-weight 0.5
TRAIN_MAX_REPEATS = 5  # training steps are seconds each on a CPU
MEMORY_CPU = (
    "peak RSS (VmHWM) of a fresh process per side, minus its RSS after importing the libraries "
    "(memory_floor_mb)"
)
MEMORY_CUDA = "torch.cuda.max_memory_allocated in a fresh process per side"
MEMORY_CALLS = 3  # calls of a side, after its warm-up, in the process that measures its memory
VIDEO_FRAMES = 24  # frames of the synthetic video the predict pair decodes (cycled)


@dataclass(frozen=True)
class BenchSettings:
    """What every pair is measured at. ``workdir`` holds prepared files (ONNX exports, a video)."""

    workdir: str
    imgsz: int = 640
    support_size: int = 224
    device: str = "cpu"
    backend: str = "torch"
    repeats: int = 10
    warmup: int = 2
    refs: int = 3

    def __post_init__(self) -> None:
        if self.imgsz <= 0 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32, got {self.imgsz}")
        if self.support_size <= 0 or self.support_size % 14:
            raise ValueError(f"support_size must be a positive multiple of 14, got {self.support_size}")
        if self.backend not in ("torch", "onnx", "trt"):
            raise ValueError(f"backend must be torch, onnx or trt, got {self.backend!r}")
        if self.repeats < 1 or self.warmup < 0 or self.refs < 1:
            raise ValueError(
                f"need repeats >= 1, warmup >= 0 and refs >= 1, got {self.repeats}, {self.warmup}, {self.refs}"
            )

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass
class Side:
    """One side of a pair: ``run()`` processes ``samples`` frames (or training samples) per call;
    ``torch_memory`` says whether its memory lives in torch's allocator (what CUDA measurement reads)."""

    run: Callable[[], Any]
    samples: int = 1
    torch_memory: bool = True


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


@dataclass
class PairResult:
    """The figures of one pair; :meth:`to_dict` is its JSON entry."""

    key: str
    baseline: str
    candidate: str
    unit: str
    baseline_ms: float | None = None
    candidate_ms: float | None = None
    baseline_min_ms: float | None = None
    candidate_min_ms: float | None = None
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
        return ratio(self.candidate_ms, self.baseline_ms)

    @property
    def memory_ratio(self) -> float | None:
        return ratio(self.candidate_memory_mb, self.baseline_memory_mb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "unit": self.unit,
            "baseline_median_ms": _round(self.baseline_ms, 3),
            "candidate_median_ms": _round(self.candidate_ms, 3),
            "latency_ratio": _round(self.latency_ratio, 3),
            "baseline_min_ms": _round(self.baseline_min_ms, 3),
            "candidate_min_ms": _round(self.candidate_min_ms, 3),
            "min_latency_ratio": _round(ratio(self.candidate_min_ms, self.baseline_min_ms), 3),
            "baseline_peak_memory_mb": _round(self.baseline_memory_mb, 1),
            "candidate_peak_memory_mb": _round(self.candidate_memory_mb, 1),
            "memory_ratio": _round(self.memory_ratio, 3),
            "latency_target": self.latency_target,
            "latency_met": self.latency_met,
            "memory_target": self.memory_target,
            "memory_met": self.memory_met,
            "memory_floor_mb": _round(self.memory_floor_mb, 1),
            "repeats": self.repeats,
            "skipped": self.skipped,
            **self.extra,
        }


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or baseline is None or baseline <= 0:
        return None
    return candidate / baseline


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------------------------- measuring


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
) -> tuple[list[float], list[float]]:
    """Per-sample times of both sides over ``repeats`` rounds, after ``warmup`` calls of each; the side that
    goes first alternates between rounds."""
    for _ in range(warmup):
        baseline.run()
        candidate.run()
    times: dict[int, list[float]] = {0: [], 1: []}
    sides = (baseline, candidate)
    for r in range(repeats):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            times[which].append(time_per_sample_ms(sides[which], device))
    return times[0], times[1]


def import_libraries() -> None:
    """Import every library a side may use, so that the memory floor is the same for all of them."""
    import onnxruntime  # noqa: F401
    import ultralytics.nn.tasks  # noqa: F401

    import refdet_edge.data.synth  # noqa: F401
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
    floor = psutil.Process().memory_info().rss / 2**20
    torch.manual_seed(0)
    return peak_memory_mb(PAIRS[key].build(settings, side, {}), settings, floor), floor


def side_peak_memory(key: str, side: str, settings: BenchSettings) -> tuple[float | None, float]:
    """Memory (MB) that side ``side`` ("baseline" or "candidate") of pair ``key`` takes, measured in a new
    spawned process that imports the libraries, reads its RSS (the floor), then builds and runs that side
    alone; returns the figure and the floor. The pair's files must be prepared."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child_peak_memory, key, side, settings).result()


def run_pair(key: str, settings: BenchSettings, memory: bool = True) -> PairResult:
    """Measure pair ``key``: interleaved latencies in this process, then each side's peak memory in a fresh
    process. A pair whose requirements are missing comes back with ``skipped`` set to the reason."""
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
    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    if spec.prepare is not None:
        spec.prepare(settings)
    torch.manual_seed(0)
    shared: dict[str, Any] = {}
    baseline, candidate = (spec.build(settings, side, shared) for side in ("baseline", "candidate"))
    repeats = min(settings.repeats, spec.max_repeats or settings.repeats)
    base_times, cand_times = interleaved_latencies(
        baseline, candidate, repeats, settings.warmup, settings.torch_device
    )
    del baseline, candidate, shared
    gc.collect()
    result.repeats = repeats
    result.baseline_ms = statistics.median(base_times)
    result.candidate_ms = statistics.median(cand_times)
    result.baseline_min_ms, result.candidate_min_ms = min(base_times), min(cand_times)
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


# --------------------------------------------------------------------------------------------- reporting


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _verdict(target: str | None, met: bool | None) -> str | None:
    if target is None:
        return None
    return f"{target}: {'-' if met is None else 'met' if met else 'missed'}"


def format_table(results: list[PairResult]) -> str:
    """One row per pair: medians, latency ratio, peak memories, memory ratio, targets with met/missed."""
    header = (
        "pair",
        "unit",
        "base ms",
        "cand ms",
        "ratio",
        "base MB",
        "cand MB",
        "ratio",
        "target (issue 7)",
    )
    rows = [header]
    for r in results:
        if r.skipped:
            rows.append((r.key, r.unit, "-", "-", "-", "-", "-", "-", f"skipped: {r.skipped}"))
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
    device = settings.torch_device
    return {
        "refdet_edge": __version__,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "backend": settings.backend,
        "imgsz": settings.imgsz,
        "support_size": settings.support_size,
        "refs": settings.refs,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "memory": MEMORY_CUDA if device.type == "cuda" else MEMORY_CPU,
    }


def results_json(results: list[PairResult], settings: BenchSettings) -> dict:
    """``{"environment": {...}, "pairs": {key: {...}}}``."""
    return {"environment": environment(settings), "pairs": {r.key: r.to_dict() for r in results}}


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------- the pairs' sides


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


def _postprocess(boxes: torch.Tensor, scores: torch.Tensor) -> list:
    from refdet_edge.postprocess import postprocess

    return postprocess(boxes, scores, None, CONF, IOU, MAX_DET)


def _frames(settings: BenchSettings) -> torch.Tensor:
    from refdet_edge.export.onnx_export import example_frames

    return example_frames(1, settings.imgsz, seed=1)


def _refdet(settings: BenchSettings, shared: dict) -> tuple[Any, torch.Tensor]:
    """This model (random weights, seed 0) in eval mode on the device, references of one target cached."""
    if "refdet" not in shared:
        from refdet_edge.export.onnx_export import example_references
        from refdet_edge.models import create_model

        torch.manual_seed(0)
        model = create_model(imgsz=settings.imgsz, support_size=settings.support_size).eval()
        model.to(settings.torch_device)
        refs = example_references(1, settings.refs, settings.support_size, seed=0).to(settings.torch_device)
        model.set_references(refs)
        shared["refdet"] = (model, refs)
    return shared["refdet"]


def _build_detection_vs_yolov8n(settings: BenchSettings, side: str, shared: dict) -> Side:
    frames = _frames(settings).to(settings.torch_device)
    if side == "baseline":
        net = plain_yolov8n(settings.torch_device)

        @torch.inference_mode()
        def run_plain():
            return _postprocess(*decode_yolov8(net(frames)[0]))

        return Side(run_plain)
    model, _ = _refdet(settings, shared)

    @torch.inference_mode()
    def run_cached():
        out = model(frames)
        return _postprocess(out["boxes"], out["pred_scores"].sigmoid())

    return Side(run_cached)


def _build_uncached_vs_cached(settings: BenchSettings, side: str, shared: dict) -> Side:
    frames = _frames(settings).to(settings.torch_device)
    model, refs = _refdet(settings, shared)
    if side == "baseline":
        return Side(torch.inference_mode()(lambda: model(frames)))
    return Side(torch.inference_mode()(lambda: model(frames, refs)))


def _build_features_vs_plain(settings: BenchSettings, side: str, shared: dict) -> Side:
    frames = _frames(settings).to(settings.torch_device)
    model, _ = _refdet(settings, shared)
    features = side == "candidate"
    return Side(torch.inference_mode()(lambda: model(frames, return_features=features)))


# ONNX pair: both graphs exported once into the work folder by `_prepare_exports`.
YOLO_ONNX = "yolov8n.onnx"


def _export_dir(settings: BenchSettings) -> Path:
    return Path(settings.workdir) / f"export_{settings.imgsz}_{settings.support_size}"


class _FirstOutput(torch.nn.Module):
    """YOLOv8n with its inference output (B, 84, A) alone (eval mode also returns the raw levels)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


def _prepare_exports(settings: BenchSettings) -> None:
    """``yolov8n.onnx`` and this model's export folder (``refdet export`` layout, random weights, seed 0)."""
    from refdet_edge.export.pipeline import export_model

    out = _export_dir(settings)
    if (out / YOLO_ONNX).is_file() and (out / "metadata.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = _FirstOutput(plain_yolov8n(torch.device("cpu"))).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            net,
            (_frames(settings),),
            str(out / YOLO_ONNX),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
        )
    model, _ = _refdet(replace(settings, device="cpu"), {})
    export_model(model, out, settings.imgsz, source="random weights (benchmark)")


def _reference_photos(settings: BenchSettings) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    s = settings.support_size
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(settings.refs)]


def _build_onnx_detector_vs_yolov8n(settings: BenchSettings, side: str, shared: dict) -> Side:
    import onnxruntime as ort

    from refdet_edge import runtime

    frames = _frames(settings)
    device = settings.torch_device
    if side == "baseline":
        session = ort.InferenceSession(
            str(_export_dir(settings) / YOLO_ONNX), providers=runtime._onnx_providers(device)
        )
        feeds = {"images": frames.numpy()}
        return Side(lambda: _postprocess(*decode_yolov8(session.run(None, feeds)[0])), torch_memory=False)
    rt = runtime.load(_export_dir(settings), "onnx", device=device)
    rt.set_references(_reference_photos(settings))
    return Side(lambda: _postprocess(*rt.infer(frames)), torch_memory=False)


def _onnx_unavailable(settings: BenchSettings) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if settings.torch_device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


# Training pair.


def _train_items() -> tuple[int, int]:
    """Samples per step: detection episodes, and episodes plus the triplets mixed in at TRIPLET_RATIO."""
    triplets = max(1, round(TRAIN_EPISODES * TRIPLET_RATIO / (1 - TRIPLET_RATIO)))
    return TRAIN_EPISODES, TRAIN_EPISODES + triplets


def train_batches(imgsz: int, support_size: int, seed: int = 0) -> tuple[dict, dict]:
    """A detection batch of :data:`TRAIN_EPISODES` episodes (``refdet train`` defaults: 2-way, 3-shot, 4
    queries each, one of them a background frame) in the collators' layout, and a triplet batch of as many
    triplets as ``--triplet-ratio`` :data:`TRIPLET_RATIO` adds to it."""
    g = torch.Generator().manual_seed(seed)
    n, b = TRAIN_EPISODES * N_WAY, TRAIN_EPISODES * N_QUERY
    query_labels, rows = [], []
    for i in range(b):
        episode, slot = divmod(i, N_QUERY)
        if slot == N_QUERY - 1:
            query_labels.append(-1)
            continue
        cls = episode * N_WAY + slot % N_WAY
        query_labels.append(cls)
        x, y = (0.2 + 0.15 * slot) * imgsz, (0.3 + 0.1 * episode) * imgsz
        rows.append([i, cls, x, y, x + imgsz / 16, y + imgsz / 20])
    detection = {
        "batch_type": "detection",
        "query_images": torch.rand(b, 3, imgsz, imgsz, generator=g),
        "support_images": torch.rand(n, K_SHOT, 3, support_size, support_size, generator=g),
        "targets": torch.tensor(rows, dtype=torch.float32),
        "support_labels": torch.arange(n),
        "query_labels": torch.tensor(query_labels),
        "is_background": torch.tensor([label < 0 for label in query_labels]),
    }
    m = _train_items()[1] - TRAIN_EPISODES
    anchors = torch.arange(m) % n
    triplet = {
        "batch_type": "triplet",
        "anchor_images": torch.rand(m, 3, support_size, support_size, generator=g),
        "positive_images": torch.rand(m, 3, support_size, support_size, generator=g),
        "negative_images": torch.rand(m, 3, support_size, support_size, generator=g),
        "anchor_labels": anchors,
        "positive_labels": anchors,
        "negative_labels": torch.full((m,), -1),
    }
    return detection, triplet


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _build_train_mixed_vs_detection(settings: BenchSettings, side: str, shared: dict) -> Side:
    """A stage-3 step (forward, weighted loss, backward, AdamW step) without / with ``--use-triplet``."""
    from refdet_edge.losses import combine
    from refdet_edge.models import create_model
    from refdet_edge.training.prepare import LossComputer
    from refdet_edge.training.stages import stage_spec

    mixed = side == "candidate"
    torch.manual_seed(0)
    model = create_model(imgsz=settings.imgsz, support_size=settings.support_size).train()
    model.to(settings.torch_device)
    spec = stage_spec(3)
    groups = spec.apply(model)
    computer = LossComputer(model, spec.loss_weights(TRIPLET_WEIGHT if mixed else 0.0))
    computer.to(settings.torch_device)
    optimizer = torch.optim.AdamW([*groups["main"], *groups["support"]], lr=spec.lr)
    detection, triplet = _to(train_batches(settings.imgsz, settings.support_size), settings.torch_device)
    batch = {"batch_type": "mixed", "detection": detection, "triplet": triplet} if mixed else detection

    def step():
        optimizer.zero_grad(set_to_none=True)
        combine(computer(batch), computer.weights).backward()
        optimizer.step()

    return Side(step, samples=_train_items()[1] if mixed else _train_items()[0])


def _train_extra(result: PairResult) -> dict[str, Any]:
    """Samples per step of each side and the ratio of whole steps (the cost per epoch: both sides train on
    the same episodes, the candidate on the triplets too)."""
    episodes, items = _train_items()
    return {
        "baseline_samples_per_step": episodes,
        "candidate_samples_per_step": items,
        "step_time_ratio": _round(result.latency_ratio * items / episodes, 3),
    }


# Predict pair.


def _video_root(settings: BenchSettings) -> Path:
    return Path(settings.workdir) / "video"


def _prepare_predict(settings: BenchSettings) -> None:
    """A one-video synthetic dataset (1280x720 JPEG frames, 3 reference photos); exports for onnx/trt."""
    from refdet_edge.data.synth import generate_synthetic

    root = _video_root(settings)
    if not (root / "annotations" / "annotations.json").is_file():
        generate_synthetic(root, videos=1, frames=VIDEO_FRAMES, seed=0, workers=1)
    if settings.backend != "torch":
        _prepare_exports(settings)
    if settings.backend == "trt":
        _prepare_engines(settings)


def _prepare_engines(settings: BenchSettings) -> None:
    from refdet_edge.export.metadata import read_metadata, write_metadata
    from refdet_edge.export.tensorrt import build_engines

    out = _export_dir(settings)
    metadata = read_metadata(out)
    if metadata.get("engines"):
        return
    metadata["engines"] = build_engines(out, metadata, metadata["profiles"], "fp16", device=settings.device)
    write_metadata(out, metadata)


def _pipeline_runtime(settings: BenchSettings, shared: dict):
    from refdet_edge import runtime
    from refdet_edge.data.dataset import reference_paths

    if "runtime" not in shared:
        if settings.backend == "torch":
            model, _ = _refdet(settings, shared)
            rt = runtime.load(model, "torch", device=settings.device, conf=CONF, iou=IOU, max_det=MAX_DET)
        else:
            rt = runtime.load(
                _export_dir(settings), settings.backend, device=settings.device, conf=CONF, iou=IOU
            )
        sample = _video_sample(settings)
        rt.set_references(list(reference_paths(sample, sample.name)))
        shared["runtime"] = rt
    return shared["runtime"]


def _video_sample(settings: BenchSettings) -> Path:
    return next(p for p in sorted((_video_root(settings) / "samples").iterdir()) if p.is_dir())


class CyclicFrames:
    """The frames of one dataset sample (``frames/`` JPEGs or ``drone_video.mp4``), decoded one at a time
    in order and restarted at the end."""

    def __init__(self, sample_dir: Path) -> None:
        from refdet_edge.data.video import open_frames

        self.source = open_frames(sample_dir, sample_dir.name)
        self.frames: Iterator = iter(())

    def next(self) -> tuple[int, np.ndarray]:
        for _ in range(2):  # the rest of the current pass, then a new pass from the first frame
            for index, frame in self.frames:
                if frame is not None:
                    return index, frame
            self.frames = self.source.iter_frames()
        raise RuntimeError(f"{self.source.location}: no decodable frame")


class PredictLoop:
    """What ``refdet predict`` does per frame: decode the next frame, preprocess, run the model, post-process
    (threshold, NMS, boxes to original pixels) and write one CSV row per box."""

    def __init__(self, rt: Any, frames: CyclicFrames, out_csv: Path) -> None:
        self.rt, self.frames = rt, frames
        self.file = open(out_csv, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["frame", "x1", "y1", "x2", "y2", "score", "target"])

    def __call__(self) -> int:
        index, frame = self.frames.next()
        images, infos = self.rt.preprocess([frame])
        detections = self.rt.postprocess(*self.rt.infer(images), infos)[0]
        for box, score, label in zip(
            detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist(), strict=True
        ):
            self.writer.writerow([index, *(f"{v:.1f}" for v in box), f"{score:.4f}", label])
        return len(detections)

    def __del__(self) -> None:
        self.file.close()


def _build_predict_vs_model(settings: BenchSettings, side: str, shared: dict) -> Side:
    rt = _pipeline_runtime(settings, shared)
    frames = CyclicFrames(_video_sample(settings))
    on_torch = settings.backend == "torch"
    if side == "baseline":
        images, _ = rt.preprocess([frames.next()[1]])
        return Side(lambda: rt.infer(images), torch_memory=on_torch)
    loop = PredictLoop(rt, frames, Path(settings.workdir) / f"predict_{settings.backend}.csv")
    return Side(loop, torch_memory=on_torch)


def _predict_extra(result: PairResult) -> dict[str, Any]:
    return {
        "baseline_fps": _round(1e3 / result.baseline_ms, 2),
        "candidate_fps": _round(1e3 / result.candidate_ms, 2),
        "fps_ratio": _round(ratio(result.baseline_ms, result.candidate_ms), 3),
    }


def _predict_unavailable(settings: BenchSettings) -> str | None:
    if settings.backend == "onnx":
        return _onnx_unavailable(settings)
    if settings.backend == "trt":
        if settings.torch_device.type != "cuda":
            return "the trt backend needs a CUDA device (--device cuda)"
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed (pip install 'refdet-edge[trt]')"
    return None


PAIRS: dict[str, PairSpec] = {
    spec.key: spec
    for spec in (
        PairSpec(
            "detection_vs_yolov8n",
            "plain YOLOv8n + NMS",
            "cached prototypes + NMS",
            "ms/frame",
            _build_detection_vs_yolov8n,
            latency_target=Target(1.25, True, "latency <= 1.25x"),
        ),
        PairSpec(
            "uncached_vs_cached",
            "cached prototypes",
            "support encoder every frame",
            "ms/frame",
            _build_uncached_vs_cached,
            latency_target=Target(3.0, False, "latency >= 3x"),
        ),
        PairSpec(
            "features_vs_plain",
            "return_features=False",
            "return_features=True",
            "ms/frame",
            _build_features_vs_plain,
            latency_target=Target(1.03, True, "latency <= 1.03x"),
            memory_target=Target(1.05, True, "memory <= 1.05x"),
        ),
        PairSpec(
            "onnx_detector_vs_yolov8n",
            "YOLOv8n ONNX + NMS",
            "detector.onnx + NMS",
            "ms/frame",
            _build_onnx_detector_vs_yolov8n,
            latency_target=Target(1.25, True, "latency <= 1.25x"),
            prepare=_prepare_exports,
            unavailable=_onnx_unavailable,
        ),
        PairSpec(
            "train_mixed_vs_detection",
            "detection-only step",
            "detection + triplet step",
            "ms/sample",
            _build_train_mixed_vs_detection,
            latency_target=Target(1.15, True, "time/sample <= 1.15x"),
            memory_target=Target(1.25, True, "memory <= 1.25x"),
            max_repeats=TRAIN_MAX_REPEATS,
            extra=_train_extra,
        ),
        PairSpec(
            "predict_vs_model",
            "model only",
            "predict pipeline",
            "ms/frame",
            _build_predict_vs_model,
            latency_target=Target(1.25, True, "frames/s >= 0.8x (latency <= 1.25x)"),
            prepare=_prepare_predict,
            unavailable=_predict_unavailable,
            extra=_predict_extra,
        ),
    )
}


# -------------------------------------------------------------------------------------------- leak check


def rss_mb() -> float:
    """Resident memory of this process (MB), after a garbage collection."""
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def rss_over_training(options: dict[str, Any], marks: tuple[int, int] = (20, 200)) -> dict[str, float]:
    """Train with :class:`refdet_edge.training.trainer.Trainer` (``options`` are ``TrainConfig`` fields;
    use ``workers=0`` so every allocation is in this process) epoch after epoch, and read the RSS at the end
    of the first epoch that reaches each of the two optimizer-step ``marks``.

    Returns ``{"steps_early", "rss_early_mb", "steps_late", "rss_late_mb", "ratio"}``.
    """
    from refdet_edge.training.config import load_config
    from refdet_edge.training.trainer import Trainer

    trainer = Trainer(load_config(None, **options))
    readings: dict[str, float] = {}
    epoch = 0
    while trainer.step < marks[1]:
        trainer.train_epoch(epoch)
        epoch += 1
        if "rss_early_mb" not in readings and trainer.step >= marks[0]:
            readings.update(steps_early=trainer.step, rss_early_mb=rss_mb())
    readings.update(steps_late=trainer.step, rss_late_mb=rss_mb())
    readings["ratio"] = readings["rss_late_mb"] / readings["rss_early_mb"]
    return readings
