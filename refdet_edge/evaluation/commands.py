"""``refdet eval`` (score a model or a prediction file on a dataset split) and ``refdet predict`` (find one
target in a video, or every target of a dataset). Only the command line lives here: the work is done by
:mod:`refdet_edge.evaluation.eval_run` and :mod:`refdet_edge.evaluation.predict_run`, imported inside the
commands so that ``--help`` stays fast."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from refdet_edge.evaluation.settings import DEFAULT_SCORE_THRESHOLD, MODES, RAW_CONF, TemporalConfig

SPLITS = ("train", "val", "test", "seen", "all")
BACKENDS = ("torch", "onnx", "trt")  # those of refdet_edge.runtime (not imported here: it imports torch)
DELAY = TemporalConfig().delay

TEMPORAL_HELP = (
    f"online: each frame's box is final {DELAY} frames later (bounded latency, for a live system); offline: "
    "the whole video is known before any box is chosen (for scoring and a prediction file), and each "
    "video's threshold rises from --conf toward the split of its own scores; off: each frame's best "
    "detection over --conf."
)

EVAL_EPILOG = """Examples (on `refdet data synth --out demo_data` and a model trained on it):

\b
  refdet eval --weights runs/demo/stage3/best.pt --data demo_data --split val --out runs/eval
  refdet eval --predictions runs/eval/raw_predictions.json --data demo_data --split val \\
      --temporal online --save-predictions runs/eval/online.json --out runs/eval_online
  refdet eval --predictions runs/predict_val/predictions.json --data demo_data --split val --out runs/eval_file
"""

PREDICT_EPILOG = """Examples (on `refdet data synth --out demo_data` and a model trained on it):

\b
  refdet predict --weights runs/demo/stage3/best.pt --refs demo_data/samples/white_cross_0/object_images \\
      --video demo_data/samples/white_cross_0/frames --out runs/predict --no-save-video
  refdet predict --weights runs/demo/stage3/best.pt --refs demo_data/samples/lime_ring_1/object_images/img_1.jpg \\
      --refs demo_data/samples/lime_ring_1/object_images/img_2.jpg --video demo_data/samples/lime_ring_1/frames \\
      --temporal offline --out runs/predict_lime_ring
  refdet predict --weights runs/demo/stage3/best.pt --data demo_data --split val --out runs/predict_val \\
      --no-save-video
  refdet predict --backend onnx --model export/ --data demo_data --split val --out runs/predict_val_onnx
"""


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


@click.command("eval", epilog=EVAL_EPILOG)
@click.option(
    "--weights", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint of this project to run."
)
@click.option(
    "--predictions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead of --weights: a prediction file listing exactly the split's videos: a final output, or a "
    'detector\'s raw output with a "score" per box (several boxes per frame).',
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
    "--score-threshold",
    "conf",
    default=None,
    type=click.FloatRange(0, 1),
    help="Operating point: the score a box needs for ST-IoU, precision, recall and false positives, and to "
    "start a track.  [default: the one training chose on its validation split (val/conf in --weights), "
    f"else {DEFAULT_SCORE_THRESHOLD}]",
)
@click.option(
    "--raw-conf",
    default=RAW_CONF,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Raw cut (with --weights): the lowest detection score kept for mAP and for the tracks.",
)
@click.option(
    "--temporal",
    type=click.Choice(MODES),
    default=None,
    help=f"The final output (written, and whose rates are shown); every mode is scored. {TEMPORAL_HELP}  "
    "[default: offline with --weights, off with --predictions]",
)
@click.option(
    "--save-predictions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the final output goes (prediction file, a score per box).  [default: OUT/predictions.json]",
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
    raw_conf: float,
    temporal: str | None,
    save_predictions: Path | None,
    batch_size: int,
    device: str | None,
    fps: float,
) -> None:
    """Score a model (--weights) or a prediction file (--predictions) on a dataset split.

    \b
    Prints the split's kind (unseen objects, later frames or all frames) and a table, overall and per
    video: ST-IoU raw (each frame's best detection), online and offline (temporal post-processing) side by
    side, mAP@0.5 and mAP@0.5:0.95 of the raw detections, and for the final output precision, recall, F1,
    false positives per background frame and per minute, and recall of small objects. Writes to --out:
      metrics.json          {"data", "split", "split_kind", "weights" | "predictions", "scored",
                             "raw_detections", "settings", "final", "raw", "online", "offline"}: every
                             metric, per video and overall, of each stage; "final" names the written one
      predictions.json      the final output (every video listed, a score per box)
      raw_predictions.json  with --weights: every raw detection with its score, to re-run the temporal
                            modes with --predictions, without the model
      pr_curve.png          precision-recall of the raw detections, its AP and the operating point
      st_iou_per_video.png  ST-IoU of each video in each stage
      timelines/<video>.png ground-truth presence against the final output, in the video's frame numbers
    """
    from refdet_edge.evaluation.eval_run import EvalSettings, eval_file, eval_model
    from refdet_edge.evaluation.report import PREDICTIONS_FILE, TIMELINES_DIR, format_table

    if (weights is None) == (predictions is None):
        raise click.UsageError("give either --weights (run a model) or --predictions (score a file)")
    mode = temporal or ("offline" if weights is not None else "off")
    conf = _operating_point(conf, weights)
    settings = EvalSettings(conf=conf, raw_conf=raw_conf, temporal=mode, fps=fps, batch_size=batch_size)
    target = save_predictions or out / PREDICTIONS_FILE
    try:
        if weights is not None:
            result = eval_model(weights, data, split, out, settings, target, device)
        else:
            result = eval_file(predictions, data, split, out, settings, target)
    except (ValueError, OSError) as err:
        raise _fail(err) from None
    click.echo(f"split {split}: {result.split_kind}")
    click.echo(format_table(result.stages, result.final, result.scored))
    timelines = [p for p in result.paths if p.parent.name == TIMELINES_DIR]
    named = ", ".join(str(p) if p.parent != out else p.name for p in result.paths if p not in timelines)
    click.echo(f"wrote to {out}: {named}, {len(timelines)} timeline(s) in {TIMELINES_DIR}/")


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
    default=None,
    type=click.FloatRange(0, 1),
    help="Operating point: the score a detection needs to start a track (or, with --temporal off, to be "
    "reported); weaker ones, down to a fraction of it, can only continue a track.  [default: the one "
    f"training chose on its validation split (val/conf in --weights), else {DEFAULT_SCORE_THRESHOLD}]",
)
@click.option(
    "--temporal",
    type=click.Choice(MODES),
    default="online",
    show_default=True,
    help=f"Temporal post-processing, one box per frame. {TEMPORAL_HELP}",
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
    temporal: str,
    batch_size: int,
    device: str | None,
    fps: float,
    save_video: bool,
) -> None:
    """Find the target of the reference photos in a video, frame by frame.

    \b
    Decodes the video lazily and writes to --out:
      predictions.json   boxes per frame with their score (key "detections"; every video listed)
      <video_id>.csv     frame, x1, y1, x2, y2, score (original pixels, one row per frame with a box)
      <video_id>.mp4     the video with the boxes drawn (OpenCV mp4v)
    A video without any box says why (the highest score seen against --conf).
    """
    from refdet_edge import runtime
    from refdet_edge.evaluation.metrics import save_predictions
    from refdet_edge.evaluation.predict_run import PredictOptions
    from refdet_edge.evaluation.report import PREDICTIONS_FILE
    from refdet_edge.evaluation.settings import MAX_DET

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
    conf = _operating_point(conf, weights)
    options = PredictOptions(temporal, TemporalConfig(score_threshold=conf), batch_size, fps, save_video)
    raw_conf = min(RAW_CONF, options.temporal.keep_threshold)

    def load_runtime():
        return runtime.load(weights or model_dir, backend, device=device, conf=raw_conf, max_det=MAX_DET)

    try:
        if video is not None:
            results = _predict_file(load_runtime, video, video_id, refs, out, options)
        else:
            results = _predict_dataset(load_runtime(), data, split, out, options)
        path = save_predictions(out / PREDICTIONS_FILE, {vid: r.boxes for vid, r in results.items()})
    except (ValueError, OSError) as err:
        raise _fail(err) from None
    _report(results, conf, raw_conf)
    found = sum(len(r.boxes) for r in results.values())
    extras = ".csv, .mp4" if save_video else ".csv"
    click.echo(f"{len(results)} video(s), {found} frame(s) with the target: {path} (+ {extras} per video)")


def _operating_point(conf: float | None, weights: Path | None) -> float:
    """``--conf`` when given, else the operating point stored in the checkpoint (said on screen), else the
    default threshold."""
    if conf is not None:
        return conf
    if weights is not None:
        from refdet_edge.evaluation.operating_point import checkpoint_conf

        try:
            stored = checkpoint_conf(weights)
        except (ValueError, OSError) as err:
            raise _fail(err) from None
        if stored is not None:
            click.echo(f"operating point {stored:g}: chosen on the validation split by training ({weights})")
            return stored
    return DEFAULT_SCORE_THRESHOLD


def _report(results: dict, conf: float, raw_conf: float) -> None:
    """One line per video with unreadable frames, and per video where nothing was found, saying why."""
    from refdet_edge.evaluation.predict_run import nothing_found

    for video_id, result in results.items():
        if result.unreadable:
            click.echo(
                f"{video_id}: {len(result.unreadable)} unreadable frame(s) skipped (first: {result.unreadable[0]})",
                err=True,
            )
        if not result.boxes:
            click.echo(f"{video_id}: {nothing_found(result, conf, raw_conf)}", err=True)


def _predict_file(load_runtime, video: Path, video_id: str | None, refs, out: Path, options) -> dict:
    """Check the video and the references before ``load_runtime()`` loads the model, so bad input fails fast."""
    from refdet_edge.data.annotations import validate_video_id
    from refdet_edge.data.dataset import read_reference
    from refdet_edge.evaluation.predict_run import predict_video
    from refdet_edge.evaluation.video_io import open_video, video_id_of

    video_id = validate_video_id(video_id, "--video-id") if video_id else video_id_of(video)
    source = open_video(video, video_id)
    references = [read_reference(path, video_id) for path in _reference_files(refs)]
    rt = load_runtime()
    rt.set_references(references)
    return {
        video_id: predict_video(rt, video_id, source, source.iter_frames(), source.num_frames, out, options)
    }


def _predict_dataset(rt, data: Path, split: str, out: Path, options) -> dict:
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.data.video import open_frames
    from refdet_edge.evaluation.predict_run import predict_video

    dataset = DroneDataset(data, None if split == "all" else split, cache_size=rt.imgsz)
    results = {}
    for video in dataset.videos:
        rt.set_references(dataset.load_references(video))
        source = open_frames(video.sample_dir, video.video_id)
        keep = set(video.frames)
        frames = ((i, frame) for i, frame in source.iter_frames() if i in keep)
        results[video.video_id] = predict_video(
            rt, video.video_id, source, frames, len(keep), out, options, keep=keep.__contains__
        )
    return results
