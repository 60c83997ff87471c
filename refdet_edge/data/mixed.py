"""``MixedDataset``: detection episodes and triplets interleaved by a seeded ratio."""

from __future__ import annotations

import math

import numpy as np
import torch

from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.triplet import TripletDataset


class MixedDataset(torch.utils.data.Dataset):
    """Item ``i`` is a detection episode with probability ``detection_ratio``, else a triplet.

    The kind and the index into the chosen dataset are drawn from ``default_rng([seed, epoch, i])``, so a mixed
    item is the same in any worker. Its length defaults to ``len(detection) / detection_ratio`` (an epoch then
    holds about as many episodes as the detection dataset), or ``len(triplet)`` when the ratio is 0. Items keep
    their ``kind`` key; :class:`~refdet_edge.data.collate.MixedCollator` splits a batch by it.
    """

    def __init__(
        self,
        detection: EpisodicDataset,
        triplet: TripletDataset,
        detection_ratio: float = 0.7,
        length: int | None = None,
        seed: int = 0,
    ):
        if not 0.0 <= detection_ratio <= 1.0:
            raise ValueError(f"detection_ratio must be in [0, 1], got {detection_ratio}")
        self.detection, self.triplet = detection, triplet
        self.detection_ratio = detection_ratio
        default = math.ceil(len(detection) / detection_ratio) if detection_ratio > 0 else len(triplet)
        self.length = length or default
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch here and in both wrapped datasets."""
        self.epoch = epoch
        self.detection.set_epoch(epoch)
        self.triplet.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def pick(self, index: int) -> tuple[str, int]:
        """Which dataset item ``index`` comes from, and its index there (cheap: loads nothing)."""
        rng = np.random.default_rng([self.seed, self.epoch, index, 0x3D])
        if rng.random() < self.detection_ratio:
            return "detection", int(rng.integers(len(self.detection)))
        return "triplet", int(rng.integers(len(self.triplet)))

    def __getitem__(self, index: int) -> dict:
        kind, inner = self.pick(index)
        return (self.detection if kind == "detection" else self.triplet)[inner]
