"""Resident memory over a long training: the leak check of ``benchmarks/bench_training.py``."""

from __future__ import annotations

import gc
from typing import Any

import psutil


def rss_mb() -> float:
    """Resident memory of this process (MB), after a garbage collection."""
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def rss_over_training(options: dict[str, Any], marks: tuple[int, int] = (20, 200)) -> dict[str, float]:
    """Train with :class:`refdet_edge.training.trainer.Trainer` (``options`` are ``TrainConfig`` fields;
    use ``workers=0`` so every allocation is in this process) epoch after epoch, and read the RSS at the end
    of the first epoch that reaches each of the two optimizer-step ``marks``.

    Returns ``{"steps_early", "rss_early_mb", "steps_late", "rss_late_mb", "ratio"}``.
    """
    from refdet_edge.training.config import load_config
    from refdet_edge.training.trainer import Trainer

    trainer = Trainer(load_config(None, **options))
    readings: dict[str, float] = {}
    epoch = 0
    while trainer.step < marks[1]:
        trainer.train_epoch(epoch)
        epoch += 1
        if "rss_early_mb" not in readings and trainer.step >= marks[0]:
            readings.update(steps_early=trainer.step, rss_early_mb=rss_mb())
    readings.update(steps_late=trainer.step, rss_late_mb=rss_mb())
    readings["ratio"] = readings["rss_late_mb"] / readings["rss_early_mb"]
    return readings
