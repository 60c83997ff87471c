"""``refdet bench``: the side-by-side pairs of :mod:`refdet_edge.benchmark` as one table and a JSON file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from refdet_edge.benchmark import PAIR_KEYS
from refdet_edge.cli_options import verify_scale_option, verify_topk_option


@click.command(
    epilog=(
        "Example:\n\n\b\n"
        "  refdet bench --imgsz 640 --support-size 224 --json bench_cpu.json\n"
        "  refdet bench --device cuda --backend trt --json bench_gpu.json\n"
        "  refdet bench --imgsz 320 --repeats 5 --pair detection_vs_yolov8n --pair features_vs_plain\n"
        "  refdet bench --support-encoder siamese --support-size 112 --no-memory\n"
        "  refdet bench --imgsz 320 --support-encoder timm:mobilenetv2_100 --support-size 224 --verify-topk 8"
    )
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnx", "trt"]),
    default="torch",
    show_default=True,
    help="Runtime of the end-to-end pair (predict_vs_model). The ONNX pair always runs in ONNX Runtime.",
)
@click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda or cuda:N; auto: CUDA if available."
)
@click.option("--imgsz", default=640, show_default=True, help="Query frame size (multiple of 32).")
@click.option(
    "--support-size", default=224, show_default=True, help="Reference image size (the encoder's multiple)."
)
@click.option(
    "--support-encoder",
    help="Support encoder of the model: siamese, dinov2 or timm:NAME [default: the model's default].",
)
@verify_topk_option
@verify_scale_option
@click.option(
    "--repeats",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Timed rounds (one call per side, interleaved; training steps: at most 10).",
)
@click.option(
    "--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="Untimed calls per side."
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Intra-op threads of torch and ONNX Runtime alike (0: one per physical core). One thread gives the "
    "figures that repeat on a machine other processes share.",
)
@click.option(
    "--pair",
    "pairs",
    multiple=True,
    type=click.Choice(PAIR_KEYS),
    help="Measure only this pair (repeatable); default: every pair this machine can run.",
)
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory runs (one fresh process per side).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the ONNX exports and the test video, kept for later runs (default: a temporary one).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures as JSON, each pair under its key.",
)
def bench(
    backend: str,
    device: str,
    imgsz: int,
    support_size: int,
    support_encoder: str | None,
    verify_topk: int,
    verify_scale: int,
    repeats: int,
    warmup: int,
    threads: int,
    pairs: tuple[str, ...],
    no_memory: bool,
    workdir: Path | None,
    json_out: Path | None,
) -> None:
    """What the reference branch, feature extraction, triplet training and the predict pipeline cost.

    Each pair is measured side by side in one process at the same input size and thread count: rounds of
    one call per side, the side that goes first alternating; the ratio is the median of the rounds' ratios
    (candidate / baseline), shown with the spread of those ratios. Each side's peak memory is measured in a
    fresh process of its own. Ratios are checked against the targets of issue 7. Pairs this machine cannot
    run (no CUDA, no TensorRT, no onnxruntime) are listed as skipped. The support path of the model's
    encoder (parameters, GFLOPs, time for the references of one target) is reported first.
    """
    import torch

    from refdet_edge.benchmark.inference import support_path
    from refdet_edge.benchmark.report import environment, format_table, results_json, write_json
    from refdet_edge.benchmark.run import run_pairs
    from refdet_edge.benchmark.settings import BenchSettings, apply_threads

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            f"{device!r} asked for, but no CUDA GPU is visible to torch", param_hint="--device"
        )
    with tempfile.TemporaryDirectory(prefix="refdet_bench_") as tmp:
        try:
            settings = BenchSettings(
                workdir=str(workdir or tmp),
                imgsz=imgsz,
                support_size=support_size,
                device=device,
                backend=backend,
                repeats=repeats,
                warmup=warmup,
                threads=threads,
                support_encoder=support_encoder,
                verify_topk=verify_topk,
                verify_scale=verify_scale,
            )
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
        apply_threads(settings)
        env = environment(settings)
        click.echo(
            f"refdet bench: {env['gpu'] or env['cpu']} ({env['device']}, {env['threads']} threads for torch and "
            f"ONNX Runtime, load {'/'.join(map(str, env['load_average']))}), imgsz {imgsz}, support "
            f"{support_size}, backend {backend}, {settings.repeats} rounds",
            err=True,
        )
        support = support_path(settings)
        click.echo(
            f"support path ({support['encoder']}, {support['refs']} refs at {support['support_size']}): "
            f"{support['params'] / 1e6:.3f} M params, {support['gflops']:.2f} GFLOPs, "
            f"{support['median_ms']:.1f} ms"
        )
        results = run_pairs(
            settings,
            list(pairs) or None,
            memory=not no_memory,
            progress=lambda key: click.echo(f"  measuring {key} ...", err=True),
        )
    click.echo(format_table(results))
    if not no_memory:
        click.echo(f"memory: {env['memory']}")
    if json_out is not None:
        write_json(json_out, results_json(results, settings, support))
        click.echo(f"wrote {json_out}")
