"""Triplets for metric learning: a reference photo, the same target in a drone frame, and something else.

- anchor: one augmented reference photo of target t, letterboxed to ``support_size``;
- positive: a square crop around t's box in one of its annotated frames (side ``context`` x the box's long
  side, at least ``min_crop`` cached pixels, centre jittered by up to a quarter of the box), letterboxed;
- negative, by ``negative_strategy``:
  ``background``: a crop of the same size at a random place of a frame without any box (label -1);
  ``cross_class``: a crop around another target's box (that target's label);
  ``mixed``: either, with equal odds (whichever exists when the split lacks one kind).
The negative's label is never the anchor's. ``samples_per_class`` triplets per target make an epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from refdet_edge.data.augment import Augmenter
from refdet_edge.data.dataset import DroneDataset, VideoRecord
from refdet_edge.data.episodes import ReferenceSampler, crop_square, sample_seed
from refdet_edge.preprocess import letterbox, to_tensor

NEGATIVE_STRATEGIES = ("background", "cross_class", "mixed")


class TripletDataset(torch.utils.data.Dataset):
    """Triplets over a :class:`DroneDataset`; see the module docstring.

    Item (a dict): ``kind`` = ``"triplet"``; ``anchor_image``, ``positive_image``, ``negative_image``: float32
    (3, S, S) in [0, 1]; ``anchor_label``, ``positive_label``, ``negative_label``: int64 scalars (-1 =
    background). :class:`~refdet_edge.data.collate.TripletCollator` stacks them into the triplet batch.
    """

    def __init__(
        self,
        dataset: DroneDataset,
        samples_per_class: int = 100,
        negative_strategy: str = "mixed",
        support_size: int = 224,
        context: float = 2.0,
        min_crop: int = 32,
        augment: bool = True,
        seed: int = 0,
    ):
        if negative_strategy not in NEGATIVE_STRATEGIES:
            raise ValueError(
                f"negative_strategy must be one of {NEGATIVE_STRATEGIES}, got {negative_strategy!r}"
            )
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be at least 1, got {samples_per_class}")
        self.dataset = dataset
        self.targets = [v for v in dataset.videos if v.positive_frames]
        self.backgrounds = [v for v in dataset.videos if v.background_frames]
        where = f"{dataset.root} ({dataset.split or 'all'} split)"
        if not self.targets:
            raise ValueError(f"{where}: no video has an annotated frame")
        if negative_strategy == "background" and not self.backgrounds:
            raise ValueError(
                f"{where}: negative_strategy 'background' needs frames without a box; there are none"
            )
        if negative_strategy == "cross_class" and len(self.targets) < 2:
            raise ValueError(f"{where}: negative_strategy 'cross_class' needs at least two targets")
        if negative_strategy == "mixed" and not self.backgrounds and len(self.targets) < 2:
            raise ValueError(f"{where}: no negatives: no background frames and a single target")
        self.samples_per_class, self.negative_strategy = samples_per_class, negative_strategy
        self.support_size, self.context, self.min_crop = support_size, context, min_crop
        self.augment = Augmenter() if augment else None
        self.references = ReferenceSampler(support_size, self.augment)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_class * len(self.targets)

    def _side(self, box: np.ndarray) -> float:
        return max(self.context * float(max(box[2] - box[0], box[3] - box[1])), float(self.min_crop))

    def _finish(self, crop: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.augment is not None:
            crop, _ = self.augment(crop, np.zeros((0, 4), np.float32), sample_seed(rng))
        return to_tensor(letterbox(crop, self.support_size)[0])

    def _object_crop(self, video: VideoRecord, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        image, box = self.dataset.load_frame(video, int(rng.choice(video.positive_frames)))
        size = float(max(box[2] - box[0], box[3] - box[1]))
        cx, cy = (box[:2] + box[2:]) / 2 + rng.uniform(-0.25, 0.25, 2) * size
        side = self._side(box)
        return self._finish(crop_square(image, cx, cy, side), rng), side

    def _background_crop(self, side: float, rng: np.random.Generator) -> torch.Tensor:
        video = self.backgrounds[rng.integers(len(self.backgrounds))]
        image, _ = self.dataset.load_frame(video, int(rng.choice(video.background_frames)))
        h, w = image.shape[:2]
        side = min(side, h, w)
        cx = rng.uniform(side / 2, w - side / 2)
        cy = rng.uniform(side / 2, h - side / 2)
        return self._finish(crop_square(image, cx, cy, side), rng)

    def negative_kind(self, rng: np.random.Generator) -> str:
        if self.negative_strategy != "mixed":
            return self.negative_strategy
        if not self.backgrounds:
            return "cross_class"
        if len(self.targets) < 2:
            return "background"
        return "background" if rng.random() < 0.5 else "cross_class"

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        anchor = self.targets[index // self.samples_per_class]
        anchor_image = self.references.one(anchor, int(rng.integers(len(anchor.references))), rng)
        positive_image, side = self._object_crop(anchor, rng)
        if self.negative_kind(rng) == "background":
            negative_image, negative_label = self._background_crop(side, rng), -1
        else:
            others = [v for v in self.targets if v.label != anchor.label]
            other = others[rng.integers(len(others))]
            negative_image, negative_label = self._object_crop(other, rng)[0], other.label
        return {
            "kind": "triplet",
            "anchor_image": anchor_image,
            "positive_image": positive_image,
            "negative_image": negative_image,
            "anchor_label": torch.tensor(anchor.label, dtype=torch.int64),
            "positive_label": torch.tensor(anchor.label, dtype=torch.int64),
            "negative_label": torch.tensor(negative_label, dtype=torch.int64),
        }
