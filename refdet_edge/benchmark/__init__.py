"""Side-by-side benchmarks: what the reference branch, feature extraction, triplet training and the predict
pipeline cost, each as the ratio of two sides measured in the same process at the same input size.

Pairs (stable keys, :data:`PAIR_KEYS`; ratio = candidate / baseline):

| key | baseline | candidate | target (issue 7) |
|---|---|---|---|
| ``detection_vs_yolov8n`` | plain YOLOv8n + NMS | this model, cached prototypes, + the same NMS | latency <= 1.25x |
| ``uncached_vs_cached`` | cached prototypes | support encoder every frame | latency >= 3x |
| ``features_vs_plain`` | ``return_features=False`` | ``return_features=True`` | latency <= 1.03x, memory <= 1.05x |
| ``onnx_detector_vs_yolov8n`` | YOLOv8n ONNX + NMS | ``detector.onnx`` + the same NMS | latency <= 1.25x |
| ``train_mixed_vs_detection`` | detection-only step | detection + triplet step | per sample <= 1.15x, memory <= 1.25x |
| ``predict_vs_model`` | model only | decode, predict_stream, write | frames/s >= 0.8x |

Modules: :mod:`.settings` (what every pair runs at, thread counts), :mod:`.measure` (timing, interleaved
rounds, per-round ratios), :mod:`.memory` (peak memory of one side in a fresh process), :mod:`.pairs` (the
registry) with the sides in :mod:`.inference`, :mod:`.onnx_pair`, :mod:`.training_pair` and
:mod:`.predict_pair`, :mod:`.run` (one pair, every pair), :mod:`.report` (results, table, JSON) and
:mod:`.leak` (resident memory over training).

This module imports nothing heavy: ``refdet bench --help`` reads :data:`PAIR_KEYS` without torch.
"""

PAIR_KEYS = (
    "detection_vs_yolov8n",
    "uncached_vs_cached",
    "features_vs_plain",
    "onnx_detector_vs_yolov8n",
    "train_mixed_vs_detection",
    "predict_vs_model",
)
