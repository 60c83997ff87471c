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
@click.option(
    "--frame-size",
    default="1280x720",
    show_default=True,
    callback=lambda ctx, param, value: _pair(param, value, "x", int),
    help="Frame WIDTHxHEIGHT in pixels.",
)
@click.option(
    "--target-size",
    default="14-50",
    show_default=True,
    callback=lambda ctx, param, value: _pair(param, value, "-", float),
    help="MIN-MAX of the target's long side in frame pixels (one size per video, log-uniform).",
)
@click.option(
    "--look-alikes",
    default="4-6",
    show_default=True,
    callback=lambda ctx, param, value: _pair(param, value, "-", int),
    help="MIN-MAX look-alike distractors per video.",
)
def synth(
    out: Path,
    videos: int,
    frames: int,
    seed: int,
    refs: int,
    workers: int | None,
    frame_size: tuple[int, int],
    target_size: tuple[float, float],
    look_alikes: tuple[int, int],
) -> None:
    """Generate a synthetic drone-video dataset.

    \b
    A camera drifting over procedurally textured terrain; each video has one target (a coloured, patterned
    shape, by default 10-60 px in 1280x720 frames) visible in about a quarter of the frames, look-alike
    distractors everywhere, and reference photos taken from the ground at other scales, angles and lighting.
    Writes samples/, annotations/annotations.json and splits.json (each video split in time 70/15/15).

    \b
    Examples:
      refdet data synth --out synth_data --videos 8 --frames 120 --seed 0
      # a small set like that of `make demo`: small frames, large targets, fewer look-alikes
      refdet data synth --out demo_data --videos 6 --frames 100 --frame-size 640x360 --target-size 24-80 \\
          --look-alikes 1-2
    """
    from refdet_edge.data.synth import generate_synthetic

    start = time.perf_counter()
    try:
        generate_synthetic(
            out,
            videos=videos,
            frames=frames,
            seed=seed,
            refs=refs,
            workers=workers,
            frame_size=frame_size,
            target_px=target_size,
            look_alikes=look_alikes,
        )
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    width, height = frame_size
    click.echo(
        f"wrote {videos} videos x {frames} frames of {width}x{height} to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


def _pair(param: click.Parameter, value: str, sep: str, kind: type) -> tuple:
    """``A<sep>B`` as two non-negative numbers of ``kind``; a bad value is a one-line usage error."""
    parts = value.lower().split(sep)
    try:
        pair = tuple(kind(p) for p in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2 or min(pair) < 0:
        raise click.BadParameter(f"expected two non-negative numbers as A{sep}B, got {value!r}", param=param)
    return pair


def _objects(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


OBJECTS_HELP = "Comma-separated video (sequence) names held out as whole videos in the {} split."


def _split_options(command):
    """The options that say how to split, shared by ``import-sot`` and ``split``."""
    for option in reversed(
        [
            click.option(
                "--split-by",
                type=click.Choice(["object", "time"]),
                default=None,
                help="object: --val-objects/--test-objects are whole videos, the other objects split in time "
                "into train and seen; time: every video split in time 70/15/15 into train/val/test "
                "[default: object when objects are named, else time].",
            ),
            click.option("--val-objects", default="", help=OBJECTS_HELP.format("val")),
            click.option("--test-objects", default="", help=OBJECTS_HELP.format("test")),
            click.option(
                "--seen-fraction",
                default=0.15,
                show_default=True,
                type=click.FloatRange(0, 1, max_open=True),
                help="Object split: share of each training object's last frames held out as 'seen'.",
            ),
        ]
    ):
        command = option(command)
    return command


@data.command("import-sot")
@click.argument("sequences", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output dataset folder."
)
@_split_options
@click.option(
    "--refs", default=3, show_default=True, type=click.IntRange(1, 20), help="Reference crops per sequence."
)
@click.option(
    "--gap",
    default=5,
    show_default=True,
    type=click.IntRange(0),
    help="No evaluated frame within this many (imported) frames of a reference frame.",
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
@click.option(
    "--thin-to",
    default=None,
    type=click.IntRange(10),
    help="Keep every k-th frame of each sequence, the smallest k that leaves at most this many.",
)
def import_sot_command(
    sequences: tuple[Path, ...],
    out: Path,
    split_by: str | None,
    val_objects: str,
    test_objects: str,
    seen_fraction: float,
    refs: int,
    gap: int,
    absent_ratio: float,
    context: float,
    seed: int,
    max_frames: int | None,
    thin_to: int | None,
) -> None:
    """Convert single-object-tracking sequences (OTB, UAV123, DTB70, UAVDT, LaSOT) into a dataset.

    \b
    Each SEQUENCE folder holds img/*.jpg and groundtruth_rect.txt (x,y,w,h per line, 1-based; NaN or a zero
    size = absent; or UAV123 segments SEQ_1.txt, SEQ_2.txt, ...). Reference crops come from training frames
    (of a val/test object: from its whole sequence), then left out of the video with --gap frames around
    them kept out of evaluation. Absent frames are whole frames of other sequences of the same split,
    letterboxed to the video's size, up to --absent-ratio. Writes splits.json and sources.json (where every
    frame came from).

    \b
    Examples:
      refdet data import-sot ../shared/data/sot/boat1 ../shared/data/sot/person11 --out sot_data
      refdet data import-sot ../shared/data/sot/*/ ../shared/data/sot_more/*/ --out unseen \\
          --val-objects group1_1,Biker --test-objects boat1,truck4 --thin-to 100
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
            thin_to=thin_to,
            split_by=split_by,
            val_objects=_objects(val_objects),
            test_objects=_objects(test_objects),
            seen_fraction=seen_fraction,
            gap=gap,
        )
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"imported {len(sequences)} sequences into {out} in {time.perf_counter() - start:.1f} s")


@data.command("split")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_split_options
def split_command(
    root: Path, split_by: str | None, val_objects: str, test_objects: str, seen_fraction: float
) -> None:
    """Write ROOT/splits.json: by object (whole held-out videos) or in time.

    \b
    A dataset imported from SOT sequences (it has sources.json) is split at import, because its spliced
    absent frames depend on the split: this command then refuses a split that would let training see a
    held-out frame or object, and says so.

    \b
    Example:
      refdet data split my_data --val-objects Backpack_3 --test-objects Person_1,Bike_0
    """
    from refdet_edge.data.annotations import load_annotations
    from refdet_edge.data.sources import find_leaks, load_sources
    from refdet_edge.data.splits import SPLITS_FILE, object_splits, save_splits, temporal_splits
    from refdet_edge.data.video import open_frames

    val, test = _objects(val_objects), _objects(test_objects)
    split_by = split_by or ("object" if val or test else "time")
    try:
        if split_by == "time" and (val or test):
            raise ValueError("--val-objects/--test-objects need --split-by object")
        videos = load_annotations(root / "annotations" / "annotations.json")
        counts = {vid: open_frames(root / "samples" / vid, vid).num_frames for vid in sorted(videos)}
        if split_by == "object":
            splits = object_splits(counts, val, test, seen_fraction)
        else:
            splits = temporal_splits(counts, (0.7, 0.15, 0.15))
        sources = load_sources(root)
        leaks = [] if sources is None else find_leaks(sources, splits, split_by)
        if leaks:
            raise ValueError(
                f"{root}: this split would leak ({leaks[0]}; {len(leaks)} problem(s) in all): the absent frames "
                "of an imported SOT dataset follow its import split, so re-import it with refdet data import-sot "
                f"--split-by {split_by} and the same objects"
            )
        path = save_splits(root / SPLITS_FILE, splits, split_by)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    sizes = ", ".join(f"{name} {len(ranges)}" for name, ranges in splits.items() if ranges)
    click.echo(f"wrote {path} (split by {split_by}; videos per split: {sizes})")


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--split", type=click.Choice(["train", "val", "test", "seen"]), default=None, help="Only this split."
)
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
    from refdet_edge.data.splits import split_kind

    try:
        dataset = DroneDataset(root, split=split, cache_size=cache_size)
        leaks = _leak_report(root)
    except (DatasetError, OSError) as err:
        raise click.ClickException(str(err)) from None
    stats = dataset_stats(dataset)
    click.echo(format_stats(stats))
    if split is not None:
        click.echo(f"split {split!r} measures: {split_kind(root, split)}")
    if leaks is not None:
        click.echo(leaks)
    if plot is None:
        plot = (root if os.access(root, os.W_OK) else Path.cwd()) / "box_sizes.png"
    click.echo(f"box-size histogram: {plot_box_sizes(stats, plot)}")


def _leak_report(root: Path) -> str | None:
    """What sources.json says about leaks of held-out frames into training, or None without the files."""
    from refdet_edge.data.sources import find_leaks, load_sources
    from refdet_edge.data.splits import SPLITS_FILE, read_splits

    sources = load_sources(root)
    if sources is None or not (root / SPLITS_FILE).is_file():
        return None
    leaks = find_leaks(sources, *read_splits(root / SPLITS_FILE))
    if not leaks:
        return "sources.json: no held-out frame or object is seen in training"
    return f"sources.json: {len(leaks)} leak(s) of held-out frames into training:" + "".join(
        f"\n  {leak}" for leak in leaks
    )
