"""What ``refdet eval`` does: the raw detections of a model (or of a prediction file) on a dataset split,
scored as the stages raw, online and offline side by side; the final stage's boxes written as a prediction
file, a model's raw detections written with their scores so that the temporal modes can be re-run without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from refdet_edge.data.annotations import DatasetError, where
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.splits import ALL_FRAMES, SPLITS_FILE, split_kind
from refdet_edge.evaluation.metrics import load_predictions, save_predictions
from refdet_edge.evaluation.report import RAW_PREDICTIONS_FILE, check_frames, write_report
from refdet_edge.evaluation.settings import MAX_DET
from refdet_edge.evaluation.validator import Validator, ValidatorConfig

ALL = "all"


@dataclass(frozen=True)
class EvalSettings:
    """The options of ``refdet eval`` that shape the figures."""

    conf: float  # the operating point
    raw_conf: float  # the raw cut of a model's detections
    temporal: str  # the mode of the final output: online, offline or off (final stage: raw)
    fps: float
    batch_size: int = 8

    @property
    def final(self) -> str:
        return "raw" if self.temporal == "off" else self.temporal

    def validator(self) -> ValidatorConfig:
        return ValidatorConfig(
            batch_size=self.batch_size,
            raw_conf=self.raw_conf,
            max_det=MAX_DET,
            score_threshold=self.conf,
            fps=self.fps,
        )


@dataclass
class EvalResult:
    """Metrics per stage, the final stage's name, what the split measures, whether the boxes had scores,
    and the files written."""

    stages: dict[str, dict]
    final: str
    split_kind: str
    scored: bool
    paths: list[Path]


def _dataset(data: Path, split: str, **options: object) -> DroneDataset:
    """The split's videos; a split that holds none is an error naming the splits file."""
    dataset = DroneDataset(data, None if split == ALL else split, **options)
    if not dataset.videos:
        raise DatasetError(f"{where(data / SPLITS_FILE, None, split)}: the split holds no video")
    return dataset


def _kind(data: Path, split: str) -> str:
    return ALL_FRAMES if split == ALL else split_kind(data, split)


def _finish(
    validator: Validator,
    raw: dict[str, dict[int, list]],
    settings: EvalSettings,
    header: dict,
    out: Path,
    predictions_path: Path,
    scored: bool,
) -> EvalResult:
    """Score ``raw`` in every stage, write the final boxes and the report."""
    dataset = validator.dataset
    stages = validator.score(raw)
    mode = "off" if settings.final == "raw" else settings.final
    final = {v.video_id: validator.final_boxes(v, raw[v.video_id], mode) for v in dataset.videos}
    header = {
        **header,
        "scored": scored,
        "raw_detections": sum(len(d) for video in raw.values() for d in video.values()),
        "settings": {
            **header.get("settings", {}),
            "score_threshold": settings.conf,
            "fps": settings.fps,
            "temporal": {
                **dataclasses.asdict(validator.config.tracking),
                "online_delay_frames": validator.config.tracking.delay,
                "offline_threshold_per_video": validator.offline_thresholds(raw),
            },
        },
    }
    paths = write_report(out, header, stages, settings.final, dataset, final)
    paths.append(save_predictions(predictions_path, final))
    return EvalResult(stages, settings.final, header["split_kind"], scored, paths)


def eval_model(
    weights: Path,
    data: Path,
    split: str,
    out: Path,
    settings: EvalSettings,
    predictions_path: Path,
    device: str | None = None,
) -> EvalResult:
    """Run the checkpoint over the split (with a progress bar), then :func:`_finish`; the raw detections go
    to ``out/raw_predictions.json`` with their scores."""
    from tqdm import tqdm

    from refdet_edge import runtime

    model = runtime.load(weights, "torch", device=device).model
    dataset = _dataset(data, split, cache_size=model.config.input_size)
    validator = Validator(dataset, settings.validator())
    with tqdm(total=dataset.num_frames, unit="frame", desc="eval", dynamic_ncols=True) as bar:
        _, raw = validator(model, progress=bar.update)
    raw_path = save_predictions(out / RAW_PREDICTIONS_FILE, raw, every_box=True)
    header = {
        "data": str(data),
        "split": split,
        "split_kind": _kind(data, split),
        "weights": str(weights),
        "settings": {"raw_conf": settings.raw_conf, "max_det": MAX_DET, "imgsz": model.config.input_size},
    }
    result = _finish(validator, raw, settings, header, out, predictions_path, scored=True)
    result.paths.append(raw_path)
    return result


def eval_file(
    predictions: Path,
    data: Path,
    split: str,
    out: Path,
    settings: EvalSettings,
    predictions_path: Path,
) -> EvalResult:
    """Read a prediction file (a final output, or a detector's raw output with a score per box), then
    :func:`_finish`: its boxes as they are are the ``raw`` stage."""
    dataset = _dataset(data, split, check_references=False)
    loaded = load_predictions(predictions, [v.video_id for v in dataset.videos])
    check_frames(dataset, loaded.boxes, predictions)
    header = {
        "data": str(data),
        "split": split,
        "split_kind": _kind(data, split),
        "predictions": str(predictions),
    }
    return _finish(
        Validator(dataset, settings.validator()), loaded.boxes, settings, header, out, predictions_path,
        scored=loaded.scored,
    )  # fmt: skip
