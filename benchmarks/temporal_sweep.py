"""Temporal settings against raw ST-IoU on a split's RAW prediction file (choose them on val only).

For each combination of ``confirm_frames``, ``smooth_frames``, ``continuity``, ``switch_cost`` and
``weak_ends`` (the other settings at their defaults), prints overall raw, online and offline ST-IoU and the
largest drop of one video below raw: the figures behind the defaults of
:class:`refdet_edge.evaluation.settings.TemporalConfig`, which take, among the combinations where no video
of either detector drops more than 0.02, the best smaller gain of online and offline over raw, averaged over
the two detectors (``make baseline`` and ``make unseen`` write their validation detections):

    python benchmarks/temporal_sweep.py runs/unseen/baseline/raw_val.json --data real_data/unseen --conf 0.76
    python benchmarks/temporal_sweep.py runs/unseen/mobilenetv2/eval_stage2_val/raw_predictions.json \\
        --data real_data/unseen --conf 0.7
"""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from refdet_edge.data.dataset import DroneDataset
from refdet_edge.evaluation.metrics import load_predictions
from refdet_edge.evaluation.settings import TemporalConfig
from refdet_edge.evaluation.validator import STAGES, Validator, ValidatorConfig


@click.command()
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="val", show_default=True, help="The split the file holds.")
@click.option("--conf", required=True, type=float, help="Operating point (chosen on the same split).")
def main(predictions: Path, data: Path, split: str, conf: float) -> None:
    dataset = DroneDataset(data, split=split)
    raw = load_predictions(predictions, [v.video_id for v in dataset.videos]).boxes
    for confirm, smooth, continuity, switch, weak_ends in itertools.product(
        [2, 3], [0, 1], [0.0, 0.1, 0.25, 0.5], [0.25, 0.5, 1.0], [False, True]
    ):
        temporal = TemporalConfig(
            confirm_frames=confirm,
            smooth_frames=smooth,
            continuity=continuity,
            switch_cost=switch,
            weak_ends=weak_ends,
        )
        metrics = Validator(dataset, ValidatorConfig(score_threshold=conf, temporal=temporal)).score(raw)
        per_video = metrics["raw"]["per_video"]
        worst = min(
            metrics[stage]["per_video"][vid]["st_iou"] - per_video[vid]["st_iou"]
            for stage in STAGES[1:]
            for vid in per_video
        )
        overall = " ".join(f"{stage} {metrics[stage]['overall']['st_iou']:.3f}" for stage in STAGES)
        click.echo(
            f"confirm {confirm} smooth {smooth} continuity {continuity} switch {switch} "
            f"weak_ends {weak_ends}: {overall}, "
            f"worst video {worst:+.3f}"
        )


if __name__ == "__main__":
    main()
