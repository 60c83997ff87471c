"""The training pair: a stage-3 step without and with ``--use-triplet``, per sample."""

from __future__ import annotations

from typing import Any

import torch

from refdet_edge.benchmark.measure import Side
from refdet_edge.benchmark.report import PairResult, rounded
from refdet_edge.benchmark.settings import BenchSettings

TRAIN_EPISODES, N_WAY, K_SHOT, N_QUERY = 2, 2, 3, 4  # the `refdet train` defaults (batch of 2 episodes)
TRIPLET_RATIO, TRIPLET_WEIGHT = 0.5, 0.5  # the typical stage-3 run: --triplet-ratio 0.5 --triplet-weight 0.5
TRAIN_MAX_REPEATS = 10  # training steps are seconds each on a CPU


def train_items() -> tuple[int, int]:
    """Samples per step: detection episodes, and episodes plus the triplets mixed in at TRIPLET_RATIO."""
    triplets = max(1, round(TRAIN_EPISODES * TRIPLET_RATIO / (1 - TRIPLET_RATIO)))
    return TRAIN_EPISODES, TRAIN_EPISODES + triplets


def train_batches(imgsz: int, support_size: int, seed: int = 0) -> tuple[dict, dict]:
    """A detection batch of :data:`TRAIN_EPISODES` episodes (``refdet train`` defaults: 2-way, 3-shot, 4
    queries each, one of them a background frame) and the mixed batch of those episodes with as many
    triplets as ``--triplet-ratio`` :data:`TRIPLET_RATIO` adds, made by the training collators from
    random-image items in the datasets' layout."""
    from refdet_edge.data.collate import MixedCollator, RefDetCollator

    g = torch.Generator().manual_seed(seed)

    def queries(n: int) -> torch.Tensor:
        return torch.rand(n, 3, imgsz, imgsz, generator=g)

    def supports(n: int) -> torch.Tensor:
        return torch.rand(n, K_SHOT, 3, support_size, support_size, generator=g)

    def box(slot: int, episode: int) -> list[float]:
        x, y = (0.2 + 0.15 * slot) * imgsz, (0.3 + 0.1 * episode) * imgsz
        return [x, y, x + imgsz / 16, y + imgsz / 20]

    episodes = []
    for e in range(TRAIN_EPISODES):
        labels = [e * N_WAY + slot % N_WAY if slot < N_QUERY - 1 else -1 for slot in range(N_QUERY)]
        episodes.append(
            {
                "kind": "detection",
                "query_images": queries(N_QUERY),
                "query_boxes": torch.tensor(
                    [box(s, e) if lab >= 0 else [0.0] * 4 for s, lab in enumerate(labels)]
                ),
                "query_labels": torch.tensor(labels),
                "support_images": supports(N_WAY),
                "support_labels": torch.arange(e * N_WAY, (e + 1) * N_WAY),
            }
        )
    triplets = [
        {
            "kind": "triplet",
            "support_images": supports(1),
            "support_labels": torch.tensor([t % (TRAIN_EPISODES * N_WAY)]),
            "query_images": queries(2),
            "query_boxes": torch.tensor([box(t, 0), [0.0] * 4]),
            "query_labels": torch.tensor([t % (TRAIN_EPISODES * N_WAY), -1]),
        }
        for t in range(train_items()[1] - TRAIN_EPISODES)
    ]
    return RefDetCollator()(episodes), MixedCollator()([*episodes, *triplets])


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def build_train_mixed_vs_detection(settings: BenchSettings, side: str, shared: dict) -> Side:
    """A stage-3 step (forward, weighted loss, backward, AdamW step) without / with ``--use-triplet``."""
    from refdet_edge.losses import combine
    from refdet_edge.models import create_model
    from refdet_edge.training.prepare import LossComputer
    from refdet_edge.training.stages import stage_spec

    mixed = side == "candidate"
    torch.manual_seed(0)
    model = create_model(
        imgsz=settings.imgsz, support_size=settings.support_size, **settings.model_overrides
    ).train()
    model.to(settings.torch_device)
    spec = stage_spec(3)
    groups = spec.apply(model)
    computer = LossComputer(model, spec.loss_weights(TRIPLET_WEIGHT if mixed else 0.0))
    computer.to(settings.torch_device)
    optimizer = torch.optim.AdamW([*groups["main"], *groups["support"]], lr=spec.lr)
    detection, mixed_batch = _to(train_batches(settings.imgsz, settings.support_size), settings.torch_device)
    batch = mixed_batch if mixed else detection

    def step():
        optimizer.zero_grad(set_to_none=True)
        combine(computer(batch), computer.weights).backward()
        optimizer.step()

    return Side(step, samples=train_items()[1] if mixed else train_items()[0])


def train_extra(result: PairResult) -> dict[str, Any]:
    """Samples per step of each side and the ratio of whole steps (the cost per epoch: both sides train on
    the same episodes, the candidate on the triplets too)."""
    episodes, items = train_items()
    return {
        "baseline_samples_per_step": episodes,
        "candidate_samples_per_step": items,
        "step_time_ratio": rounded(result.latency_ratio * items / episodes, 3),
    }
