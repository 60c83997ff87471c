"""GPU check of the export (issue 6), for a machine with a CUDA GPU and TensorRT 10.x; installs nothing.

Exports a model (``--weights`` checkpoint, else a random one at the default sizes), builds the FP16 engines,
compares TensorRT with ONNX Runtime (CPU, fp32) on the parity check's synthetic aerial scenes and reference
photos (1 and 3 targets, batch 1 and 2; the figures of :func:`refdet_edge.export.parity.compare_outputs`, with
ONNX Runtime as the reference side), and measures median latencies. Prints one JSON object.

    YOLO_OFFLINE=1 python benchmarks/gpu_check.py --out /tmp/gpu_check [--weights best.pt] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import torch

from refdet_edge import runtime
from refdet_edge.export.metadata import write_metadata
from refdet_edge.export.parity import compare_outputs, synthetic_inputs
from refdet_edge.export.pipeline import export_model
from refdet_edge.export.tensorrt import build_engines
from refdet_edge.models import create_model, load_model


def median_ms(fn, runs: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.weights) if args.weights else create_model(imgsz=args.imgsz)
    started = time.perf_counter()
    metadata = export_model(model, args.out, args.imgsz, source=args.weights or "random weights")
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    metadata["engines"] = build_engines(args.out, metadata, metadata["profiles"], "fp16")
    build_s = time.perf_counter() - started
    write_metadata(args.out, metadata)

    trt_rt, onnx_rt = runtime.load(args.out, "trt"), runtime.load(args.out, "onnx", device="cpu")
    torch_rt = runtime.load(model, "torch", device="cuda", imgsz=args.imgsz)
    inputs = synthetic_inputs()
    frames, refs = inputs.frames, inputs.references

    parity = []
    for n in (1, 3):
        for rt in (trt_rt, onnx_rt):
            rt.set_references(refs[:n])
        proto_diff = max(
            float((a - b).abs().max()) for a, b in zip(trt_rt.prototypes, onnx_rt.prototypes, strict=True)
        )
        for size in (1, 2):
            batch, _ = onnx_rt.preprocess(frames[:size])
            (boxes_t, scores_t), (boxes_o, scores_o) = trt_rt.infer(batch), onnx_rt.infer(batch)
            figures = compare_outputs(boxes_o, scores_o, boxes_t.cpu(), scores_t.cpu())
            parity.append({"targets": n, "batch": size, "prototype_max_abs_diff": proto_diff, **figures})

    for rt in (trt_rt, torch_rt):
        rt.set_references(refs[0])
    batch, _ = trt_rt.preprocess(frames[:1])
    video_frame = cv2.resize(frames[0], (1280, 720))
    gpu_batch = batch.cuda()
    latency = {
        "trt_fp16_detector_ms": median_ms(lambda: trt_rt.infer(gpu_batch), args.runs),
        "torch_fp32_detector_ms": median_ms(lambda: torch_rt.infer(gpu_batch), args.runs),
        "trt_fp16_support_3_refs_ms": median_ms(
            lambda: trt_rt.set_references(refs[0]), max(args.runs // 5, 5)
        ),
        "trt_end_to_end_1280x720_ms": median_ms(lambda: trt_rt([video_frame]), args.runs),
    }
    latency["trt_end_to_end_fps"] = 1e3 / latency["trt_end_to_end_1280x720_ms"]
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(),
                "tensorrt": metadata["engines"]["tensorrt_version"],
                "torch": torch.__version__,
                "imgsz": args.imgsz,
                "support_size": metadata["support_size"],
                "export_s": round(export_s, 1),
                "engine_build_s": round(build_s, 1),
                "onnx_vs_torch_parity_passed": metadata["parity"]["passed"],
                "trt_fp16_vs_onnxruntime": parity,
                "latency": latency,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
