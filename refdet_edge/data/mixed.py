"""Mixed training data: detection episodes and triplets behind one index, batched by a fixed ratio.

:class:`MixedDataset` puts episodes at indices ``[0, len(detection))`` and triplets after them;
:class:`MixedBatchSampler` gives every batch both kinds: ``batch_size`` episodes (as without triplets, so a
run with and one without ``--use-triplet`` train on the same episodes in the same number of steps) plus
:func:`triplets_per_batch` triplets, so that triplets make up about ``triplet_ratio`` of the batch's items.
No step lacks the detection loss or the triplet term.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.triplet import TripletDataset


def triplets_per_batch(batch_size: int, triplet_ratio: float) -> int:
    """Triplets next to ``batch_size`` episodes: ``round(batch_size * r / (1 - r))`` for ratio r, at least 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 < triplet_ratio < 1.0:
        raise ValueError(f"triplet_ratio must be between 0 and 1 (exclusive), got {triplet_ratio}")
    return max(1, round(batch_size * triplet_ratio / (1.0 - triplet_ratio)))


class MixedDataset(torch.utils.data.Dataset):
    """Episodes of ``detection`` at ``[0, len(detection))``, then the triplets of ``triplet``. Items keep their
    ``kind`` key; :class:`~refdet_edge.data.collate.MixedCollator` splits a batch by it."""

    def __init__(self, detection: EpisodicDataset, triplet: TripletDataset):
        self.detection, self.triplet = detection, triplet

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch in both wrapped datasets."""
        self.detection.set_epoch(epoch)
        self.triplet.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.detection) + len(self.triplet)

    def __getitem__(self, index: int) -> dict:
        if index < len(self.detection):
            return self.detection[index]
        return self.triplet[index - len(self.detection)]


class MixedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Index batches of a :class:`MixedDataset`: ``batch_size`` episodes and :func:`triplets_per_batch`
    triplets each.

    An epoch shows every episode once (in a seeded random order; the last batch is filled from the start of
    the order) and as many triplets as the batches take, drawn from seeded permutations of the triplets.
    The order is a function of ``(seed, epoch)``; with ``num_replicas > 1`` process ``rank`` takes every
    ``num_replicas``-th batch, all processes the same number (batches repeat from the start to fill up).
    """

    def __init__(
        self,
        dataset: MixedDataset,
        batch_size: int,
        triplet_ratio: float,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.n_triplet = triplets_per_batch(batch_size, triplet_ratio)
        self.n_detection = batch_size
        self.num_detection, self.num_triplet = len(dataset.detection), len(dataset.triplet)
        if not self.num_detection or not self.num_triplet:
            raise ValueError("MixedBatchSampler needs at least one episode and one triplet")
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.batches = math.ceil(self.num_detection / self.n_detection)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.batches / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 0x3D])
        need_det, need_trip = self.batches * self.n_detection, self.batches * self.n_triplet
        detection = np.resize(rng.permutation(self.num_detection), need_det)
        rounds = math.ceil(need_trip / self.num_triplet)
        triplet = np.concatenate([rng.permutation(self.num_triplet) for _ in range(rounds)])[:need_trip]
        triplet += self.num_detection
        batches = [
            [
                *detection[b * self.n_detection : (b + 1) * self.n_detection].tolist(),
                *triplet[b * self.n_triplet : (b + 1) * self.n_triplet].tolist(),
            ]
            for b in range(self.batches)
        ]
        padded = [batches[i % self.batches] for i in range(len(self) * self.num_replicas)]
        return iter(padded[self.rank :: self.num_replicas])
