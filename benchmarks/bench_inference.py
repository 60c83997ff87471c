"""Per-frame inference in PyTorch: this model against plain YOLOv8n, uncached against cached references,
``return_features=True`` against ``False`` (issue 7, pairs 1-3). See :mod:`refdet_edge.benchmark`."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("key", ["detection_vs_yolov8n", "uncached_vs_cached", "features_vs_plain"])
def test_inference_pair(measure_pair, key):
    result = measure_pair(key)
    assert result.latency_ratio is not None and result.memory_ratio is not None
