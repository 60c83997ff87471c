"""The ONNX pair: plain YOLOv8n exported to ONNX against this model's ``detector.onnx``, both in ONNX
Runtime with the same thread count (no spinning worker threads, which would take the cores from the other
side's next call), followed by the same NMS. Both graphs are exported once into the work folder."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from refdet_edge.benchmark.inference import decode_yolov8, frames, nms, plain_yolov8n, refdet_model
from refdet_edge.benchmark.measure import Side
from refdet_edge.benchmark.settings import BenchSettings

YOLO_ONNX = "yolov8n.onnx"


def export_dir(settings: BenchSettings) -> Path:
    encoder = (settings.support_encoder or "default").replace(":", "_")
    name = f"export_{settings.imgsz}_{settings.support_size}_{encoder}_verify{settings.verify_topk}x{settings.verify_scale}"
    return Path(settings.workdir) / name


class _FirstOutput(torch.nn.Module):
    """YOLOv8n with its inference output (B, 84, A) alone (eval mode also returns the raw levels)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


def prepare_exports(settings: BenchSettings) -> None:
    """``yolov8n.onnx`` and this model's export folder (``refdet export`` layout, random weights, seed 0)."""
    from refdet_edge.export.pipeline import export_model

    out = export_dir(settings)
    if (out / YOLO_ONNX).is_file() and (out / "metadata.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = _FirstOutput(plain_yolov8n(torch.device("cpu"))).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            net,
            (frames(settings, baseline=True),),
            str(out / YOLO_ONNX),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
        )
    model, _ = refdet_model(replace(settings, device="cpu"), {})
    export_model(model, out, settings.input_size, source="random weights (benchmark)")


def reference_photos(settings: BenchSettings) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    s = settings.support_size
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(settings.refs)]


def build_onnx_detector_vs_yolov8n(settings: BenchSettings, side: str, shared: dict) -> Side:
    from refdet_edge import runtime

    images = frames(settings, baseline=side == "baseline")
    device, threads = settings.torch_device, settings.num_threads
    if side == "baseline":
        session = runtime.onnx_session(export_dir(settings) / YOLO_ONNX, device, threads)
        feeds = {"images": images.numpy()}
        return Side(lambda: nms(*decode_yolov8(session.run(None, feeds)[0])), torch_memory=False)
    with warnings.catch_warnings():  # random weights: whatever the export's parity said, the cost is the same
        warnings.simplefilter("ignore", runtime.ParityWarning)
        rt = runtime.load(export_dir(settings), "onnx", device=device, threads=threads)
    rt.set_references(reference_photos(settings))
    return Side(lambda: nms(*rt.infer(images)), torch_memory=False)


def onnx_unavailable(settings: BenchSettings) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if settings.torch_device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None
