"""The two ONNX graphs: ``support_encoder.onnx`` (references -> prototypes) and ``detector.onnx`` (frames +
prototypes -> boxes and scores). Their parity with PyTorch: :mod:`refdet_edge.export.parity`.

Exported with ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter): its
``dynamic_axes`` give exactly the named dynamic dimensions the runtime and the TensorRT profiles need.
Prototypes are graph inputs (never constants), so one detector serves every target; the support input size
is fixed (the position embeddings are built for it and never interpolated at run time).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from refdet_edge.models import RefDetModel

SUPPORT_FILE = "support_encoder.onnx"
DETECTOR_FILE = "detector.onnx"
REFERENCES = "references"
IMAGES = "images"
PROTOTYPES = ("prototypes_p3", "prototypes_p4", "prototypes_p5")
APPEARANCE = "appearance"  # (N, D): a verifying model's reference appearance, after the prototypes
BOXES, SCORES = "boxes", "scores"
EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"


def prototype_names(model: RefDetModel) -> tuple[str, ...]:
    """The per-target tensors between the two graphs, in order: the level prototypes, and the appearance
    of a verifying model."""
    return (*PROTOTYPES, APPEARANCE) if model.verifier is not None else PROTOTYPES


class SupportGraph(nn.Module):
    """(N, K, 3, S, S) references in [0, 1] -> one (N, T, C_l) prototype tensor per level, K combined (and
    the (N, D) appearance of a verifying model)."""

    def __init__(self, model: RefDetModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, references: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.detector_inputs(self.model.encode_references(references)))


class DetectorGraph(nn.Module):
    """(B, 3, H, W) frames in [0, 1] and the support graph's outputs -> boxes (B, A, 4) xyxy in model-input
    pixels and per-target probabilities (B, A, N)."""

    def __init__(self, model: RefDetModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, *prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.detect(images, list(prototypes))
        return out["boxes"], out["pred_scores"].sigmoid()


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict, opset: int
) -> None:
    """Trace ``module`` into ``path``; output axes that are not dynamic get their traced sizes (the exporter
    leaves some as generated names such as ``Transposeboxes_dim_1``)."""
    # A wrapper is created in training mode and the exporter restores the wrapper's mode afterwards, which
    # would switch the wrapped model's BatchNorm layers to training: export and leave everything in eval.
    module.eval()
    with torch.no_grad():
        shapes = {name: tuple(t.shape) for name, t in zip(outputs, module(*args), strict=True)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    for value in graph.graph.output:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i not in axes.get(value.name, {}):
                dim.Clear()
                dim.dim_value = shapes[value.name][i]
    onnx.save(graph, str(path))


def example_references(n: int, k: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, k, 3, size, size, generator=torch.Generator().manual_seed(seed))


def example_frames(b: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def simplify_onnx(path: Path) -> None:
    """Rewrite ``path`` with onnxslim (constant folding, dead-node and redundant-op elimination)."""
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))


def export_onnx(
    model: RefDetModel, out_dir: Path, imgsz: int, opset: int = 17, simplify: bool = False
) -> dict:
    """Write both graphs into ``out_dir``, check them with ``onnx.checker`` and return their file names.

    Traced with 2 targets, 2 references and a batch of 2 (no axis of size 1, which the tracer could
    specialise); every one of those axes is then dynamic in the graph.
    """
    model = model.eval()
    s = model.config.support_size
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = example_references(2, 2, s, seed=0)
    frames = example_frames(2, imgsz, seed=0)
    with torch.no_grad():
        prototypes = model.detector_inputs(model.encode_references(refs))
    names = prototype_names(model)
    proto_axes = {name: {0: "targets"} for name in names}
    support_path, detector_path = out_dir / SUPPORT_FILE, out_dir / DETECTOR_FILE
    _export(
        SupportGraph(model),
        (refs,),
        support_path,
        [REFERENCES],
        list(names),
        {REFERENCES: {0: "targets", 1: "refs"}, **proto_axes},
        opset,
    )
    _export(
        DetectorGraph(model),
        (frames, *prototypes),
        detector_path,
        [IMAGES, *names],
        [BOXES, SCORES],
        {IMAGES: {0: "batch"}, **proto_axes, BOXES: {0: "batch"}, SCORES: {0: "batch", 2: "targets"}},
        opset,
    )
    for path in (support_path, detector_path):
        if simplify:
            simplify_onnx(path)
        onnx.checker.check_model(str(path), full_check=True)
    return {"support_encoder": SUPPORT_FILE, "detector": DETECTOR_FILE}


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
