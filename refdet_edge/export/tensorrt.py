"""TensorRT engines from the exported ONNX graphs (TensorRT's Python API), and running them with torch CUDA
tensors as buffers.

Engines are built with one optimization profile holding every input: the image batch and, separately, the
number of targets of the prototype inputs (and the number of references of the support encoder). FP16 by
default; INT8 calibrates the detector with an entropy calibrator fed with real frames and the prototypes of
their own video's references (computed by the support engine just built, as at run time). The support
encoder stays FP16 under ``--int8``: it runs once per target, and a ViT loses most to INT8.

Building needs TensorRT 10.x (JetPack 6): TensorRT 11 removed the FP16/INT8 builder flags and calibrators.
Running an engine uses only the name-based tensor API shared by 10.x and 11.x.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from refdet_edge.export.calibration import CalibrationFrame
from refdet_edge.export.metadata import ExportError
from refdet_edge.export.onnx_export import IMAGES, REFERENCES
from refdet_edge.preprocess import preprocess_images, read_image_rgb

SUPPORT_ENGINE = "support_encoder.engine"
DETECTOR_ENGINE = "detector.engine"
CALIBRATION_CACHE = "detector.int8.cache"
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = (
    "install `refdet-edge[trt]` (pip install 'refdet-edge[trt]', or use JetPack's system TensorRT) and build "
    "the engines on the target device: `refdet export --no-onnx --trt --out DIR` there"
)


class TensorRTUnavailable(ExportError):
    """TensorRT or a CUDA GPU is missing; the message says how to get both."""


def import_tensorrt(build: bool = False) -> Any:
    """The ``tensorrt`` module, once a CUDA GPU is known to be there; ``build`` also requires TensorRT 10.x."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailable(f"TensorRT is not installed ({err}): {INSTALL_HINT}") from None
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"no CUDA GPU is visible to torch: {INSTALL_HINT}")
    major = int(trt.__version__.split(".")[0])
    if major < 10 or (build and major != 10):
        need = "10.x to build engines (11.x removed the FP16/INT8 builder flags)" if build else ">= 10"
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found, {need} needed: {INSTALL_HINT}")
    return trt


def profile_shapes(graph: dict, profiles: dict[str, list[int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every input of a graph described in metadata: each named dynamic axis takes
    its range from ``profiles`` (``{"batch": [1, 1, 4], "targets": [...], "refs": [...]}``)."""
    shapes = {}
    for spec in graph["inputs"]:
        dims = spec["shape"]
        shapes[spec["name"]] = tuple(
            tuple(profiles[d][i] if isinstance(d, str) else d for d in dims) for i in range(3)
        )
    return shapes


class TrtEngine:
    """A deserialized engine and one execution context, called with named torch tensors."""

    DTYPES = ("float32", "float16", "int32", "int64", "int8", "bool")

    def __init__(self, path: Path, device: torch.device) -> None:
        trt = import_tensorrt()
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ExportError(
                    f"{path}: TensorRT {trt.__version__} cannot deserialize this engine (built with another "
                    "TensorRT version or on another GPU?): rebuild it on this device with `refdet export --trt`"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        to_torch = {getattr(trt, name): getattr(torch, name) for name in self.DTYPES}
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run on the current CUDA stream; outputs are torch tensors on the engine's device."""
        held = {}
        for name in self.inputs:
            tensor = inputs[name].to(self.device, self.dtypes[name]).contiguous()
            held[name] = tensor
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(
                    f"input {name!r} of shape {tuple(tensor.shape)} is outside the engine's profile"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
        return outputs


def _calibration_batches(
    frames: list[CalibrationFrame], support: TrtEngine, imgsz: int, support_size: int, refs_max: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Detector inputs for calibration: one frame (1, 3, H, W) and the prototypes (1, T, C) of its video."""
    prototypes: dict[tuple[Path, ...], dict[str, torch.Tensor]] = {}
    for item in frames:
        if item.references not in prototypes:
            refs, _ = preprocess_images([read_image_rgb(p) for p in item.references[:refs_max]], support_size)
            prototypes[item.references] = support(**{REFERENCES: refs[None]})
        images, _ = preprocess_images([read_image_rgb(item.frame)], imgsz)
        yield {IMAGES: images, **prototypes[item.references]}


def _make_calibrator(
    trt: Any, batches: Iterator[dict[str, torch.Tensor]], cache_path: Path, device: torch.device
):
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds every detector input (frames and their prototypes) from CUDA tensors it keeps alive."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.current: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(batches, None)
            if batch is None:
                return None
            self.current = {k: v.to(device, torch.float32).contiguous() for k, v in batch.items()}
            torch.cuda.synchronize(device)
            return [self.current[name].data_ptr() for name in names]

        def read_calibration_cache(self) -> None:
            return None  # always calibrate on the frames given now

        def write_calibration_cache(self, cache) -> None:
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], ...]],
    precision: str,
    workspace_gib: float,
    calibrator: Any = None,
) -> None:
    """Parse ``onnx_path``, build with one optimization profile covering ``shapes`` at ``precision`` and
    write the serialized engine. Normalization layers stay FP32 under FP16/INT8 (they overflow in FP16)."""
    trt = import_tensorrt(build=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT cannot parse this graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        calibration = builder.create_optimization_profile()  # calibration runs at the minimum shapes:
        for name, (low, _, _) in shapes.items():  # one frame and the prototypes of one target
            calibration.set_shape(name, low, low, low)
        config.set_calibration_profile(calibration)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))


def build_engines(
    out_dir: Path,
    metadata: dict,
    profiles: dict[str, list[int]],
    precision: str = "fp16",
    calibration: list[CalibrationFrame] | None = None,
    workspace_gib: float = 2.0,
    device: str = "cuda",
) -> dict:
    """Build ``support_encoder.engine`` and ``detector.engine`` beside the ONNX files; return the
    ``engines`` section of the metadata (files, precisions, profiles, TensorRT version)."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and not calibration:
        raise ExportError("INT8 needs calibration frames (--calib-data)")
    trt = import_tensorrt(build=True)
    dev = torch.device(device)
    graphs = metadata["graphs"]
    support_precision = "fp16" if precision == "int8" else precision
    build_engine(
        out_dir / graphs["support_encoder"]["file"],
        out_dir / SUPPORT_ENGINE,
        profile_shapes(graphs["support_encoder"], profiles),
        support_precision,
        workspace_gib,
    )
    calibrator = None
    if precision == "int8":
        support = TrtEngine(out_dir / SUPPORT_ENGINE, dev)
        batches = _calibration_batches(
            calibration, support, metadata["imgsz"], metadata["support_size"], profiles["refs"][2]
        )
        calibrator = _make_calibrator(trt, batches, out_dir / CALIBRATION_CACHE, dev)
    build_engine(
        out_dir / graphs["detector"]["file"],
        out_dir / DETECTOR_ENGINE,
        profile_shapes(graphs["detector"], profiles),
        precision,
        workspace_gib,
        calibrator,
    )
    return {
        "tensorrt_version": trt.__version__,
        "device": torch.cuda.get_device_name(dev),
        "support_encoder": {"file": SUPPORT_ENGINE, "precision": support_precision},
        "detector": {"file": DETECTOR_ENGINE, "precision": precision},
        "profiles": profiles,
        "calibration_frames": len(calibration) if precision == "int8" else 0,
    }
