"""``refdet eval`` (score a model or a prediction file on a dataset split) and ``refdet predict`` (find one
target in a video, or every target of a dataset, and write prediction file, CSV and annotated video)."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import click

from refdet_edge.evaluation.metrics import DEFAULT_SCORE_THRESHOLD
from refdet_edge.runtime import BACKENDS

SPLITS = ("train", "val", "test", "all")
MAX_DET = 10

EVAL_EPILOG = """Examples:

\b
  refdet eval --weights runs/s3/best.pt --data demo_data --split val --out runs/eval
  refdet eval --weights best.pt --data sot_data --split test --no-temporal
  refdet eval --predictions runs/predict/predictions.json --data demo_data --split all
"""

PREDICT_EPILOG = """Examples:

\b
  refdet predict --weights best.pt --refs img_1.jpg --refs img_2.jpg --refs img_3.jpg \\
      --video flight.mp4 --out runs/predict
  refdet predict --weights best.pt --refs demo_data/samples/Backpack_0/object_images \\
      --video demo_data/samples/Backpack_0/frames --out runs/predict --no-save-video
  refdet predict --backend onnx --model export/ --data demo_data --split val --out runs/predict_val
"""


def _split(name: str) -> str | None:
    return None if name == "all" else name


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


@click.command("eval", epilog=EVAL_EPILOG)
@click.option(
    "--weights", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint of this project to run."
)
@click.option(
    "--predictions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead of --weights: a prediction file (challenge schema) listing exactly the split's videos.",
)
@click.option(
    "--data", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset root folder."
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="val",
    show_default=True,
    help="Split to score (all: every frame).",
)
@click.option(
    "--out", default="runs/eval", show_default=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--conf",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Lowest raw detection score kept.",
)
@click.option(
    "--score-threshold",
    default=DEFAULT_SCORE_THRESHOLD,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Operating point: ST-IoU, precision, recall, false positives and the temporal tracker use it.",
)
@click.option(
    "--temporal/--no-temporal",
    default=True,
    show_default=True,
    help="Temporal post-processing of the output.",
)
@click.option(
    "--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Frames per forward pass."
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1.  [default: cuda if available]")
@click.option(
    "--fps",
    default=25.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Frame rate for FP/min.",
)
def eval_command(
    weights: Path | None,
    predictions: Path | None,
    data: Path,
    split: str,
    out: Path,
    conf: float,
    score_threshold: float,
    temporal: bool,
    batch_size: int,
    device: str | None,
    fps: float,
) -> None:
    """Score a model (--weights) or a prediction file (--predictions) on a dataset split.

    \b
    Prints a table, overall and per video: ST-IoU of the raw detections and after temporal post-processing,
    mAP@0.5 and mAP@0.5:0.95, precision, recall, F1, false positives per background frame and per minute,
    and recall of small objects. Writes to --out:
      metrics.json          {"data", "split", "weights" | "predictions", "settings", "final",
                             "raw", "temporal" (model) | "file" (prediction file)}: every metric, per video
                             and overall, of each stage; "final" names the stage of the written output
      predictions.json      the model's final boxes (challenge schema, every video listed; model only)
      pr_curve.png          precision-recall at IoU 0.5 with the operating point
      st_iou_per_video.png  ST-IoU of each video (final stage)
      timelines/<video>.png ground-truth presence against predicted presence along the split's frames
    """
    from refdet_edge.evaluation.report import TIMELINES_DIR, format_table

    if (weights is None) == (predictions is None):
        raise click.UsageError("give either --weights (run a model) or --predictions (score a file)")
    settings = {"score_threshold": score_threshold, "fps": fps}
    try:
        if weights is not None:
            stages, paths = _eval_model(
                weights, data, split, out, conf, settings, temporal, batch_size, device
            )
        else:
            stages, paths = _eval_file(predictions, data, split, out, settings)
    except (ValueError, OSError) as err:
        raise _fail(err) from None
    click.echo(format_table(stages))
    timelines = [p for p in paths if p.parent.name == TIMELINES_DIR]
    named = ", ".join(p.name for p in paths if p not in timelines)
    click.echo(f"wrote to {out}: {named}, {len(timelines)} timeline(s) in {TIMELINES_DIR}/")


def _eval_model(
    weights: Path,
    data: Path,
    split: str,
    out: Path,
    conf: float,
    settings: dict,
    temporal: bool,
    batch_size: int,
    device: str | None,
) -> tuple[dict, list[Path]]:
    from tqdm import tqdm

    from refdet_edge import runtime
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.evaluation.metrics import save_predictions
    from refdet_edge.evaluation.report import PREDICTIONS_FILE, write_report
    from refdet_edge.evaluation.temporal import TemporalConfig
    from refdet_edge.evaluation.validator import Validator, ValidatorConfig

    model = runtime.load(weights, "torch", device=device).model
    dataset = DroneDataset(data, _split(split), cache_size=model.config.imgsz)
    threshold = settings["score_threshold"]
    config = ValidatorConfig(
        batch_size=batch_size,
        conf=conf,
        max_det=MAX_DET,
        score_threshold=threshold,
        temporal=TemporalConfig(enabled=temporal, score_threshold=threshold),
        fps=settings["fps"],
    )
    with tqdm(total=dataset.num_frames, unit="frame", desc="eval", dynamic_ncols=True) as bar:
        validator = Validator(dataset, config)
        metrics, raw = validator(model, progress=bar.update)
    stages = {"raw": metrics["raw"], **({"temporal": metrics["temporal"]} if temporal else {})}
    final = {v.video_id: validator.final_boxes(v, raw[v.video_id]) for v in dataset.videos}
    predictions_path = save_predictions(out / PREDICTIONS_FILE, final)
    header = {
        "data": str(data),
        "split": split,
        "weights": str(weights),
        "settings": {
            **settings,
            "conf": conf,
            "max_det": MAX_DET,
            "imgsz": model.config.imgsz,
            "temporal": dataclasses.asdict(config.temporal) if temporal else None,
        },
    }
    return stages, [*write_report(out, header, stages, dataset, final), predictions_path]


def _eval_file(
    predictions: Path, data: Path, split: str, out: Path, settings: dict
) -> tuple[dict, list[Path]]:
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.evaluation.metrics import load_predictions
    from refdet_edge.evaluation.report import score_file, write_report

    dataset = DroneDataset(data, _split(split), check_references=False)
    boxes = load_predictions(predictions, [v.video_id for v in dataset.videos])
    stages = {"file": score_file(dataset, boxes, predictions, settings["fps"], settings["score_threshold"])}
    header = {"data": str(data), "split": split, "predictions": str(predictions), "settings": settings}
    return stages, write_report(out, header, stages, dataset, boxes)


def _reference_files(refs: Iterable[Path]) -> list[Path]:
    """``--refs`` values: image files, or folders whose images are all taken."""
    from refdet_edge.data.video import IMAGE_SUFFIXES

    files: list[Path] = []
    for ref in refs:
        if ref.is_dir():
            found = sorted(p for p in ref.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise click.ClickException(f"{ref}: field '--refs': folder holds no .jpg/.png image")
            files += found
        else:
            files.append(ref)
    return files


def save_csv(path: Path, boxes: Mapping[int, tuple[float, ...]]) -> Path:
    """One row per frame with a box: ``frame, x1, y1, x2, y2, score`` (original pixels, 3 decimals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "x1", "y1", "x2", "y2", "score"])
        for frame, box in sorted(boxes.items()):
            writer.writerow([frame, *(round(float(v), 3) for v in box[:5])])
    return path


def _predict_one(rt, video_id: str, source, frames, total: int, out: Path, options: dict):
    """Stream one video through the runtime; write ``<video_id>.csv`` and, if asked, ``<video_id>.mp4``."""
    from contextlib import nullcontext

    from tqdm import tqdm

    from refdet_edge.data.annotations import DatasetError, where
    from refdet_edge.evaluation.predict import predict_stream
    from refdet_edge.evaluation.video_io import AnnotatedVideoWriter, frame_rate

    writer = (
        AnnotatedVideoWriter(out / f"{video_id}.mp4", frame_rate(source, options["fps"]))
        if options["save_video"]
        else None
    )
    with tqdm(total=total, unit="frame", desc=video_id, dynamic_ncols=True) as bar, writer or nullcontext():
        result = predict_stream(
            rt,
            frames,
            options["temporal"],
            options["batch_size"],
            on_frame=None if writer is None else lambda _i, frame, box: writer.write(frame, box),
            progress=bar.update,
        )
    if result.frames == len(result.unreadable):
        raise DatasetError(f"{where(source.location, video_id, 'frames')}: no frame could be decoded")
    if result.unreadable:
        click.echo(
            f"{source.location}: {len(result.unreadable)} unreadable frame(s) skipped (first: {result.unreadable[0]})",
            err=True,
        )
    save_csv(out / f"{video_id}.csv", result.boxes)
    return result


@click.command("predict", epilog=PREDICT_EPILOG)
@click.option(
    "--weights", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint (--backend torch)."
)
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True, help="Runtime.")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="Export folder of `refdet export` (--backend onnx or trt).",
)
@click.option(
    "--refs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Reference photo of the target, repeatable; a folder adds all its images (with --video).",
)
@click.option(
    "--video",
    type=click.Path(path_type=Path),
    help="Video file (.mp4, ...) or folder of frames named by index.",
)
@click.option("--video-id", help="Id of --video in the outputs.  [default: the file or folder name]")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    help="Instead of --video: predict every video of this dataset, each with its own object_images/.",
)
@click.option(
    "--split", type=click.Choice(SPLITS), default="all", show_default=True, help="Frames of --data."
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option(
    "--conf",
    default=DEFAULT_SCORE_THRESHOLD,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Score a detection needs.",
)
@click.option(
    "--temporal/--no-temporal",
    default=True,
    show_default=True,
    help="One box per frame, Kalman smoothing, hysteresis; off: each frame's best detection.",
)
@click.option(
    "--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Frames per forward pass."
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1.  [default: cuda if available; cpu for onnx]")
@click.option(
    "--fps",
    default=25.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Frame rate of the annotated video of a frames folder (video files keep theirs).",
)
@click.option("--save-video/--no-save-video", default=True, show_default=True, help="Write <video_id>.mp4.")
def predict(
    weights: Path | None,
    backend: str,
    model_dir: Path | None,
    refs: tuple[Path, ...],
    video: Path | None,
    video_id: str | None,
    data: Path | None,
    split: str,
    out: Path,
    conf: float,
    temporal: bool,
    batch_size: int,
    device: str | None,
    fps: float,
    save_video: bool,
) -> None:
    """Find the target of the reference photos in a video, frame by frame.

    \b
    Decodes the video lazily and writes to --out:
      predictions.json   boxes per frame (challenge schema, key "detections"; every video listed)
      <video_id>.csv     frame, x1, y1, x2, y2, score (original pixels, one row per frame with a box)
      <video_id>.mp4     the video with the boxes drawn (OpenCV mp4v)
    """
    from refdet_edge import runtime
    from refdet_edge.evaluation.metrics import save_predictions
    from refdet_edge.evaluation.report import PREDICTIONS_FILE
    from refdet_edge.evaluation.temporal import TemporalConfig

    if backend == "torch" and (weights is None or model_dir is not None):
        raise click.UsageError("--backend torch runs a checkpoint: give --weights (not --model)")
    if backend != "torch" and (model_dir is None or weights is not None):
        raise click.UsageError(f"--backend {backend} runs an export folder: give --model (not --weights)")
    if (video is None) == (data is None):
        raise click.UsageError("give either --video (with --refs) or --data")
    if video is not None and not refs:
        raise click.UsageError("--video needs the target's reference photos: --refs IMG (repeatable)")
    if data is not None and (refs or video_id):
        raise click.UsageError("--data uses each video's own object_images/: drop --refs and --video-id")
    options = {
        "temporal": TemporalConfig(enabled=temporal, score_threshold=conf),
        "batch_size": batch_size,
        "fps": fps,
        "save_video": save_video,
    }

    def load_runtime():
        return runtime.load(weights or model_dir, backend, device=device, conf=conf, max_det=MAX_DET)

    try:
        if video is not None:
            boxes = _predict_file(load_runtime, video, video_id, refs, out, options)
        else:
            boxes = _predict_dataset(load_runtime(), data, split, out, options)
        path = save_predictions(out / PREDICTIONS_FILE, boxes)
    except (ValueError, OSError) as err:
        raise _fail(err) from None
    found = sum(len(b) for b in boxes.values())
    click.echo(f"{len(boxes)} video(s), {found} frame(s) with the target: {path} (+ .csv, .mp4 per video)")


def _predict_file(load_runtime, video: Path, video_id: str | None, refs, out: Path, options: dict) -> dict:
    """Check the video and the references before ``load_runtime()`` loads the model, so bad input fails fast."""
    from refdet_edge.data.annotations import validate_video_id
    from refdet_edge.data.dataset import read_reference
    from refdet_edge.evaluation.video_io import open_video, video_id_of

    video_id = validate_video_id(video_id, "--video-id") if video_id else video_id_of(video)
    source = open_video(video, video_id)
    references = [read_reference(path, video_id) for path in _reference_files(refs)]
    rt = load_runtime()
    rt.set_references(references)
    result = _predict_one(rt, video_id, source, source.iter_frames(), source.num_frames, out, options)
    return {video_id: result.boxes}


def _predict_dataset(rt, data: Path, split: str, out: Path, options: dict) -> dict:
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.data.video import open_frames

    dataset = DroneDataset(data, _split(split), cache_size=rt.imgsz)
    boxes = {}
    for video in dataset.videos:
        rt.set_references(dataset.load_references(video))
        source = open_frames(video.sample_dir, video.video_id)
        keep = set(video.frames)
        frames = ((i, frame) for i, frame in source.iter_frames() if i in keep)
        boxes[video.video_id] = _predict_one(
            rt, video.video_id, source, frames, len(keep), out, options
        ).boxes
    return boxes
