"""Does verifying on sharper crops help? The check behind ``--verify-scale 2`` (run on val only).

The validation objects' frames are at most 640 px wide, so at ``--imgsz 640`` a scale of 2 has no sharper
pixels to crop from. This check runs the backbone at ``--imgsz 320`` instead: scale 1 crops from the 320 px
network input, scale 2 from the 640 px frame, as ``imgsz 640`` with scale 2 crops from the full 1280 px
frames of UAV123. The model is the untrained start of ``make unseen ENCODER=mobilenetv2`` (COCO YOLOv8n,
ImageNet MobileNetV2, 8 verified candidates, seed 0), scored on every ``--stride``-th frame at ``--conf``.

    python benchmarks/verify_scale_check.py --data real_data/unseen \\
        --yolo-weights ../shared/weights/yolov8n-coco.pt \\
        --support-weights ../shared/weights/mobilenetv2_100-imagenet.safetensors
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from refdet_edge.data.dataset import DroneDataset
from refdet_edge.evaluation.validator import STAGES, Validator, ValidatorConfig
from refdet_edge.models import ModelConfig, create_model

FIGURES = ("recall", "map50", "fp_per_background_frame")


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--yolo-weights", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--support-weights", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="val", show_default=True)
@click.option("--imgsz", default=320, show_default=True)
@click.option("--stride", default=3, show_default=True, help="Score every k-th frame.")
@click.option("--conf", default=0.5, show_default=True, help="Operating point of both scales.")
def main(
    data: Path, yolo_weights: str, support_weights: str, split: str, imgsz: int, stride: int, conf: float
) -> None:
    torch.set_num_threads(1)
    for scale in (1, 2):
        torch.manual_seed(0)
        config = ModelConfig(
            imgsz=imgsz,
            support_size=224,
            support_encoder="timm:mobilenetv2_100",
            verify_topk=8,
            verify_scale=scale,
        )
        model = create_model(config, yolo_weights, support_weights).eval()
        dataset = DroneDataset(data, split, cache_size=config.input_size)
        metrics, _ = Validator(dataset, ValidatorConfig(frame_stride=stride, score_threshold=conf))(model)
        raw = metrics["raw"]
        st_iou = " / ".join(f"{metrics[stage]['overall']['st_iou']:.3f}" for stage in STAGES)
        figures = ", ".join(f"{key} {raw['overall'][key]:.3f}" for key in FIGURES)
        videos = ", ".join(f"{vid} {v['st_iou']:.3f}" for vid, v in raw["per_video"].items())
        click.echo(
            f"verify_scale {scale}: ST-IoU raw / online / offline {st_iou}; {figures}; raw per video: {videos}"
        )


if __name__ == "__main__":
    main()
