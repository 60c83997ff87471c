"""The operating point chosen on validation: the threshold with the best raw ST-IoU, stored in best.pt."""

from __future__ import annotations

import pytest

from refdet_edge.evaluation.operating_point import THRESHOLDS, best_threshold


def test_best_threshold_separates_true_from_false_detections():
    # the target in frames 0-4 scored 0.6, false boxes in background frames 5-9 scored 0.4: only a threshold
    # in (0.4, 0.6] keeps every true box and drops every false one (ST-IoU 1.0)
    gt = {"v": {f: (10, 10, 20, 20) for f in range(5)}}
    pred = {
        "v": {
            **{f: [(10, 10, 20, 20, 0.6)] for f in range(5)},
            **{f: [(50, 50, 60, 60, 0.4)] for f in range(5, 10)},
        }
    }
    threshold, score = best_threshold(gt, pred, {"v": 10})
    assert 0.4 < threshold <= 0.6
    assert score == pytest.approx(1.0)
    low, _ = best_threshold(gt, pred, {"v": 10}, thresholds=(0.0, 0.3))
    assert low == 0.0  # a tie (both keep the false boxes) goes to the lowest


def test_best_threshold_averages_over_videos():
    gt = {"a": {0: (0, 0, 10, 10)}, "b": {0: (0, 0, 10, 10)}}
    pred = {"a": {0: [(0, 0, 10, 10, 0.9)]}, "b": {0: [(0, 0, 10, 10, 0.3)]}}
    threshold, score = best_threshold(gt, pred, {"a": 1, "b": 1})
    assert threshold <= 0.3 and score == pytest.approx(1.0)
    assert best_threshold(gt, pred, {"a": 1, "b": 1}, thresholds=(0.5,))[1] == pytest.approx(0.5)
    assert THRESHOLDS[0] == 0.0 and THRESHOLDS == tuple(sorted(THRESHOLDS))


def test_checkpoint_operating_point_becomes_the_default_conf(tmp_path):
    from refdet_edge.evaluation.commands import _operating_point
    from refdet_edge.evaluation.operating_point import checkpoint_conf
    from refdet_edge.evaluation.settings import DEFAULT_SCORE_THRESHOLD
    from refdet_edge.models import ModelConfig, atomic_save, checkpoint_payload, create_model

    model = create_model(ModelConfig(imgsz=64, support_size=64))
    chosen, plain = tmp_path / "chosen.pt", tmp_path / "plain.pt"
    atomic_save(checkpoint_payload(model, metrics={"val/conf": 0.42}), chosen)
    atomic_save(checkpoint_payload(model), plain)
    assert checkpoint_conf(chosen) == pytest.approx(0.42)
    assert checkpoint_conf(plain) is None
    assert _operating_point(None, chosen) == pytest.approx(0.42)
    assert _operating_point(0.3, chosen) == 0.3  # an explicit --conf wins
    assert _operating_point(None, plain) == DEFAULT_SCORE_THRESHOLD
    assert _operating_point(None, None) == DEFAULT_SCORE_THRESHOLD
