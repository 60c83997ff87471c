"""``refdet train``: one stage of the staged training, configured by flags over an optional YAML file.

Nothing heavy is imported until the command runs, so that ``refdet --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from refdet_edge.training.config import NEGATIVE_STRATEGIES, ConfigError, TrainConfig, load_config

EPILOG = """Examples:

\b
  # the default encoder (timm MobileNetV2, 8 verified candidates per frame) from pretrained weights
  refdet train --data D --stage 1 --yolo-weights yolov8n.pt \\
      --support-weights mobilenetv2_100-imagenet.safetensors --out runs/s1
  # the cheapest encoder: the query backbone encodes the references too
  refdet train --data D --stage 1 --yolo-weights yolov8n.pt --support-encoder siamese --support-size 128
\b
  # three stages on the synthetic set of `refdet data synth --out demo_data`
  refdet train --data demo_data --stage 1 --epochs 3 --imgsz 320 --out runs/s1
  refdet train --data demo_data --stage 2 --epochs 2 --imgsz 320 \\
      --weights runs/s1/best.pt --out runs/s2
  refdet train --data demo_data --stage 3 --epochs 2 --imgsz 320 --use-triplet \\
      --weights runs/s2/best.pt --out runs/s3
\b
  # continue a run stopped by Ctrl-C or killed, exactly where its last.pt left it
  refdet train --resume runs/s3/last.pt
\b
  # two processes (GPUs, or CPU with gloo)
  torchrun --nproc_per_node 2 -m refdet_edge.cli train --data demo_data --stage 1 --out runs/ddp
"""


@click.command(epilog=EPILOG)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML file of options; flags override it.",
)
@click.option(
    "--data",
    help="Dataset folder as `refdet data synth` or `refdet data import-sot` write it.  "
    "[default: ./demo_data, generated on first use]",
)
@click.option("--stage", type=click.IntRange(1, 3), help="1 base, 2 meta, 3 fine-tune.  [default: 1]")
@click.option(
    "--use-triplet/--no-triplet", default=None, help="Mix triplet batches into training (stage 2+)."
)
@click.option("--triplet-ratio", type=float, help="Share of triplet items in mixed batches.  [default: 0.3]")
@click.option(
    "--negative-strategy", type=click.Choice(NEGATIVE_STRATEGIES), help="Triplet negatives.  [default: mixed]"
)
@click.option("--samples-per-class", type=int, help="Triplets per target per epoch.  [default: 100]")
@click.option("--triplet-weight", type=float, help="Weight of the triplet loss.  [default: 0.5]")
@click.option("--epochs", type=int, help="Epochs.  [default: the stage's: 100, 100, 50]")
@click.option("--batch-size", type=int, help="Episodes per step.  [default: 2]")
@click.option("--n-way", type=int, help="Targets per episode.  [default: 2]")
@click.option("--k-shot", type=int, help="Reference photos per target.  [default: 3]")
@click.option("--n-query", type=int, help="Query frames per target per episode.  [default: 4]")
@click.option(
    "--episodes-per-epoch", type=int, help="Episodes per epoch.  [default: every training frame about once]"
)
@click.option("--imgsz", type=int, help="Query frame size, a multiple of 32.  [default: 640]")
@click.option(
    "--crop", type=int, help="Train on CROP x CROP windows of the imgsz frames (targets keep their size)."
)
@click.option(
    "--support-size",
    type=int,
    help="Reference size: a multiple of 32 (siamese, CNNs) or 14 (dinov2).  [default: as --weights, else 224]",
)
@click.option("--lr", type=float, help="Base learning rate.  [default: the stage's: 1e-3, 5e-4, 1e-4]")
@click.option("--device", help="auto, cpu, cuda, cuda:1.  [default: auto]")
@click.option("--workers", type=int, help="DataLoader worker processes.  [default: 2]")
@click.option(
    "--yolo-weights", type=click.Path(dir_okay=False), help="ultralytics YOLOv8n .pt to start from."
)
@click.option(
    "--support-encoder",
    help="siamese (the query backbone, from --yolo-weights), dinov2 or timm:NAME; pretrained only with "
    "--support-weights (siamese: --yolo-weights).  [default: as --weights, else timm:mobilenetv2_100]",
)
@click.option(
    "--support-weights",
    help="The support encoder's state dict (.safetensors/.pth), or 'hub' to download it through timm.",
)
@click.option(
    "--support-kwargs",
    callback=lambda ctx, param, value: parse_kwargs(value),
    help="timm.create_model arguments of a timm:NAME encoder, KEY=VALUE[,KEY=VALUE] (e.g. pad_type=same).",
)
@click.option(
    "--dinov2-weights",
    type=click.Path(dir_okay=False),
    help="DINOv2 ViT-S/14 state dict (.pth/.safetensors): --support-encoder dinov2 --support-weights PATH.",
)
@click.option(
    "--verify-topk",
    type=click.IntRange(min=0),
    help="Re-score the head's best K candidates per frame with the support encoder's view of them "
    "(0: off).  [default: as --weights, else 8, or off with siamese]",
)
@click.option(
    "--verify-alpha",
    type=click.FloatRange(0, 1),
    help="The head's share of a verified score: cosine**(1-a) * head**a.  [default: 0]",
)
@click.option(
    "--verify-scale",
    type=click.IntRange(min=1),
    help="Verify on crops of frames at S x --imgsz (the backbone still sees --imgsz): sharper crops of "
    "small targets in large frames.  [default: as --weights, else 2 when verifying]",
)
@click.option(
    "--weights", type=click.Path(dir_okay=False), help="Checkpoint of a previous stage to start from."
)
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    help="last.pt of a stopped run to continue; its data, sizes, stage, schedule and folder come with it.",
)
@click.option("--out", help="Output folder.  [default: runs/train]")
@click.option(
    "--exist-ok",
    is_flag=True,
    default=None,
    help="Train into a folder holding a run (its best.pt stays unless beaten).",
)
@click.option(
    "--save-every", type=click.IntRange(1), help="Also write last.pt every N steps (Ctrl-C always writes it)."
)
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
def train(config_path: str | None, **flags) -> None:
    """Train one stage; writes last.pt, best.pt, results.csv, plots and the resolved config.yaml to --out."""
    from refdet_edge.data.annotations import DatasetError
    from refdet_edge.models import WeightsError
    from refdet_edge.training.trainer import Trainer, TrainingError

    try:
        config = load_config(config_path, **dinov2_alias(flags))
        trainer = Trainer(config)
        trainer.fit()
    except (ConfigError, DatasetError, WeightsError, TrainingError) as err:
        raise click.ClickException(str(err)) from None
    if not trainer.main:
        return
    if trainer.interrupted:
        click.echo(
            f"stopped at {trainer.position()}; last.pt written. Continue with:\n"
            f"  refdet train --resume {trainer.out / 'last.pt'}",
            err=True,
        )
        sys.exit(130)
    if trainer.history:
        click.echo(summary_table(trainer.history, trainer.cfg))
        if not trainer.best_written:
            click.echo(f"{trainer.out / 'best.pt'}: kept from the earlier run (no epoch of this run beat it)")


def parse_kwargs(value: str | None) -> dict | None:
    """``KEY=VALUE[,KEY=VALUE]`` -> a dict, each value read as YAML (numbers and booleans keep their type)."""
    if value is None:
        return None
    pairs = [p.strip() for p in value.split(",") if p.strip()]
    if any("=" not in p for p in pairs):
        raise click.BadParameter(
            f"expected KEY=VALUE[,KEY=VALUE], got {value!r}", param_hint="--support-kwargs"
        )
    return {k.strip(): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def dinov2_alias(flags: dict) -> dict:
    """``--dinov2-weights PATH`` as ``--support-encoder dinov2 --support-weights PATH``."""
    flags = dict(flags)
    path = flags.pop("dinov2_weights", None)
    if path is not None:
        if flags.get("support_encoder") not in (None, "dinov2") or flags.get("support_weights") is not None:
            raise ConfigError("--dinov2-weights: give it alone, or --support-encoder and --support-weights")
        flags.update(support_encoder="dinov2", support_weights=path)
    return flags


SUMMARY_ROWS = (
    ("mAP@0.5", "val/map50"),
    ("mAP@0.5:0.95", "val/map50_95"),
    ("precision", "val/precision"),
    ("recall", "val/recall"),
    ("FP per background frame", "val/fp_per_background_frame"),
    ("ST-IoU (raw)", "val/st_iou"),
    ("ST-IoU (online)", "val/st_iou_online"),
    ("ST-IoU (offline)", "val/st_iou_offline"),
    ("operating point (chosen)", "val/conf"),
    ("ST-IoU at it (raw)", "val/st_iou_at_conf"),
)


def summary_table(history: list[dict], config: TrainConfig) -> str:
    """Validation figures of the starting weights (epoch 0), the best epoch (best.pt) and the last one, with
    what the validation split measures (unseen objects or later frames of the training objects)."""
    from refdet_edge.data.splits import split_kind

    best = max(history, key=lambda row: row["fitness"])
    columns = [
        ("start (epoch 0)", history[0]),
        (f"best (epoch {best['epoch']})", best),
        (f"last (epoch {history[-1]['epoch']})", history[-1]),
    ]
    kind = split_kind(Path(config.data), "val")
    lines = [
        f"validation of {config.out} on the val split of {config.data} ({kind}):",
        f"{'':<26}" + "".join(f"{title:>18}" for title, _ in columns),
    ]
    for label, key in SUMMARY_ROWS:
        cells = "".join(
            f"{'-' if row.get(key) is None else format(row[key], '.4f'):>18}" for _, row in columns
        )
        lines.append(f"{label:<26}{cells}")
    return "\n".join(lines)
