"""ONNX Runtime: plain YOLOv8n exported to ONNX against this model's ``detector.onnx``, both followed by the
same NMS (issue 7, pair 4). See :mod:`refdet_edge.benchmark`."""

from __future__ import annotations


def test_onnx_detector_vs_yolov8n(measure_pair):
    result = measure_pair("onnx_detector_vs_yolov8n")
    assert result.latency_ratio is not None
