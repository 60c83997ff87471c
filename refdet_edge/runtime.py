"""One inference API over PyTorch, ONNX Runtime and TensorRT: set references once, then run frames.

    rt = runtime.load("export_dir", backend="onnx")      # or load("best.pt"), load("export_dir", "trt")
    rt.set_references(["img_1.jpg", "img_2.jpg", "img_3.jpg"])   # one target; a list of lists for several
    detections = rt(frames)                              # list of RGB uint8 arrays -> list[FrameDetections]

Every backend uses the same pre-processing (:func:`refdet_edge.preprocess.preprocess_images`: RGB, letterbox,
[0, 1]) and post-processing (:func:`refdet_edge.postprocess.postprocess`: threshold, per-target NMS,
``max_det``, boxes back to original pixels); only the two model calls differ: references -> prototypes
(once per target set) and frames + prototypes -> boxes and per-target probabilities.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refdet_edge.export.metadata import ExportError, read_metadata
from refdet_edge.export.onnx_export import BOXES, IMAGES, REFERENCES, SCORES
from refdet_edge.models import RefDetModel, load_model
from refdet_edge.postprocess import FrameDetections, postprocess
from refdet_edge.preprocess import LetterboxInfo, preprocess_images, read_image_rgb

BACKENDS = ("torch", "onnx", "trt")
ImageLike = np.ndarray | str | Path


class ParityWarning(UserWarning):
    """An export is loaded whose ONNX Runtime outputs did not match PyTorch's at export time."""


def _is_image(item: object) -> bool:
    return isinstance(item, np.ndarray | str | Path)


def _read(item: ImageLike) -> np.ndarray:
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ValueError(
                f"expected an HxWx3 RGB uint8 image, got {item.dtype} array of shape {item.shape}"
            )
        return item
    return read_image_rgb(item)


class Runtime(ABC):
    """What every backend shares: reference handling, batching, pre- and post-processing.

    Attributes: ``backend``, ``device``, ``imgsz`` and ``support_size`` (model input sizes), ``conf``,
    ``iou``, ``max_det`` (post-processing, may be changed at any time), and the largest batch, number of
    targets and references per target the backend accepts (``None``: no limit).
    """

    backend: str

    def __init__(
        self,
        imgsz: int,
        support_size: int,
        device: torch.device,
        conf: float,
        iou: float,
        max_det: int,
        limits: dict[str, int | None] | None = None,
    ) -> None:
        self.imgsz, self.support_size, self.device = imgsz, support_size, device
        self.conf, self.iou, self.max_det = conf, iou, max_det
        limits = limits or {}
        self.max_batch = limits.get("batch")
        self.max_targets = limits.get("targets")
        self.max_refs = limits.get("refs")
        self._prototypes: list[Any] | None = None
        self.num_targets = 0

    @abstractmethod
    def _encode(self, references: torch.Tensor) -> list[Any]:
        """(N, K, 3, S, S) references in [0, 1] -> per-level prototypes in the backend's own form."""

    @abstractmethod
    def _concat(self, parts: list[list[Any]]) -> list[Any]:
        """Join per-level prototypes of several encoder calls along the target axis."""

    @abstractmethod
    def _detect(self, images: torch.Tensor, prototypes: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) frames in [0, 1] -> boxes (B, A, 4) in model-input pixels, probabilities (B, A, N)."""

    @abstractmethod
    def _to_cpu(self, prototypes: list[Any]) -> list[torch.Tensor]:
        """Prototypes in the backend's form -> float32 CPU tensors."""

    def set_references(self, images: Sequence[ImageLike] | Sequence[Sequence[ImageLike]]) -> None:
        """Encode the reference photos of one target (a list of RGB uint8 arrays or image paths) or of
        several (a list of such lists) and keep their prototypes for every following call."""
        if _is_image(images):
            images = [images]
        targets = [images] if images and all(_is_image(i) for i in images) else images
        if not targets or any(not t or _is_image(t) or not all(_is_image(i) for i in t) for t in targets):
            raise ValueError(
                "references must be a non-empty list of images (arrays or paths) for one target, "
                "or a list of such lists for several targets"
            )
        if self.max_targets is not None and len(targets) > self.max_targets:
            raise ValueError(
                f"{len(targets)} targets given, this {self.backend} model takes at most {self.max_targets}"
            )
        counts = {len(t) for t in targets}
        if self.max_refs is not None and max(counts) > self.max_refs:
            raise ValueError(
                f"{max(counts)} references given for one target, this {self.backend} model takes at most {self.max_refs}"
            )
        tensors = [preprocess_images([_read(i) for i in t], self.support_size)[0] for t in targets]
        if len(counts) == 1:
            prototypes = self._encode(torch.stack(tensors))
        else:  # a different number of photos per target: K is combined per target, so encode each alone
            prototypes = self._concat([self._encode(t[None]) for t in tensors])
        self._prototypes, self.num_targets = prototypes, len(targets)

    def clear_references(self) -> None:
        self._prototypes, self.num_targets = None, 0

    @property
    def prototypes(self) -> list[torch.Tensor]:
        """The current per-level prototypes (N, T, C_l) as float32 CPU tensors."""
        return self._to_cpu(self._require_prototypes())

    def _require_prototypes(self) -> list[Any]:
        if self._prototypes is None:
            raise RuntimeError("no references: call set_references(images) first")
        return self._prototypes

    def preprocess(self, frames: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[LetterboxInfo]]:
        """RGB uint8 frames -> the (B, 3, imgsz, imgsz) batch in [0, 1] and each frame's letterbox mapping."""
        if not len(frames):
            raise ValueError("no frames given")
        return preprocess_images([_read(f) for f in frames], self.imgsz)

    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model alone: a preprocessed batch -> boxes (B, A, 4) and probabilities (B, A, N), on the
        backend's device; batches larger than ``max_batch`` run in chunks."""
        prototypes = self._require_prototypes()
        step = self.max_batch or len(images)
        parts = [self._detect(images[i : i + step], prototypes) for i in range(0, len(images), step)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def postprocess(
        self, boxes: torch.Tensor, scores: torch.Tensor, infos: list[LetterboxInfo]
    ) -> list[FrameDetections]:
        """Threshold, per-target NMS and ``max_det`` with this runtime's settings; boxes in original pixels
        of each frame, results on the CPU."""
        detections = postprocess(boxes, scores, infos, self.conf, self.iou, self.max_det)
        return [FrameDetections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in detections]

    def __call__(self, frames: Sequence[np.ndarray]) -> list[FrameDetections]:
        """Detections of every target in each frame (RGB uint8 arrays of any size), in original pixels."""
        images, infos = self.preprocess(frames)
        boxes, scores = self.infer(images)
        return self.postprocess(boxes, scores, infos)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(backend={self.backend!r}, device={str(self.device)!r}, imgsz={self.imgsz}, "
            f"support_size={self.support_size}, targets={self.num_targets})"
        )


class TorchRuntime(Runtime):
    """The PyTorch model itself (a checkpoint of this project, or a model in memory)."""

    backend = "torch"

    def __init__(
        self, model: RefDetModel, device: torch.device, imgsz: int | None = None, **settings: Any
    ) -> None:
        super().__init__(imgsz or model.config.input_size, model.config.support_size, device, **settings)
        self.model = model.to(device).eval()

    @torch.inference_mode()
    def _encode(self, references: torch.Tensor) -> list[torch.Tensor]:
        return self.model.detector_inputs(self.model.encode_references(references.to(self.device)))

    def _concat(self, parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.cat(level) for level in zip(*parts, strict=True)]

    @torch.inference_mode()
    def _detect(
        self, images: torch.Tensor, prototypes: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.detect(images.to(self.device), prototypes)
        return out["boxes"], out["pred_scores"].sigmoid()

    def _to_cpu(self, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p.float().cpu() for p in prototypes]


class OnnxRuntime(Runtime):
    """``support_encoder.onnx`` and ``detector.onnx`` in ONNX Runtime sessions."""

    backend = "onnx"

    def __init__(
        self, model_dir: Path, metadata: dict, device: torch.device, threads: int | None, **settings: Any
    ):
        super().__init__(metadata["imgsz"], metadata["support_size"], device, **settings)
        graphs = metadata["graphs"]
        paths = {key: model_dir / graphs[key]["file"] for key in ("support_encoder", "detector")}
        for path in paths.values():
            if not path.is_file():
                raise ExportError(f"{path}: no such file (named in {model_dir / 'metadata.json'})")
        self.support = onnx_session(paths["support_encoder"], device, threads)
        self.detector = onnx_session(paths["detector"], device, threads)
        self.names = [i.name for i in self.detector.get_inputs() if i.name != IMAGES]

    def _encode(self, references: torch.Tensor) -> list[np.ndarray]:
        return self.support.run(self.names, {REFERENCES: references.numpy()})

    def _concat(self, parts: list[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.concatenate(level) for level in zip(*parts, strict=True)]

    def _detect(
        self, images: torch.Tensor, prototypes: list[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {IMAGES: images.numpy(), **dict(zip(self.names, prototypes, strict=True))}
        boxes, scores = self.detector.run([BOXES, SCORES], feeds)
        return torch.from_numpy(boxes), torch.from_numpy(scores)

    def _to_cpu(self, prototypes: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(p).float() for p in prototypes]


class TensorRTRuntime(Runtime):
    """The engines built by ``refdet export --trt``, run with torch CUDA tensors as buffers."""

    backend = "trt"

    def __init__(self, model_dir: Path, metadata: dict, device: torch.device, **settings: Any) -> None:
        from refdet_edge.export.tensorrt import TrtEngine

        engines = metadata.get("engines")
        if not engines:
            raise ExportError(
                f"{model_dir / 'metadata.json'}: field 'engines' missing (no TensorRT engines built here): "
                f"run `refdet export --no-onnx --trt --out {model_dir}` on this device"
            )
        limits = {axis: rng[2] for axis, rng in engines["profiles"].items()}
        super().__init__(metadata["imgsz"], metadata["support_size"], device, limits=limits, **settings)
        paths = {key: model_dir / engines[key]["file"] for key in ("support_encoder", "detector")}
        for path in paths.values():
            if not path.is_file():
                raise ExportError(f"{path}: no such engine file (named in {model_dir / 'metadata.json'})")
        self.support = TrtEngine(paths["support_encoder"], device)
        self.detector = TrtEngine(paths["detector"], device)
        self.names = [name for name in self.detector.inputs if name != IMAGES]

    def _encode(self, references: torch.Tensor) -> list[torch.Tensor]:
        out = self.support(**{REFERENCES: references})
        return [out[name] for name in self.names]

    def _concat(self, parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.cat(level) for level in zip(*parts, strict=True)]

    def _detect(
        self, images: torch.Tensor, prototypes: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.detector(**{IMAGES: images, **dict(zip(self.names, prototypes, strict=True))})
        return out[BOXES].float(), out[SCORES].float()

    def _to_cpu(self, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p.float().cpu() for p in prototypes]


def _device(backend: str, device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if backend == "trt" or (backend == "torch" and torch.cuda.is_available()) else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but no CUDA GPU is visible to torch")
    if backend == "trt" and device.type != "cuda":
        raise ValueError(f"the trt backend runs on a CUDA device, not {device}")
    return device


def _onnx_providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(
            f"device {device} requested but this onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu, or use device='cpu')"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def onnx_session(path: Path, device: torch.device, threads: int | None = None):
    """An ONNX Runtime session of ``path`` on ``device``. With ``threads``: that many intra-op threads, one
    inter-op thread, sequential execution and no spinning of idle worker threads (they would take the cores
    from whatever runs next: the figures of ``refdet bench``); without, ONNX Runtime's defaults."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=_onnx_providers(device))


def warn_if_parity_failed(model_dir: Path, metadata: dict) -> None:
    """A :class:`ParityWarning` when the export's ``metadata.json`` records a failed parity check."""
    parity = metadata.get("parity")
    if isinstance(parity, dict) and parity.get("passed") is False:
        figures = "; ".join(parity.get("failures", [])) or "see field 'parity'"
        warnings.warn(
            f"{model_dir / 'metadata.json'}: field 'parity' failed at export ({figures}): this export's "
            "detections may differ from the PyTorch model's",
            ParityWarning,
            stacklevel=3,
        )


def load(
    source: str | Path | RefDetModel,
    backend: str = "torch",
    device: str | torch.device | None = None,
    conf: float = 0.25,
    iou: float = 0.5,
    max_det: int = 100,
    imgsz: int | None = None,
    threads: int | None = None,
) -> Runtime:
    """A runtime for ``source``: a checkpoint file (or a model in memory) for ``torch``, an export folder
    written by ``refdet export`` (or its ``metadata.json``) for ``onnx`` and ``trt``.

    ``device`` defaults to CUDA when available for torch, CPU for onnx, and ``cuda`` for trt. ``imgsz``
    overrides the torch model's input size; the exported graphs have theirs fixed in the metadata.
    ``threads`` fixes ONNX Runtime's thread count (see :func:`onnx_session`). An export whose parity check
    failed loads with a :class:`ParityWarning`. Bad files raise :class:`refdet_edge.models.WeightsError` or :class:`ExportError` naming the file.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    settings = {"conf": conf, "iou": iou, "max_det": max_det}
    dev = _device(backend, device)
    if backend == "torch":
        if isinstance(source, RefDetModel):
            return TorchRuntime(source, dev, imgsz, **settings)
        if Path(source).is_dir():
            raise ExportError(f"{source}: a folder; the torch backend loads a checkpoint file (--weights)")
        return TorchRuntime(load_model(source), dev, imgsz, **settings)
    if isinstance(source, RefDetModel):
        raise TypeError(f"the {backend} backend loads an export folder, not a model in memory")
    metadata = read_metadata(source)
    model_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    if imgsz is not None and imgsz != metadata["imgsz"]:
        raise ExportError(
            f"{model_dir / 'metadata.json'}: field 'imgsz' is {metadata['imgsz']}, the graphs cannot run at {imgsz}"
        )
    warn_if_parity_failed(model_dir, metadata)
    if backend == "onnx":
        return OnnxRuntime(model_dir, metadata, dev, threads, **settings)
    return TensorRTRuntime(model_dir, metadata, dev, **settings)
