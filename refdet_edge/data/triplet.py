"""Triplets for metric learning in the detector's own score space, as detection-style frames.

A triplet item is a tiny episode: the K reference photos of target t (the anchor: the loss compares the
head's embeddings with t's prototype), a positive frame (an annotated frame of t, with its box) and a
negative frame, by ``negative_strategy``:
``background``: a frame without any box (label -1);
``cross_class``: an annotated frame of another target (that target's label and box);
``mixed``: either, with equal odds (whichever exists when the split lacks one kind).
Frames and references go through the wrapped :class:`~refdet_edge.data.episodes.EpisodicDataset`'s own
pipeline (augmentation, letterbox, crop windows), so triplet frames look exactly like detection frames and
run through the same forward pass. The negative's label is never the anchor's, and no negative frame shows
the anchor target (``VideoRecord.shows``, twins: frames are picked as episodes pick them); with ``mixed``
the other kind stands in when one has no such frame. ``samples_per_class`` triplets per target make an
epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from refdet_edge.data.dataset import VideoRecord
from refdet_edge.data.episodes import EpisodicDataset

NEGATIVE_STRATEGIES = ("background", "cross_class", "mixed")


class TripletDataset(torch.utils.data.Dataset):
    """Triplets over the videos of an :class:`EpisodicDataset`; see the module docstring.

    Item (a dict): ``kind`` = ``"triplet"``; ``support_images`` float32 (1, K, 3, S, S) and
    ``support_labels`` int64 (1,): the anchor target's references; ``query_images`` float32 (2, 3, H, W):
    the positive frame, then the negative frame; ``query_boxes`` float32 (2, 4) xyxy in model-input pixels
    (zeros for a background frame); ``query_labels`` int64 (2,): the anchor's label, then the negative's (-1 =
    background). :class:`~refdet_edge.data.collate.TripletCollator` turns items into the triplet batch.
    """

    def __init__(
        self,
        episodes: EpisodicDataset,
        samples_per_class: int = 100,
        negative_strategy: str = "mixed",
        seed: int = 0,
    ):
        if negative_strategy not in NEGATIVE_STRATEGIES:
            raise ValueError(
                f"negative_strategy must be one of {NEGATIVE_STRATEGIES}, got {negative_strategy!r}"
            )
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be at least 1, got {samples_per_class}")
        self.episodes = episodes
        self.targets, self.backgrounds = episodes.targets, episodes.backgrounds
        dataset = episodes.dataset
        where = f"{dataset.root} ({dataset.split or 'all'} split)"
        if negative_strategy == "background" and not self.backgrounds:
            raise ValueError(
                f"{where}: negative_strategy 'background' needs frames without a box; there are none"
            )
        if negative_strategy == "cross_class" and len(self.targets) < 2:
            raise ValueError(f"{where}: negative_strategy 'cross_class' needs at least two targets")
        if negative_strategy == "mixed" and not self.backgrounds and len(self.targets) < 2:
            raise ValueError(f"{where}: no negatives: no background frames and a single target")
        self.samples_per_class, self.negative_strategy = samples_per_class, negative_strategy
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_class * len(self.targets)

    def negative_kind(self, rng: np.random.Generator) -> str:
        if self.negative_strategy != "mixed":
            return self.negative_strategy
        if not self.backgrounds:
            return "cross_class"
        if len(self.targets) < 2:
            return "background"
        return "background" if rng.random() < 0.5 else "cross_class"

    def _negative(self, anchor: VideoRecord, rng: np.random.Generator) -> tuple[VideoRecord, int, int]:
        """``(video, frame, label)`` of a negative frame for ``anchor`` that does not show it (nor its twin)."""
        first = self.negative_kind(rng)
        blocked = {anchor.label, *self.episodes.dataset.twins.get(anchor.label, ())}
        for kind in (first, "cross_class" if first == "background" else "background"):
            if kind == "background" and self.backgrounds:
                pick = self.episodes.pick(
                    self.backgrounds, "background_frames", frozenset({anchor.label}), rng
                )
            elif kind == "cross_class":
                others = [v for v in self.targets if v.label not in blocked]
                pick = others and self.episodes.pick(
                    others, "positive_frames", frozenset({anchor.label}), rng
                )
            else:
                pick = None
            if pick:
                return pick[0], pick[1], -1 if kind == "background" else pick[0].label
            if self.negative_strategy != "mixed":
                break
        raise ValueError(
            f"{self.episodes.dataset.root}: no {self.negative_strategy} negative frame for target "
            f"{anchor.video_id} that does not show it (see sources.json)"
        )

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index, 0x7A])
        anchor = self.targets[index // self.samples_per_class]
        positive = self.episodes.pick([anchor], "positive_frames", frozenset({anchor.label}), rng)
        if positive is None:
            raise ValueError(
                f"{self.episodes.dataset.root}: every annotated frame of {anchor.video_id} shows another target"
            )
        negative, negative_frame, negative_label = self._negative(anchor, rng)
        positive_image, positive_box = self.episodes.query(anchor, positive[1], rng)
        negative_image, negative_box = self.episodes.query(negative, negative_frame, rng)
        return {
            "kind": "triplet",
            "support_images": self.episodes.references(anchor, self.episodes.k_shot, rng)[None],
            "support_labels": torch.tensor([anchor.label], dtype=torch.int64),
            "query_images": torch.stack([positive_image, negative_image]),
            "query_boxes": torch.from_numpy(np.stack([positive_box, negative_box])),
            "query_labels": torch.tensor([anchor.label, negative_label], dtype=torch.int64),
        }
