"""What temporal post-processing could reach on raw detections, against what it reaches.

Post-processing sees a detector's boxes and scores, never the truth. Per video of each ``--set`` (a raw
prediction file, its split and its operating point), this prints ST-IoU as a Markdown table:

- ``raw``, ``online``, ``offline``: what ``refdet eval`` scores (the temporal settings' defaults);
- ``presence``: each frame's highest-scoring detection on exactly the frames that show the target, none on
  the others: the detector's boxes with presence known, what a filter that only decides *when* the target
  is there reaches at best (bridging a gap with interpolated boxes can add a little);
- ``candidate``: the detection with the highest IoU with the truth on each frame that shows it: presence
  and the choice among the frame's boxes known, the most that choosing among the detector's boxes gives.

``offline`` is at ``presence`` where the scores tell the target's frames from the others; what lies
between the two is frames where look-alikes score like the target, or the target like the background; what
lies above ``presence`` is boxes that are not the frame's best. Never used to choose a setting:

    python benchmarks/temporal_bound.py --data real_data/unseen \\
        --set runs/unseen/mobilenetv2/eval_stage2_test/raw_predictions.json test 0.7 \\
        --set runs/unseen/baseline/raw_test.json test 0.76
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from refdet_edge.data.annotations import Box
from refdet_edge.data.dataset import DroneDataset, VideoRecord
from refdet_edge.evaluation.metrics import load_predictions, paired_iou, st_iou
from refdet_edge.evaluation.validator import STAGES, ScoredBoxes, Validator, ValidatorConfig, positions


def _best_scored(truth: Box, boxes: ScoredBoxes) -> Box:
    return max(boxes, key=lambda box: box[4])[:4]


def _best_overlap(truth: Box, boxes: ScoredBoxes) -> Box:
    return boxes[int(paired_iou([truth] * len(boxes), [box[:4] for box in boxes]).argmax())][:4]


BOUNDS = {"presence": _best_scored, "candidate": _best_overlap}  # each frame's box that a bound chooses


def _bound(video: VideoRecord, raw: dict[int, ScoredBoxes], bound: str) -> float:
    """ST-IoU of one video's :data:`BOUNDS` prediction: the chosen box on each frame that shows the target
    and has a detection, nothing elsewhere."""
    choose = BOUNDS[bound]
    chosen = {frame: choose(truth, raw[frame]) for frame, truth in video.boxes.items() if raw.get(frame)}
    gt, pred = positions(video, video.boxes), positions(video, chosen)
    return st_iou(gt, pred, len(video.frames), 0.0, video.video_id)


def per_video(dataset: DroneDataset, raw: dict[str, dict[int, ScoredBoxes]], conf: float) -> dict[str, dict]:
    """``{video: {column: ST-IoU}}`` for the :data:`STAGES` at operating point ``conf`` and the
    :data:`BOUNDS`, every frame of the split scored."""
    validator = Validator(dataset, ValidatorConfig(score_threshold=conf))
    stages = {stage: validator.st_iou_per_video(raw, stage) for stage in STAGES}
    return {
        video.video_id: {
            **{stage: stages[stage][video.video_id] for stage in STAGES},
            **{bound: _bound(video, raw.get(video.video_id, {}), bound) for bound in BOUNDS},
        }
        for video in dataset.videos
    }


def table(rows: dict[str, dict]) -> list[str]:
    """Markdown lines: a row per video, then the overall mean of each column."""
    columns = [*STAGES, *BOUNDS]
    overall = {c: float(np.mean([row[c] for row in rows.values()])) for c in columns}
    lines = [f"| video | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for video, row in sorted(rows.items(), key=lambda item: item[0].lower()):
        lines.append(f"| {video} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    lines.append("| overall | " + " | ".join(f"{overall[c]:.3f}" for c in columns) + " |")
    return lines


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--set",
    "sets",
    required=True,
    multiple=True,
    type=(click.Path(exists=True, dir_okay=False, path_type=Path), str, float),
    help="PREDICTIONS SPLIT CONF: a raw prediction file, the split it holds and its operating point.",
)
def main(data: Path, sets: tuple[tuple[Path, str, float], ...]) -> None:
    for path, split, conf in sets:
        dataset = DroneDataset(data, split=split)
        raw = load_predictions(path, [v.video_id for v in dataset.videos]).boxes
        click.echo(f"\n{path} ({split}, operating point {conf})\n")
        click.echo("\n".join(table(per_video(dataset, raw, conf))))


if __name__ == "__main__":
    main()
