"""Runs a model over the videos of a dataset split and scores it: the validator of training and ``refdet eval``.

Each video is searched for its own target: its reference photos are encoded once (``set_references``), then
every frame of the split goes through the per-frame path. Raw detections (low threshold, several per frame)
give mAP, precision/recall and false positives; the temporal post-processing of
:mod:`refdet_edge.evaluation.temporal`, online and offline, turns them into at most one box per frame. The
three are scored side by side as the stages ``raw``, ``online`` and ``offline``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from refdet_edge.data.dataset import DroneDataset, VideoRecord
from refdet_edge.evaluation.metrics import DEFAULT_SCORE_THRESHOLD, evaluate, st_iou
from refdet_edge.evaluation.temporal import ScoredBox, TemporalConfig, apply_temporal, offline_threshold
from refdet_edge.models.refdet import RefDetModel
from refdet_edge.postprocess import postprocess
from refdet_edge.preprocess import preprocess_images

ScoredBoxes = list[tuple[float, float, float, float, float]]
STAGES = ("raw", "online", "offline")


@dataclass(frozen=True)
class ValidatorConfig:
    """How the model is run for evaluation."""

    batch_size: int = 8
    raw_conf: float = 0.01  # the raw cut: low, so that mAP sees the whole precision-recall curve
    iou: float = 0.5
    max_det: int = 10
    score_threshold: float = DEFAULT_SCORE_THRESHOLD  # operating point of precision, recall, F1, FPs, tracks
    temporal: TemporalConfig = field(default_factory=TemporalConfig)  # its score_threshold is replaced
    fps: float = 25.0
    frame_stride: int = 1  # score every k-th frame of the split (a faster check during training)

    @property
    def tracking(self) -> TemporalConfig:
        """The temporal settings at this operating point."""
        return replace(self.temporal, score_threshold=self.score_threshold)


def scored_frames(video: VideoRecord, stride: int = 1) -> tuple[int, ...]:
    """The frames of ``video``'s split that are scored: every ``stride``-th one."""
    return video.frames[::stride]


def reference_batch(images: list[np.ndarray], support_size: int) -> torch.Tensor:
    """One target's reference photos (RGB uint8) -> (1, K, 3, S, S)."""
    return preprocess_images(images, support_size)[0][None]


@torch.no_grad()
def predict_video(
    model: RefDetModel,
    dataset: DroneDataset,
    video: VideoRecord,
    config: ValidatorConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[int, ScoredBoxes]:
    """Raw detections of ``video``'s own target in each frame of the split, in original-frame pixels."""
    device = next(model.parameters()).device
    model.set_references(
        reference_batch(dataset.load_references(video), model.config.support_size).to(device)
    )
    out: dict[int, ScoredBoxes] = {}
    try:
        scored = scored_frames(video, config.frame_stride)
        for start in range(0, len(scored), config.batch_size):
            indices = scored[start : start + config.batch_size]
            batch, infos = preprocess_images(
                [dataset.load_frame(video, i)[0] for i in indices], model.config.input_size
            )
            det = model(batch.to(device))
            frames = postprocess(
                det["boxes"], det["pred_scores"].sigmoid(), infos, config.raw_conf, config.iou, config.max_det
            )
            for index, found in zip(indices, frames, strict=True):
                boxes = (found.boxes / video.cached.scale).cpu().numpy()
                out[index] = [
                    (*map(float, b), float(s)) for b, s in zip(boxes, found.scores.tolist(), strict=True)
                ]
            if progress is not None:
                progress(len(indices))
    finally:
        model.clear_references()
    return out


def positions(video: VideoRecord, by_frame: dict[int, object], stride: int = 1) -> dict[int, object]:
    """Re-index the scored frames 0..n-1, so that a split that is part of a video (or every k-th frame of it)
    scores as a video of its own."""
    position = {frame: i for i, frame in enumerate(scored_frames(video, stride))}
    return {position[f]: v for f, v in by_frame.items() if f in position}


class Validator:
    """Scores a model on every video of a dataset split (see the module docstring)."""

    def __init__(self, dataset: DroneDataset, config: ValidatorConfig | None = None) -> None:
        self.dataset = dataset
        self.config = config or ValidatorConfig()

    def __call__(
        self, model: RefDetModel, progress: Callable[[int], None] | None = None
    ) -> tuple[dict, dict[str, dict[int, ScoredBoxes]]]:
        """``(metrics, raw detections per video)``; metrics hold one result of
        :func:`~refdet_edge.evaluation.metrics.evaluate` per stage of :data:`STAGES` (see :meth:`score`)."""
        was_training = model.training
        model.eval()
        raw: dict[str, dict[int, ScoredBoxes]] = {}
        try:
            for video in self.dataset.videos:
                raw[video.video_id] = predict_video(model, self.dataset, video, self.config, progress)
        finally:
            model.train(was_training)
        return self.score(raw), raw

    def final_boxes(self, video: VideoRecord, raw: dict[int, ScoredBoxes], mode: str) -> dict[int, ScoredBox]:
        """The final box per scored frame of ``video`` (original frame indices) from its raw detections (those
        of other frames are left out), by the temporal ``mode`` (``off``: each frame's best detection over the
        threshold). What the stages score and
        what a prediction file holds."""
        dets, frames = self._scored(video, raw)
        return apply_temporal(dets, mode, self.config.tracking, video.cached.orig_size, frames=frames)

    def offline_thresholds(self, raw: dict[str, dict[int, ScoredBoxes]]) -> dict[str, float]:
        """The threshold the ``offline`` mode of :meth:`final_boxes` uses on each video (its own, from its
        scores: :mod:`refdet_edge.evaluation.video_threshold`)."""
        out = {}
        for video in self.dataset.videos:
            dets, frames = self._scored(video, raw.get(video.video_id, {}))
            out[video.video_id] = offline_threshold(dets, self.config.tracking, frames)
        return out

    def _scored(
        self, video: VideoRecord, raw: dict[int, ScoredBoxes]
    ) -> tuple[dict[int, ScoredBoxes], list[int]]:
        """The raw detections of the scored frames of ``video``, and those frames."""
        frames = scored_frames(video, self.config.frame_stride)
        scored = set(frames)
        return {f: d for f, d in raw.items() if f in scored}, frames

    def _stage_boxes(self, video: VideoRecord, raw: dict[int, ScoredBoxes], stage: str) -> dict[int, object]:
        """What a stage of :data:`STAGES` scores of one video, at the positions of its scored frames: every raw
        detection (``raw``) or the :meth:`final_boxes` of that temporal mode."""
        boxes = raw if stage == "raw" else self.final_boxes(video, raw, stage)
        return positions(video, boxes, self.config.frame_stride)

    def score(self, raw: dict[str, dict[int, ScoredBoxes]]) -> dict:
        """Metrics of raw per-frame detections (original frame indices) of this split's videos, per stage:
        ``raw`` (every detection; ST-IoU from each frame's best), ``online`` and ``offline`` (the
        :meth:`final_boxes` of that temporal mode)."""
        cfg = self.config
        videos = {v.video_id: v for v in self.dataset.videos}
        k = cfg.frame_stride
        gt = {vid: positions(v, v.boxes, k) for vid, v in videos.items()}
        frames = {vid: len(scored_frames(v, k)) for vid, v in videos.items()}
        by_stage = {
            stage: {vid: self._stage_boxes(videos[vid], dets, stage) for vid, dets in raw.items()}
            for stage in STAGES
        }
        return {
            stage: evaluate(gt, pred, frames, cfg.fps / k, cfg.score_threshold)
            for stage, pred in by_stage.items()
        }

    def st_iou_per_video(self, raw: dict[str, dict[int, ScoredBoxes]], stage: str) -> dict[str, float]:
        """The ``st_iou`` of each video that :meth:`score` gives for ``stage``, without the other metrics (what
        a sweep over temporal settings compares)."""
        k, out = self.config.frame_stride, {}
        for video in self.dataset.videos:
            pred = self._stage_boxes(video, raw.get(video.video_id, {}), stage)
            gt, frames = positions(video, video.boxes, k), len(scored_frames(video, k))
            out[video.video_id] = st_iou(gt, pred, frames, self.config.score_threshold, video.video_id)
        return out
