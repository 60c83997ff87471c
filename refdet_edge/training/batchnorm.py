"""Batch norms in training: statistics frozen during the steps, estimated once where they never were.

Training keeps every BatchNorm in eval mode (``TrainConfig.freeze_bn``): the COCO YOLOv8n weights have their
batch norms folded into identity statistics, so a train-mode BN would change the pretrained function, and
small batches would rewrite its statistics. Affine weights still train.

A randomly initialised BatchNorm holds placeholder statistics (mean 0, variance 1, no batch seen); frozen as
they are, activations shrink layer after layer (P5 of a random YOLOv8n falls to ~1e-10). Those, and only
those, get their statistics estimated once from a few training batches before the first step
(:func:`calibrate_batchnorm`, as ``torch.optim.swa_utils.update_bn`` does), then stay frozen like the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm
#: Training batches that estimate the statistics of never-calibrated batch norms.
CALIBRATION_BATCHES = 8


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode: running statistics are used, never updated."""
    for m in module.modules():
        if isinstance(m, BatchNorm):
            m.eval()


def never_calibrated(bn: BatchNorm) -> bool:
    """Whether ``bn`` holds its initial placeholder statistics (mean 0, variance 1, no batch tracked)."""
    if not bn.track_running_stats or bn.running_mean is None:
        return False
    return (
        int(bn.num_batches_tracked) == 0
        and bool((bn.running_mean == 0).all())
        and bool((bn.running_var == 1).all())
    )


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, run: Callable[[object], object], batches: Iterable) -> int:
    """Estimate the statistics of the never-calibrated BatchNorms of ``model`` (see :func:`never_calibrated`)
    as the plain average over ``batches``; ``run(batch)`` runs the model's forward pass on one batch. The pass
    is the training one (a verifying model takes training windows as they are, not as a larger inference
    input to reduce), with the other BatchNorms and dropout as in frozen-statistics training; every weight
    and those BatchNorms are left as they are. Returns how many BatchNorms were calibrated."""
    fresh = [m for m in model.modules() if isinstance(m, BatchNorm) and never_calibrated(m)]
    if not fresh:
        return 0
    mode = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in fresh]
    model.train()
    for m in model.modules():
        if isinstance(m, (BatchNorm, nn.Dropout)):
            m.eval()
    for m in fresh:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    seen = False
    for batch in batches:
        run(batch)
        seen = True
    for m, momentum in zip(fresh, momenta, strict=True):
        m.momentum = momentum
    for m, training in mode.items():
        m.train(training)
    if not seen:
        raise ValueError("calibrate_batchnorm: no batch to estimate the statistics from")
    return len(fresh)


def calibrate_from_loader(
    model: nn.Module, loader: Iterable, device: torch.device, batches: int = CALIBRATION_BATCHES
) -> int:
    """:func:`calibrate_batchnorm` on the query frames and references of the first ``batches`` batches of a
    training loader (detection, triplet or mixed batch dicts; a mixed batch lends its detection part)."""

    def run(batch: dict) -> None:
        part = batch["detection"] if batch.get("batch_type") == "mixed" else batch
        model(part["query_images"].to(device), part["support_images"].to(device))

    return calibrate_batchnorm(model, run, itertools.islice(loader, batches))
