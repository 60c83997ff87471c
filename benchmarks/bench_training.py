"""Training: one stage-3 step on a detection-only batch against a mixed detection + triplet batch (issue 7,
pair 5), and the leak check of issue 4: resident memory after 200 training steps within 10% of that after 20.
See :mod:`refdet_edge.benchmark.leak`."""

from __future__ import annotations

from refdet_edge.benchmark.leak import rss_over_training
from refdet_edge.data.synth import generate_synthetic

LEAK_MARKS = (20, 200)
LEAK_TOLERANCE = 1.10


def test_train_mixed_vs_detection(measure_pair):
    result = measure_pair("train_mixed_vs_detection")
    assert result.extra["step_time_ratio"] > 0


def test_rss_after_200_steps_within_10_percent_of_20(benchmark, tmp_path):
    """The real trainer (stage 3, ``--use-triplet``, mixed batches from the data pipeline, AdamW, EMA) at tiny
    sizes, workers=0 so that every allocation is in this process; RSS read after a garbage collection at the
    end of the epochs that reach 20 and 200 optimizer steps (10 steps per epoch)."""
    data = generate_synthetic(tmp_path / "data", videos=3, frames=40, seed=0, workers=1)
    options = {
        "data": str(data),
        "stage": 3,
        "use_triplet": True,
        "triplet_ratio": 0.5,
        "imgsz": 64,
        "support_size": 56,
        "batch_size": 2,
        "n_query": 2,
        "episodes_per_epoch": 10,
        "workers": 0,
        "device": "cpu",
        "warmup_steps": 10,
        "out": str(tmp_path / "run"),
    }
    benchmark.group = "leak"
    readings = benchmark.pedantic(rss_over_training, args=(options, LEAK_MARKS), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 3) for k, v in readings.items()})
    print(
        f"\nRSS after {readings['steps_early']:.0f} steps: {readings['rss_early_mb']:.1f} MB; "
        f"after {readings['steps_late']:.0f} steps: {readings['rss_late_mb']:.1f} MB; "
        f"ratio {readings['ratio']:.3f} (limit {LEAK_TOLERANCE})"
    )
    assert readings["ratio"] <= LEAK_TOLERANCE
