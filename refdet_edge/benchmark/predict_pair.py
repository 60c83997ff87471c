"""The predict pair: what ``refdet predict`` does per frame (decode the next JPEG frame, then
:func:`refdet_edge.evaluation.predict.predict_stream`: preprocess, model, post-process, temporal filter; and a
CSV row per box) against the model alone, on a synthetic 1280x720 video, with the chosen ``--backend``."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from refdet_edge.benchmark.inference import CONF, IOU, MAX_DET, refdet_model
from refdet_edge.benchmark.measure import Side
from refdet_edge.benchmark.onnx_pair import export_dir, onnx_unavailable, prepare_exports
from refdet_edge.benchmark.report import PairResult, ratio, rounded
from refdet_edge.benchmark.settings import BenchSettings

VIDEO_FRAMES = 24  # frames of the synthetic video (cycled)
CHUNK = 4  # frames per timed call, one at a time through the model; divides VIDEO_FRAMES


def video_root(settings: BenchSettings) -> Path:
    return Path(settings.workdir) / "video"


def prepare_predict(settings: BenchSettings) -> None:
    """A one-video synthetic dataset (1280x720 JPEG frames, 3 reference photos); exports for onnx/trt."""
    from refdet_edge.data.synth import generate_synthetic

    root = video_root(settings)
    if not (root / "annotations" / "annotations.json").is_file():
        generate_synthetic(root, videos=1, frames=VIDEO_FRAMES, seed=0, workers=1)
    if settings.backend != "torch":
        prepare_exports(settings)
    if settings.backend == "trt":
        _prepare_engines(settings)


def _prepare_engines(settings: BenchSettings) -> None:
    from refdet_edge.export.metadata import read_metadata, write_metadata
    from refdet_edge.export.tensorrt import build_engines

    out = export_dir(settings)
    metadata = read_metadata(out)
    if metadata.get("engines"):
        return
    metadata["engines"] = build_engines(out, metadata, metadata["profiles"], "fp16", device=settings.device)
    write_metadata(out, metadata)


def _video_sample(settings: BenchSettings) -> Path:
    return next(p for p in sorted((video_root(settings) / "samples").iterdir()) if p.is_dir())


def _pipeline_runtime(settings: BenchSettings, shared: dict):
    from refdet_edge import runtime
    from refdet_edge.data.dataset import reference_paths

    if "runtime" not in shared:
        options = {"device": settings.device, "conf": CONF, "iou": IOU, "max_det": MAX_DET}
        if settings.backend == "torch":
            rt = runtime.load(refdet_model(settings, shared)[0], "torch", **options)
        else:
            with warnings.catch_warnings():  # random weights: parity does not change the cost
                warnings.simplefilter("ignore", runtime.ParityWarning)
                rt = runtime.load(
                    export_dir(settings), settings.backend, threads=settings.num_threads, **options
                )
        sample = _video_sample(settings)
        rt.set_references(list(reference_paths(sample, sample.name)))
        shared["runtime"] = rt
    return shared["runtime"]


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
    """One call: the next :data:`CHUNK` frames through ``predict_stream`` (batch size 1, temporal filter on),
    one CSV row per frame with a box."""

    def __init__(self, rt: Any, frames: CyclicFrames, out_csv: Path) -> None:
        from refdet_edge.evaluation.temporal import TemporalConfig

        self.rt, self.frames = rt, frames
        self.temporal = TemporalConfig(score_threshold=CONF)
        self.file = open(out_csv, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["frame", "x1", "y1", "x2", "y2", "score"])

    def _write(self, index: int, frame: np.ndarray | None, box: tuple[float, ...] | None) -> None:
        if box is not None:
            self.writer.writerow([index, *(f"{v:.3f}" for v in box)])

    def __call__(self) -> int:
        from refdet_edge.evaluation.predict import predict_stream

        chunk = [self.frames.next() for _ in range(CHUNK)]
        return len(predict_stream(self.rt, chunk, self.temporal, 1, on_frame=self._write).boxes)

    def __del__(self) -> None:
        self.file.close()


def build_predict_vs_model(settings: BenchSettings, side: str, shared: dict) -> Side:
    rt = _pipeline_runtime(settings, shared)
    frames = CyclicFrames(_video_sample(settings))
    on_torch = settings.backend == "torch"
    if side == "baseline":
        images, _ = rt.preprocess([frames.next()[1]])

        def model_only():
            for _ in range(CHUNK):
                rt.infer(images)

        return Side(model_only, samples=CHUNK, torch_memory=on_torch)
    loop = PredictLoop(rt, frames, Path(settings.workdir) / f"predict_{settings.backend}.csv")
    return Side(loop, samples=CHUNK, torch_memory=on_torch)


def predict_extra(result: PairResult) -> dict[str, Any]:
    return {
        "baseline_fps": rounded(1e3 / result.baseline_ms, 2),
        "candidate_fps": rounded(1e3 / result.candidate_ms, 2),
        "fps_ratio": rounded(ratio(result.baseline_ms, result.candidate_ms), 3),
    }


def predict_unavailable(settings: BenchSettings) -> str | None:
    if settings.backend == "onnx":
        return onnx_unavailable(settings)
    if settings.backend == "trt":
        if settings.torch_device.type != "cuda":
            return "the trt backend needs a CUDA device (--device cuda)"
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed (pip install 'refdet-edge[trt]')"
    return None
