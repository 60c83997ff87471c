"""``refdet data``: make, import and check datasets in the layout of DESIGN.md."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from refdet_edge.data.annotations import DatasetError


@click.group()
def data() -> None:
    """Make, import and check datasets (reference photos + drone videos + annotations.json)."""


@data.command()
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output dataset folder."
)
@click.option(
    "--videos", default=8, show_default=True, type=click.IntRange(1, 100), help="Videos (one target each)."
)
@click.option("--frames", default=120, show_default=True, type=click.IntRange(20), help="Frames per video.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical files.")
@click.option(
    "--refs", default=3, show_default=True, type=click.IntRange(1, 20), help="Reference photos per target."
)
@click.option(
    "--workers", default=None, type=click.IntRange(1), help="Processes [default: one per CPU core]."
)
def synth(out: Path, videos: int, frames: int, seed: int, refs: int, workers: int | None) -> None:
    """Generate a synthetic drone-video dataset.

    \b
    A camera drifting over procedurally textured terrain; each video has one target (a coloured, patterned
    shape, 10-60 px in 1280x720 frames) visible in about a quarter of the frames, look-alike distractors
    everywhere, and reference photos taken from the ground at other scales, angles and lighting. Writes
    samples/, annotations/annotations.json and splits.json (each video split in time 70/15/15).

    \b
    Example:
      refdet data synth --out demo_data --videos 8 --frames 120 --seed 0
    """
    from refdet_edge.data.synth import generate_synthetic

    start = time.perf_counter()
    try:
        generate_synthetic(out, videos=videos, frames=frames, seed=seed, refs=refs, workers=workers)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {videos} videos x {frames} frames to {out} in {time.perf_counter() - start:.1f} s")


@data.command("import-sot")
@click.argument("sequences", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output dataset folder."
)
@click.option(
    "--refs", default=3, show_default=True, type=click.IntRange(1, 20), help="Reference crops per sequence."
)
@click.option(
    "--absent-ratio",
    default=0.7,
    show_default=True,
    type=click.FloatRange(0, 0.95),
    help="Share of object-absent frames in each converted video.",
)
@click.option(
    "--context", default=0.5, show_default=True, type=click.FloatRange(0, 3), help="Crop margin / box size."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the splicing.")
@click.option(
    "--max-frames", default=None, type=click.IntRange(10), help="Use only each sequence's first frames."
)
def import_sot_command(
    sequences: tuple[Path, ...],
    out: Path,
    refs: int,
    absent_ratio: float,
    context: float,
    seed: int,
    max_frames: int | None,
) -> None:
    """Convert single-object-tracking sequences (OTB, UAV123, DTB70) into a dataset.

    \b
    Each SEQUENCE folder holds img/*.jpg and groundtruth_rect.txt (x,y,w,h per line, 1-based; NaN or a zero
    size = absent). Reference crops come from frames that are then left out of the video; object-absent
    frames are spliced in from the other sequences (crops that miss their object) up to --absent-ratio.
    Writes splits.json (each video split in time 70/15/15).

    \b
    Example:
      refdet data import-sot ../shared/data/sot/boat1 ../shared/data/sot/person11 --out sot_data
    """
    from refdet_edge.data.sot import import_sot

    start = time.perf_counter()
    try:
        import_sot(
            list(sequences),
            out,
            refs=refs,
            absent_ratio=absent_ratio,
            context=context,
            seed=seed,
            max_frames=max_frames,
        )
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"imported {len(sequences)} sequences into {out} in {time.perf_counter() - start:.1f} s")


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None, help="Only this split.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Histogram PNG [default: ROOT/box_sizes.png, or ./box_sizes.png if ROOT is read-only].",
)
@click.option(
    "--cache-size", default=640, show_default=True, type=click.IntRange(32), help="Cached frame long side."
)
def check(root: Path, split: str | None, plot: Path | None, cache_size: int) -> None:
    """Validate a dataset and print per-video statistics.

    \b
    Reads annotations.json, every reference photo and every frame (building the resized frame cache), then
    prints per video: readable frames, annotated frames, background share, unreadable frames skipped, and box
    sizes (sqrt of area, original pixels); and writes a box-size histogram PNG.

    \b
    Example:
      refdet data check demo_data --plot demo_data/box_sizes.png
    """
    from refdet_edge.data.check import dataset_stats, format_stats, plot_box_sizes
    from refdet_edge.data.dataset import DroneDataset

    try:
        dataset = DroneDataset(root, split=split, cache_size=cache_size)
    except (DatasetError, OSError) as err:
        raise click.ClickException(str(err)) from None
    stats = dataset_stats(dataset)
    click.echo(format_stats(stats))
    if plot is None:
        plot = (root if os.access(root, os.W_OK) else Path.cwd()) / "box_sizes.png"
    click.echo(f"box-size histogram: {plot_box_sizes(stats, plot)}")
