"""One export of a model into a folder: both ONNX graphs, their parity figures and ``metadata.json``."""

from __future__ import annotations

from pathlib import Path

from refdet_edge.export.metadata import build_metadata, write_metadata
from refdet_edge.export.onnx_export import EXPORTER, export_onnx
from refdet_edge.export.parity import ParityInputs, check_parity
from refdet_edge.export.profiles import DEFAULT_BATCH_MAX, DEFAULT_REFS_MAX, DEFAULT_TARGETS_MAX, profiles_for
from refdet_edge.export.tensorrt import CALIBRATION_CACHE, DETECTOR_ENGINE, SUPPORT_ENGINE
from refdet_edge.models import RefDetModel


def export_model(
    model: RefDetModel,
    out_dir: str | Path,
    imgsz: int | None = None,
    opset: int = 17,
    simplify: bool = False,
    profiles: dict[str, list[int]] | None = None,
    source: str = "model in memory",
    parity_inputs: ParityInputs | None = None,
) -> dict:
    """Export ``model`` into ``out_dir`` (engines of an earlier export there are removed: they no longer
    match), check parity on ``parity_inputs`` (default: synthetic aerial scenes), write ``metadata.json``
    and return it. ``metadata["parity"]["passed"]`` says whether ONNX Runtime matched PyTorch within the
    tolerances; ``["failures"]`` names each figure that did not."""
    out_dir = Path(out_dir)
    imgsz = imgsz or model.config.input_size
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (SUPPORT_ENGINE, DETECTOR_ENGINE, CALIBRATION_CACHE):
        (out_dir / name).unlink(missing_ok=True)
    files = export_onnx(model, out_dir, imgsz, opset, simplify)
    profiles = profiles or profiles_for(DEFAULT_BATCH_MAX, DEFAULT_TARGETS_MAX, DEFAULT_REFS_MAX)
    metadata = build_metadata(model, out_dir, files, imgsz, opset, EXPORTER, profiles)
    metadata["source"] = source
    metadata["simplified"] = simplify
    metadata["parity"] = check_parity(model, out_dir, imgsz, parity_inputs)
    write_metadata(out_dir, metadata)
    return metadata
