"""The ``refdet`` command: one Click group, one subcommand per job of the pipeline.

Subcommands are imported when named (``refdet train`` imports the training commands only), and every
command module imports torch and the other heavy libraries inside its command: ``refdet --help`` and each
``--help`` stay fast.
"""

from __future__ import annotations

import importlib

import click

from refdet_edge import __version__
from refdet_edge.cli_options import verify_scale_option, verify_topk_option

# name -> "module:attribute" of the subcommands imported on first use, in the order of ``refdet --help``.
LAZY_COMMANDS = {
    "data": "refdet_edge.data.commands:data",
    "train": "refdet_edge.training.commands:train",
    "export": "refdet_edge.export.commands:export",
    "eval": "refdet_edge.evaluation.commands:eval_command",
    "predict": "refdet_edge.evaluation.commands:predict",
    "bench": "refdet_edge.bench_commands:bench",
}


class LazyGroup(click.Group):
    """A group whose commands are the ones defined here, then those of :data:`LAZY_COMMANDS`, imported
    on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *LAZY_COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute = LAZY_COMMANDS[cmd_name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="Example:\n\n\b\n  refdet data synth --out demo_data\n  refdet train --data demo_data --stage 3 --use-triplet",
)
@click.version_option(__version__, prog_name="refdet")
def cli() -> None:
    """Train, evaluate, export and benchmark a reference-based drone object detector."""


@cli.command(
    epilog="Example:\n\n\b\n  refdet info\n  refdet info --support-encoder timm:mobilenetv2_100 --json\n"
    "  refdet info --imgsz 960 --support-encoder dinov2 --support-size 224\n"
    "  refdet info --support-encoder timm:mobilenetv2_100 --verify-topk 8   # with appearance verification",
)
@click.option("--imgsz", default=640, show_default=True, help="Query frame size (multiple of 32).")
@click.option(
    "--support-encoder",
    default="siamese",
    show_default=True,
    help="siamese (the query backbone), dinov2, or timm:NAME (any timm model).",
)
@click.option(
    "--support-size",
    default=224,
    show_default=True,
    help="Reference image size (multiple of 32 for siamese and CNNs, 14 for dinov2).",
)
@click.option("--refs", "num_refs", default=3, show_default=True, help="Reference images per target.")
@verify_topk_option
@verify_scale_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(
    imgsz: int,
    support_encoder: str,
    support_size: int,
    num_refs: int,
    verify_topk: int,
    verify_scale: int,
    as_json: bool,
) -> None:
    """Parameters per module and GFLOPs of the per-frame path, of the support encoder, and of plain YOLOv8n
    at the same frame size (the baseline the per-frame path is compared with)."""
    import json

    from refdet_edge.models import create_model
    from refdet_edge.models.summary import model_summary, yolov8n_summary

    try:
        model = create_model(
            imgsz=imgsz,
            support_size=support_size,
            support_encoder=support_encoder,
            verify_topk=verify_topk,
            verify_scale=verify_scale,
        )
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    summary = model_summary(model, num_refs)
    summary["plain_yolov8n"] = yolov8n_summary(imgsz)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{'module':<12}{'params (M)':>12}")
    for name, count in summary["params"].items():
        click.echo(f"{name:<12}{count / 1e6:>12.3f}")
    click.echo(f"{'total':<12}{summary['total_params'] / 1e6:>12.3f}\n")
    click.echo(f"{'path':<48}{'params (M)':>12}{'GFLOPs':>10}")
    for label, key in (
        (f"per frame ({model.config.input_size}px, 1 target, {verify_topk} verified)", "per_frame"),
        (f"support ({support_encoder}, {num_refs} refs at {support_size})", "support_path"),
        (f"plain YOLOv8n ({imgsz}x{imgsz})", "plain_yolov8n"),
    ):
        click.echo(f"{label:<48}{summary[key]['params'] / 1e6:>12.3f}{summary[key]['gflops']:>10.2f}")
    if summary["support_path"]["shared_params"]:
        shared = summary["support_path"]["shared_params"] / 1e6
        click.echo(
            f"(the {support_encoder} support path also runs the backbone's {shared:.3f} M shared parameters)"
        )


if __name__ == "__main__":
    cli()
