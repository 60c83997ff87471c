"""``refdet export``: the two ONNX graphs, their metadata and parity figures, and TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import click

from refdet_edge.export.profiles import DEFAULT_BATCH_MAX, DEFAULT_REFS_MAX, DEFAULT_TARGETS_MAX, profiles_for


def _load_model(
    weights: Path | None, yolo_weights: Path | None, dinov2_weights: Path | None, imgsz, support_size
):
    from refdet_edge.models import ModelConfig, WeightsError, create_model, load_model

    try:
        if weights is not None:
            model = load_model(weights)
            if support_size is not None and support_size != model.config.support_size:
                raise click.ClickException(
                    f"{weights}: field 'config.support_size' is {model.config.support_size}; the support input "
                    f"size is fixed by the checkpoint's position embeddings, --support-size {support_size} cannot apply"
                )
            return model, str(weights)
        defaults = ModelConfig()
        encoder = "dinov2" if dinov2_weights is not None else defaults.support_encoder
        model = create_model(
            yolo_weights=yolo_weights,
            support_weights=dinov2_weights,
            imgsz=imgsz or defaults.imgsz,
            support_size=support_size or defaults.support_size,
            support_encoder=encoder,
        )
        weights_of = f" from {dinov2_weights}" if dinov2_weights is not None else ""
        return model, f"fresh model: yolo {yolo_weights}, {encoder} support encoder{weights_of}, rest random"
    except WeightsError as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _profiles(metadata: dict | None, batch_max, targets_max, refs_max) -> dict[str, list[int]]:
    """Profile ranges from the options, else from an earlier export's metadata, else the defaults."""
    old = (metadata or {}).get("profiles", {})
    return profiles_for(
        batch_max or old.get("batch", [0, 0, DEFAULT_BATCH_MAX])[2],
        targets_max or old.get("targets", [0, 0, DEFAULT_TARGETS_MAX])[2],
        refs_max or old.get("refs", [0, 0, DEFAULT_REFS_MAX])[2],
    )


def _echo_parity(parity: dict) -> None:
    click.echo(
        f"parity ({parity['runtime']}) on {parity['inputs']}: prototypes max |diff| "
        f"{parity['prototype_max_abs_diff']:.2e}"
    )
    for c in parity["cases"]:
        boxes = ", ".join(
            f"conf {t['conf']}: {t['reference_boxes']}/{t['export_boxes']} boxes, {t['unmatched']} unmatched"
            for t in c["thresholds"]
        )
        top = "/".join(f"{s:.3f}" for s in c["top_scores"])
        click.echo(
            f"  targets={c['targets']} batch={c['batch']}: score max |diff| {c['score_max_abs_diff']:.2e}, "
            f"top scores {top} (|diff| {c['top_score_max_abs_diff']:.2e}), {boxes}"
        )


def _parity_inputs(parity_data: Path | None):
    """The frames and references of ``--parity-data``, or None (synthetic scenes)."""
    from refdet_edge.export.metadata import ExportError
    from refdet_edge.export.parity import dataset_inputs

    if parity_data is None:
        return None
    try:
        return dataset_inputs(parity_data)
    except ExportError as err:
        raise click.ClickException(f"--parity-data: {err}") from None


def _parity_failed(out_dir: Path, metadata: dict, keep: bool) -> None:
    """Name the failed figures; keep the files with a warning (``--no-parity-fail``), else remove them and
    exit non-zero."""
    failures = "; ".join(metadata["parity"]["failures"])
    if keep:
        click.echo(
            f"warning: {out_dir / 'metadata.json'}: field 'parity' failed ({failures}); files kept "
            "(--no-parity-fail), and runtimes loading them warn",
            err=True,
        )
        return
    graphs = [out_dir / g["file"] for g in metadata["graphs"].values()]
    for path in (*graphs, out_dir / "metadata.json"):
        path.unlink(missing_ok=True)
    raise click.ClickException(
        f"{out_dir / 'metadata.json'}: field 'parity' failed ({failures}); removed "
        f"{', '.join(p.name for p in graphs)} and metadata.json (--no-parity-fail keeps them)"
    )


@click.command(
    "export",
    epilog=(
        "Example:\n\n\b\n"
        "  refdet export --weights runs/stage3/best.pt --out export/\n"
        "  refdet export --weights best.pt --out export/ --trt --int8 --calib-data data/val\n"
        "  refdet export --no-onnx --trt --out export/      # on the Jetson, from copied ONNX files"
    ),
)
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint of this project (refdet train).")
@click.option(
    "--yolo-weights",
    type=click.Path(path_type=Path),
    help="Instead of --weights: a fresh model from an ultralytics YOLOv8 .pt, the rest random (a quick try).",
)
@click.option(
    "--dinov2-weights", type=click.Path(path_type=Path), help="With --yolo-weights: DINOv2 state dict."
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the graphs, metadata.json and engines.",
)
@click.option(
    "--onnx/--no-onnx", default=True, show_default=True, help="Export the ONNX graphs (off: reuse --out's)."
)
@click.option("--trt", is_flag=True, help="Build TensorRT engines (needs TensorRT 10 and a CUDA GPU).")
@click.option("--fp16/--fp32", default=True, show_default=True, help="TensorRT precision.")
@click.option("--int8", is_flag=True, help="INT8 detector engine, calibrated on --calib-data frames.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Dataset root: samples/*/frames/*.jpg.")
@click.option(
    "--calib-frames", default=256, show_default=True, help="Calibration frames, spread over the videos."
)
@click.option(
    "--imgsz",
    type=int,
    help="Query frame size (the graph's input), a multiple of 32, of 32 x S for a checkpoint that verifies "
    "at --verify-scale S [default: the checkpoint's].",
)
@click.option(
    "--support-size",
    type=int,
    help="Reference size, a multiple of 32 (siamese) or 14 (dinov2) [default: the checkpoint's].",
)
@click.option("--refs-max", type=click.IntRange(1), help=f"Most references per target [{DEFAULT_REFS_MAX}].")
@click.option("--targets-max", type=click.IntRange(1), help=f"Most targets at once [{DEFAULT_TARGETS_MAX}].")
@click.option("--batch-max", type=click.IntRange(1), help=f"Largest frame batch [{DEFAULT_BATCH_MAX}].")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(14, 20), help="ONNX opset.")
@click.option("--simplify", is_flag=True, help="Simplify both graphs with onnxslim.")
@click.option(
    "--parity-data",
    type=click.Path(path_type=Path),
    help="Dataset root whose frames and reference photos the parity check runs on [default: synthetic scenes].",
)
@click.option(
    "--no-parity-fail",
    is_flag=True,
    help="When ONNX Runtime and PyTorch differ: keep the files and exit 0 with a warning (default: remove, exit 1).",
)
@click.option("--workspace", default=2.0, show_default=True, help="TensorRT builder workspace (GiB).")
def export(
    weights: Path | None,
    yolo_weights: Path | None,
    dinov2_weights: Path | None,
    out_dir: Path,
    onnx: bool,
    trt: bool,
    fp16: bool,
    int8: bool,
    calib_data: Path | None,
    calib_frames: int,
    imgsz: int | None,
    support_size: int | None,
    refs_max: int | None,
    targets_max: int | None,
    batch_max: int | None,
    opset: int,
    simplify: bool,
    parity_data: Path | None,
    no_parity_fail: bool,
    workspace: float,
) -> None:
    """Export support_encoder.onnx (references -> prototypes), detector.onnx (frames + prototypes -> boxes,
    per-target scores) and metadata.json, with a parity check of ONNX Runtime against PyTorch on real-looking
    frames (the boxes above the operating threshold and 0.05, the top scores per target, the largest score
    difference); optionally build TensorRT engines from them."""
    from refdet_edge.export.calibration import calibration_frames
    from refdet_edge.export.metadata import ExportError, read_metadata, write_metadata
    from refdet_edge.export.pipeline import export_model

    if int8 and not trt:
        raise click.UsageError("--int8 builds a TensorRT engine: add --trt")
    if int8 and calib_data is None:
        raise click.UsageError("--int8 needs --calib-data (a dataset root with samples/*/frames/*.jpg)")
    if not onnx and not trt:
        raise click.UsageError("--no-onnx without --trt: nothing to do")
    if onnx and (weights is None) == (yolo_weights is None):
        raise click.UsageError("give exactly one of --weights and --yolo-weights")
    if not onnx and any(v is not None for v in (weights, yolo_weights, imgsz, support_size, parity_data)):
        raise click.UsageError(
            "--weights, --yolo-weights, --imgsz, --support-size and --parity-data apply only when exporting ONNX"
        )
    if imgsz is not None and (imgsz < 32 or imgsz % 32):
        raise click.BadParameter(f"must be a positive multiple of 32, got {imgsz}", param_hint="--imgsz")
    if support_size is not None and support_size < 1:  # the multiple it must be is the encoder's
        raise click.BadParameter(f"must be positive, got {support_size}", param_hint="--support-size")
    try:
        calibration = calibration_frames(calib_data, calib_frames) if int8 else None
    except ExportError as err:
        raise click.ClickException(f"--calib-data: {err}") from None

    if onnx:
        inputs = _parity_inputs(parity_data)
        model, source = _load_model(weights, yolo_weights, dinov2_weights, imgsz, support_size)
        multiple = 32 * model.config.verify_scale
        if imgsz is not None and imgsz % multiple:
            raise click.BadParameter(
                f"{weights}: the model verifies at scale {model.config.verify_scale}, so its input must be a "
                f"multiple of {multiple}, got {imgsz}",
                param_hint="--imgsz",
            )
        profiles = _profiles(None, batch_max, targets_max, refs_max)
        try:
            metadata = export_model(model, out_dir, imgsz, opset, simplify, profiles, source, inputs)
        except ExportError as err:
            raise click.ClickException(f"{weights or yolo_weights}: {err}") from None
        graphs = metadata["graphs"]
        click.echo(
            f"wrote {out_dir / graphs['support_encoder']['file']}, {out_dir / graphs['detector']['file']}, "
            f"{out_dir / 'metadata.json'}"
        )
        _echo_parity(metadata["parity"])
        if not metadata["parity"]["passed"]:
            _parity_failed(out_dir, metadata, no_parity_fail)
    else:
        try:
            metadata = read_metadata(out_dir)
        except ExportError as err:
            raise click.ClickException(str(err)) from None
        profiles = _profiles(metadata, batch_max, targets_max, refs_max)

    if trt:
        from refdet_edge.export.tensorrt import build_engines

        precision = "int8" if int8 else "fp16" if fp16 else "fp32"
        try:
            metadata["engines"] = build_engines(
                out_dir, metadata, profiles, precision, calibration, workspace
            )
        except ExportError as err:
            kept = " (the ONNX files and metadata.json are written)" if onnx else ""
            raise click.ClickException(f"{err}{kept}") from None
        write_metadata(out_dir, metadata)
        engines = metadata["engines"]
        click.echo(
            f"built {out_dir / engines['support_encoder']['file']} ({engines['support_encoder']['precision']}) and "
            f"{out_dir / engines['detector']['file']} ({engines['detector']['precision']}) with TensorRT "
            f"{engines['tensorrt_version']} on {engines['device']}"
        )
