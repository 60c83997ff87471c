"""The ``refdet`` command: one Click group, one subcommand per job of the pipeline."""

from __future__ import annotations

import click

from refdet_edge import __version__
from refdet_edge.bench_commands import bench
from refdet_edge.data.commands import data
from refdet_edge.evaluation.commands import eval_command, predict
from refdet_edge.export.commands import export
from refdet_edge.training.commands import train


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="Example:\n\n\b\n  refdet data synth --out demo_data\n  refdet train --data demo_data --stage 3 --use-triplet",
)
@click.version_option(__version__, prog_name="refdet")
def cli() -> None:
    """Train, evaluate, export and benchmark a reference-based drone object detector."""


@cli.command(
    epilog="Example:\n\n\b\n  refdet info\n  refdet info --imgsz 960 --support-size 224 --json",
)
@click.option("--imgsz", default=640, show_default=True, help="Query frame size (multiple of 32).")
@click.option("--support-size", default=224, show_default=True, help="Reference image size (multiple of 14).")
@click.option("--refs", "num_refs", default=3, show_default=True, help="Reference images per target.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(imgsz: int, support_size: int, num_refs: int, as_json: bool) -> None:
    """Parameters per module and GFLOPs of the per-frame path and of the support encoder."""
    import json

    from refdet_edge.models import create_model
    from refdet_edge.models.summary import model_summary

    try:
        model = create_model(imgsz=imgsz, support_size=support_size)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    summary = model_summary(model, num_refs)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{'module':<12}{'params (M)':>12}")
    for name, count in summary["params"].items():
        click.echo(f"{name:<12}{count / 1e6:>12.3f}")
    click.echo(f"{'total':<12}{summary['total_params'] / 1e6:>12.3f}\n")
    click.echo(f"{'path':<36}{'params (M)':>12}{'GFLOPs':>10}")
    for label, key in (
        (f"per frame ({imgsz}x{imgsz}, 1 target)", "per_frame"),
        (f"support ({num_refs} refs at {support_size})", "support_path"),
    ):
        click.echo(f"{label:<36}{summary[key]['params'] / 1e6:>12.3f}{summary[key]['gflops']:>10.2f}")


cli.add_command(data)
cli.add_command(train)
cli.add_command(export)
cli.add_command(eval_command)
cli.add_command(predict)
cli.add_command(bench)


if __name__ == "__main__":
    cli()
