"""``metadata.json`` beside the exported graphs: what every runtime needs to feed and read them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from refdet_edge import __version__
from refdet_edge.models import RefDetModel
from refdet_edge.preprocess import PAD_VALUE

METADATA_FILE = "metadata.json"
METADATA_FORMAT = "refdet-edge-export/1"
REQUIRED = ("format", "imgsz", "support_size", "graphs", "profiles")


class ExportError(ValueError):
    """An export folder or option that cannot be used; the message names the file and the field."""


def describe_graph(path: Path) -> dict:
    """Every input and output of an ONNX graph: name, shape (a named dynamic axis as its name), dtype."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def tensors(values) -> list[dict]:
        return [
            {
                "name": v.name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                "dtype": tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
            }
            for v in values
        ]

    return {"file": path.name, "inputs": tensors(graph.input), "outputs": tensors(graph.output)}


def build_metadata(
    model: RefDetModel,
    out_dir: Path,
    files: dict[str, str],
    imgsz: int,
    opset: int,
    exporter: str,
    profiles: dict,
) -> dict:
    head = model.head
    return {
        "format": METADATA_FORMAT,
        "version": __version__,
        "model": model.config.to_dict(),
        "imgsz": imgsz,
        "support_size": model.config.support_size,
        "strides": list(head.strides),
        "num_anchors": sum((imgsz // model.config.verify_scale // s) ** 2 for s in head.strides),
        "prototype_tokens": model.num_prototype_tokens,
        "prototype_channels": list(model.backbone.channels),
        "normalisation": {
            "color": "RGB",
            "input_range": "[0, 1] (uint8 / 255)",
            "letterbox": {"square": True, "pad_value": PAD_VALUE, "centered": True},
            "support_encoder": model.config.support_encoder,
            "support_mean": model.support.mean.flatten().tolist(),
            "support_std": model.support.std.flatten().tolist(),
            "in_graph": "support_encoder.onnx applies the encoder's mean/std itself (siamese: none, as the "
            "detector); detector.onnx takes [0, 1] frames",
        },
        "outputs": {
            "boxes": "xyxy in model-input (letterboxed) pixels",
            "scores": "per-target probabilities (sigmoid applied in the graph); NMS runs outside the graph",
        },
        "opset": opset,
        "exporter": exporter,
        "profiles": profiles,
        "graphs": {key: describe_graph(out_dir / name) for key, name in files.items()},
    }


def write_metadata(out_dir: Path, metadata: dict) -> Path:
    """Write ``metadata.json`` atomically (a temporary file renamed over the old one)."""
    path = out_dir / METADATA_FILE
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{METADATA_FILE}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_metadata(model_dir: str | Path) -> dict:
    """``metadata.json`` of an export folder (or the file itself), checked for the fields runtimes use."""
    path = Path(model_dir)
    if path.is_dir():
        path = path / METADATA_FILE
    if not path.is_file():
        raise ExportError(f"{path}: no such file (export the model first with `refdet export`)")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise ExportError(f"{path}: expected a JSON object")
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise ExportError(f"{path}: field {missing[0]!r} missing")
    if metadata["format"] != METADATA_FORMAT:
        raise ExportError(f"{path}: field 'format' is {metadata['format']!r}, expected {METADATA_FORMAT!r}")
    for key in ("support_encoder", "detector"):
        if key not in metadata["graphs"]:
            raise ExportError(f"{path}: field 'graphs.{key}' missing")
    return metadata
