"""What ``refdet predict`` does with each video: stream it through the runtime, keep the final boxes, write
``<video_id>.csv`` and, if asked, ``<video_id>.mp4`` with the boxes drawn, and say why when nothing was found.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdet_edge.data.annotations import DatasetError, where
from refdet_edge.data.video import FolderFrames, VideoFileFrames
from refdet_edge.evaluation.predict import VideoPrediction, predict_stream
from refdet_edge.evaluation.settings import TemporalConfig
from refdet_edge.evaluation.video_io import AnnotatedVideoWriter, frame_rate


@dataclass(frozen=True)
class PredictOptions:
    """How each video is predicted and what is written."""

    mode: str  # temporal post-processing: online, offline or off
    temporal: TemporalConfig
    batch_size: int
    fps: float  # frame rate of the annotated video of a frames folder
    save_video: bool


def save_csv(path: Path, boxes: Mapping[int, tuple[float, ...]]) -> Path:
    """One row per frame with a box: ``frame, x1, y1, x2, y2, score`` (original pixels to 3 decimals, the
    score to 6 significant digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "x1", "y1", "x2", "y2", "score"])
        for frame, box in sorted(boxes.items()):
            writer.writerow([frame, *(round(float(v), 3) for v in box[:4]), f"{float(box[4]):.6g}"])
    return path


def nothing_found(result: VideoPrediction, conf: float, raw_conf: float) -> str:
    """Why a video got no box, in one line."""
    if result.max_score is None:
        return f"0 detections; no score reached {raw_conf:g} (--conf {conf:g})"
    if result.max_score < conf:
        return f"0 detections; highest score {result.max_score:.3g} < --conf {conf:g}"
    return (
        f"0 frames with the target; highest score {result.max_score:.3g} >= --conf {conf:g}, but no "
        "detection persisted over frames (try --temporal off)"
    )


def predict_video(
    rt,
    video_id: str,
    source: FolderFrames | VideoFileFrames,
    frames: Iterable[tuple[int, np.ndarray | None]],
    total: int,
    out: Path,
    options: PredictOptions,
    keep: Callable[[int], bool] = lambda _index: True,
) -> VideoPrediction:
    """Stream ``frames`` of ``source`` through ``rt`` (references set); write ``<video_id>.csv`` and, with
    ``options.save_video``, ``<video_id>.mp4`` (in ``offline`` mode after a second decoding pass, since the
    boxes are final only at the end; ``keep`` picks the frames of that pass)."""
    from tqdm import tqdm

    fps = frame_rate(source, options.fps)
    live = options.save_video and options.mode != "offline"
    writer = AnnotatedVideoWriter(out / f"{video_id}.mp4", fps) if live else None
    with tqdm(total=total, unit="frame", desc=video_id, dynamic_ncols=True) as bar, writer or nullcontext():
        result = predict_stream(
            rt,
            frames,
            options.temporal,
            options.batch_size,
            on_frame=None if writer is None else lambda _i, frame, box: writer.write(frame, box),
            progress=bar.update,
            mode=options.mode,
        )
    if result.frames == len(result.unreadable):
        raise DatasetError(f"{where(source.location, video_id, 'frames')}: no frame could be decoded")
    if options.save_video and options.mode == "offline":
        with AnnotatedVideoWriter(out / f"{video_id}.mp4", fps) as writer:
            for index, frame in source.iter_frames():
                if keep(index):
                    same_size = frame is not None and (frame.shape[1], frame.shape[0]) == result.size
                    writer.write(frame if same_size else None, result.boxes.get(index))
    save_csv(out / f"{video_id}.csv", result.boxes)
    return result
