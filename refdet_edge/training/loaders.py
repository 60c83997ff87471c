"""The training data of one epoch: episodic detection, or detection mixed with triplets, as a DataLoader."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from refdet_edge.data.collate import MixedCollator, RefDetCollator
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.mixed import MixedBatchSampler, MixedDataset
from refdet_edge.data.synth import generate_synthetic
from refdet_edge.data.triplet import TripletDataset
from refdet_edge.training.config import TrainConfig

DEMO_DATA_DIR = Path("demo_data")


def ensure_demo_data(root: Path = DEMO_DATA_DIR) -> Path:
    """The synthetic demo dataset (seed 0, default size), generated the first time it is asked for."""
    if not (root / "annotations" / "annotations.json").is_file():
        generate_synthetic(root, seed=0)
    return root


def ignore_interrupts(worker_id: int) -> None:
    """Workers leave Ctrl-C to the trainer, which stops at the end of a step and saves (they would die)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_train_loader(
    cfg: TrainConfig, dataset: DroneDataset, epoch: int, world_size: int = 1, rank: int = 0, skip: int = 0
) -> DataLoader:
    """Loader of epoch ``epoch`` without its first ``skip`` batches. Every random choice (episode content,
    batch kind, order) is a function of ``(seed, epoch, index)``, so a run resumed at any batch sees exactly
    the batches an uninterrupted run would."""
    episodic = EpisodicDataset(
        dataset,
        cfg.n_way,
        cfg.k_shot,
        cfg.n_query,
        cfg.imgsz,
        cfg.support_size,
        episodes=cfg.episodes_per_epoch,
        seed=cfg.seed,
        crop=cfg.crop,
    )
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # the global RNG stays untouched
    if cfg.use_triplet:  # every batch: batch_size episodes and the triplets of --triplet-ratio
        triplet = TripletDataset(episodic, cfg.samples_per_class, cfg.negative_strategy, seed=cfg.seed)
        mixed = MixedDataset(episodic, triplet)
        mixed.set_epoch(epoch)
        batches = MixedBatchSampler(mixed, cfg.batch_size, cfg.triplet_ratio, cfg.seed, world_size, rank)
        batches.set_epoch(epoch)
        return DataLoader(
            mixed,
            batch_sampler=list(batches)[skip:],
            generator=generator,
            num_workers=cfg.workers,
            collate_fn=MixedCollator(),
            worker_init_fn=ignore_interrupts,
        )
    episodic.set_epoch(epoch)
    if world_size > 1:
        sampler = DistributedSampler(episodic, world_size, rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:
        order = torch.randperm(len(episodic), generator=generator).tolist()
    return DataLoader(
        episodic,
        batch_size=cfg.batch_size,
        sampler=order[skip * cfg.batch_size :],
        generator=generator,
        num_workers=cfg.workers,
        collate_fn=RefDetCollator(),
        worker_init_fn=ignore_interrupts,
    )
