"""The two ONNX graphs: ``support_encoder.onnx`` (references -> prototypes) and ``detector.onnx`` (frames +
prototypes -> boxes and scores), and the parity check of ONNX Runtime against PyTorch.

Exported with ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter): its
``dynamic_axes`` give exactly the named dynamic dimensions the runtime and the TensorRT profiles need.
Prototypes are graph inputs (never constants), so one detector serves every target; the support input size
is fixed (the position embeddings are built for it and never interpolated at run time).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torchvision.ops import box_iou

from refdet_edge.export.metadata import ExportError
from refdet_edge.models import RefDetModel
from refdet_edge.postprocess import postprocess

SUPPORT_FILE = "support_encoder.onnx"
DETECTOR_FILE = "detector.onnx"
REFERENCES = "references"
IMAGES = "images"
PROTOTYPES = ("prototypes_p3", "prototypes_p4", "prototypes_p5")
BOXES, SCORES = "boxes", "scores"
EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"

SCORE_TOLERANCE = 1e-4
IOU_TOLERANCE = 0.99
# Parity post-processing: no threshold and no max_det cut, so every case compares every box NMS keeps,
# even on a random-weight model. NMS sees scores rounded to 1e-5 on both sides: float-noise near-ties (1e-8 apart,
# common in random-weight models) then become exact ties, broken the same way (by anchor index).
PARITY_CONF, PARITY_IOU, PARITY_DECIMALS = 0.0, 0.5, 5
PARITY_CASES = ((1, 1), (1, 2), (3, 1), (3, 2))  # (targets, batch)
PARITY_REFS = 3


class SupportGraph(nn.Module):
    """(N, K, 3, S, S) references in [0, 1] -> one (N, T, C_l) prototype tensor per level, K combined."""

    def __init__(self, model: RefDetModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, references: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode_references(references).prototypes)


class DetectorGraph(nn.Module):
    """(B, 3, H, W) frames in [0, 1] and per-level prototypes -> boxes (B, A, 4) xyxy in model-input pixels
    and per-target probabilities (B, A, N)."""

    def __init__(self, model: RefDetModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.detect(images, [p3, p4, p5])
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
    s, pool, grid = model.config.support_size, model.config.prototype_pool, model.support.grid
    if grid[0] % pool or grid[1] % pool:
        raise ExportError(
            f"field 'config.support_size' {s} gives a {grid[0]}x{grid[1]} patch grid that prototype_pool {pool} "
            "does not divide, and ONNX has no such adaptive pooling: train with a support size whose grid "
            f"(size / patch) is a multiple of {pool}, such as 224"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = example_references(2, 2, s, seed=0)
    frames = example_frames(2, imgsz, seed=0)
    with torch.no_grad():
        prototypes = model.encode_references(refs).prototypes
    proto_axes = {name: {0: "targets"} for name in PROTOTYPES}
    support_path, detector_path = out_dir / SUPPORT_FILE, out_dir / DETECTOR_FILE
    _export(
        SupportGraph(model),
        (refs,),
        support_path,
        [REFERENCES],
        list(PROTOTYPES),
        {REFERENCES: {0: "targets", 1: "refs"}, **proto_axes},
        opset,
    )
    _export(
        DetectorGraph(model),
        (frames, *prototypes),
        detector_path,
        [IMAGES, *PROTOTYPES],
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


def match_boxes(
    reference: torch.Tensor, other: torch.Tensor, labels_ref: torch.Tensor, labels_other: torch.Tensor
) -> float:
    """Smallest IoU between a box of ``reference`` and its best match of the same label in ``other``
    (1.0 when both are empty, 0.0 when only one is)."""
    if len(reference) == 0 or len(other) == 0:
        return 1.0 if len(reference) == len(other) else 0.0
    iou = box_iou(reference, other)
    iou[labels_ref[:, None] != labels_other[None, :]] = 0.0
    return float(iou.max(1).values.min())


def check_parity(model: RefDetModel, out_dir: Path, imgsz: int, seed: int = 1) -> dict:
    """ONNX Runtime against PyTorch on the same inputs, with references never seen at export time.

    Both sides encode the same fresh references (K = 3) with their own support encoder; each detector then
    uses its own prototypes. Reported per (targets, batch) case: the largest probability difference, the
    largest box-coordinate difference, and after NMS whether both kept as many boxes and the smallest IoU
    of a PyTorch box with its ONNX Runtime match.
    """
    model = model.eval()
    support, detector = cpu_session(out_dir / SUPPORT_FILE), cpu_session(out_dir / DETECTOR_FILE)
    s = model.config.support_size
    cases, proto_diff = [], 0.0
    for n, b in PARITY_CASES:
        refs = example_references(n, PARITY_REFS, s, seed=seed + 10 * n)
        frames = example_frames(b, imgsz, seed=seed + 100 * b)
        with torch.no_grad():
            protos = model.encode_references(refs).prototypes
            out = model.detect(frames, protos)
        boxes_pt, scores_pt = out["boxes"], out["pred_scores"].sigmoid()
        protos_ort = support.run(list(PROTOTYPES), {REFERENCES: refs.numpy()})
        proto_diff = max(
            proto_diff, *(float(np.abs(a - p.numpy()).max()) for a, p in zip(protos_ort, protos, strict=True))
        )
        feeds = {IMAGES: frames.numpy(), **dict(zip(PROTOTYPES, protos_ort, strict=True))}
        boxes_ort, scores_ort = (torch.from_numpy(x) for x in detector.run([BOXES, SCORES], feeds))
        det_pt, det_ort = (
            postprocess(b, s.round(decimals=PARITY_DECIMALS), None, PARITY_CONF, PARITY_IOU, s[0].numel())
            for b, s in ((boxes_pt, scores_pt), (boxes_ort, scores_ort))
        )
        cases.append(
            {
                "targets": n,
                "batch": b,
                "refs": PARITY_REFS,
                "score_max_abs_diff": float((scores_ort - scores_pt).abs().max()),
                "box_max_abs_diff": float((boxes_ort - boxes_pt).abs().max()),
                "boxes_after_nms": [len(d) for d in det_pt],
                "same_box_count": all(len(p) == len(o) for p, o in zip(det_pt, det_ort, strict=True)),
                "box_min_iou": min(
                    match_boxes(p.boxes, o.boxes, p.labels, o.labels)
                    for p, o in zip(det_pt, det_ort, strict=True)
                ),
            }
        )
    passed = all(
        c["score_max_abs_diff"] < SCORE_TOLERANCE and c["same_box_count"] and c["box_min_iou"] > IOU_TOLERANCE
        for c in cases
    )
    return {
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider vs torch {torch.__version__} CPU, fp32",
        "references": "fresh random references (not the export's example inputs), K=3",
        "nms": {"conf": PARITY_CONF, "iou": PARITY_IOU, "max_det": "all", "score_decimals": PARITY_DECIMALS},
        "tolerance": {"score_max_abs_diff": SCORE_TOLERANCE, "box_min_iou": IOU_TOLERANCE},
        "prototype_max_abs_diff": proto_diff,
        "cases": cases,
        "passed": passed,
    }
