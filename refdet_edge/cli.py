"""The ``refdet`` command: one Click group, one subcommand per job of the pipeline."""

from __future__ import annotations

import click

from refdet_edge import __version__


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="Example:\n\n\b\n  refdet data synth --out demo_data\n  refdet train --data demo_data --stage 3 --use-triplet",
)
@click.version_option(__version__, prog_name="refdet")
def cli() -> None:
    """Train, evaluate, export and benchmark a reference-based drone object detector."""
