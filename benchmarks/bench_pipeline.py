"""End to end: ``predict``-style frames per second (decode JPEG frames, preprocess, model, post-process,
write CSV) against the model alone (issue 7, pair 6). See :mod:`refdet_edge.benchmark`."""

from __future__ import annotations


def test_predict_vs_model(measure_pair):
    result = measure_pair("predict_vs_model")
    assert result.extra["candidate_fps"] > 0 and result.extra["baseline_fps"] > 0
