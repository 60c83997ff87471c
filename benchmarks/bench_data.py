"""Data-loading benchmark: episodic samples per second (0 and 2 workers), one training step, RSS growth.

Run: ``YOLO_OFFLINE=1 python -m pytest benchmarks/bench_data.py --benchmark-only -s``. The numbers land in
pytest-benchmark's table and in each benchmark's ``extra_info`` (``--benchmark-json``): ``samples_per_s``
for the loaders, ``rss_growth_mb`` over 1000 samples (target < 200 MB). A "sample" is one detection episode
(2-way, 3-shot, 4 queries at 640 px, references at 224 px: the ``refdet train`` defaults).
"""

from __future__ import annotations

import time

import psutil
import pytest
import torch

from refdet_edge.data.collate import RefDetCollator
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.synth import generate_synthetic

IMGSZ, SUPPORT, N_WAY, K_SHOT, N_QUERY, BATCH = 640, 224, 2, 3, 4, 2
EPISODES = 48
WARMUP = 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = generate_synthetic(tmp_path_factory.mktemp("bench") / "data", videos=4, frames=60, seed=0)
    return DroneDataset(root, "train", cache_size=IMGSZ)


def episodes(dataset, count):
    return EpisodicDataset(
        dataset,
        n_way=N_WAY,
        k_shot=K_SHOT,
        n_query=N_QUERY,
        imgsz=IMGSZ,
        support_size=SUPPORT,
        episodes=count,
    )


def loader(data, workers):
    return torch.utils.data.DataLoader(
        data, batch_size=BATCH, num_workers=workers, collate_fn=RefDetCollator(), persistent_workers=False
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_episodic_samples_per_second(benchmark, dataset, workers):
    data = episodes(dataset, EPISODES)

    def run():
        return sum(batch["query_images"].shape[0] // N_QUERY for batch in loader(data, workers))

    start = time.perf_counter()
    count = benchmark.pedantic(run, rounds=2, iterations=1)
    assert count == EPISODES
    benchmark.extra_info["samples_per_s"] = round(2 * EPISODES / (time.perf_counter() - start), 2)
    print(f"\n{workers} workers: {benchmark.extra_info['samples_per_s']} episodes/s (incl. worker start-up)")


def test_training_step_time(benchmark, dataset):
    models = pytest.importorskip("refdet_edge.models")
    model = models.create_model(imgsz=IMGSZ, support_size=SUPPORT)
    model.train()
    batch = next(iter(loader(episodes(dataset, BATCH), 0)))

    def step():
        model.zero_grad(set_to_none=True)
        out = model(batch["query_images"], references=batch["support_images"])
        out["pred_scores"].sum().backward()

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["batch"] = (
        f"{BATCH} episodes = {BATCH * N_QUERY} queries, {N_WAY * BATCH} targets max"
    )


def rss_mb(process: psutil.Process) -> float:
    """Memory of the process and its DataLoader workers: PSS, so pages the forked workers share with the main
    process are counted once (a plain RSS sum counts them once per process)."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def test_rss_growth_over_1000_samples(benchmark, dataset):
    process = psutil.Process()
    data = episodes(dataset, 1000 + WARMUP)
    result = {}

    def run():
        it = iter(torch.utils.data.DataLoader(data, batch_size=1, num_workers=2, collate_fn=RefDetCollator()))
        for _ in range(WARMUP):  # workers started, allocator pools filled (worker memory plateaus after ~200)
            next(it)
        result["before"] = rss_mb(process)
        for _ in range(1000):
            next(it)
        result["after"] = rss_mb(process)

    benchmark.pedantic(run, rounds=1, iterations=1)
    growth = result["after"] - result["before"]
    benchmark.extra_info.update(rss_before_mb=round(result["before"]), rss_growth_mb=round(growth, 1))
    print(
        f"\nPSS (main + 2 workers) {result['before']:.0f} MB -> {result['after']:.0f} MB over 1000 episodes"
    )
    assert growth < 200
