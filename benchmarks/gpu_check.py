"""GPU check of the export (issue 6), for a machine with a CUDA GPU and TensorRT 10.x; installs nothing.

Exports a model (``--weights`` checkpoint, else a random one at the default sizes), builds the FP16 engines,
compares TensorRT with ONNX Runtime (CPU, fp32) on the same frames and references (1 and 3 targets, batch 1
and 2), and measures median latencies. Prints one JSON object.

    YOLO_OFFLINE=1 python benchmarks/gpu_check.py --out /tmp/gpu_check [--weights best.pt] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from refdet_edge import runtime
from refdet_edge.export.metadata import write_metadata
from refdet_edge.export.onnx_export import match_boxes
from refdet_edge.export.pipeline import export_model
from refdet_edge.export.tensorrt import build_engines
from refdet_edge.models import create_model, load_model
from refdet_edge.postprocess import postprocess


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
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(2)]
    refs = [[rng.integers(0, 256, (160, 120, 3), dtype=np.uint8) for _ in range(3)] for _ in range(3)]

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
            boxes_t, scores_t = boxes_t.cpu(), scores_t.cpu()
            conf = float(scores_o.flatten().topk(100).values[-1])  # compare the 100 best candidates
            det_t = postprocess(boxes_t, scores_t, None, conf, 0.5, 100)
            det_o = postprocess(boxes_o, scores_o, None, conf, 0.5, 100)
            parity.append(
                {
                    "targets": n,
                    "batch": size,
                    "prototype_max_abs_diff": proto_diff,
                    "score_max_abs_diff": float((scores_t - scores_o).abs().max()),
                    "boxes_after_nms": [[len(x) for x in det_t], [len(x) for x in det_o]],
                    "box_min_iou": min(
                        match_boxes(o.boxes, t.boxes, o.labels, t.labels)
                        for t, o in zip(det_t, det_o, strict=True)
                    ),
                }
            )

    for rt in (trt_rt, torch_rt):
        rt.set_references(refs[0])
    batch, _ = trt_rt.preprocess(frames[:1])
    gpu_batch = batch.cuda()
    latency = {
        "trt_fp16_detector_ms": median_ms(lambda: trt_rt.infer(gpu_batch), args.runs),
        "torch_fp32_detector_ms": median_ms(lambda: torch_rt.infer(gpu_batch), args.runs),
        "trt_fp16_support_3_refs_ms": median_ms(
            lambda: trt_rt.set_references(refs[0]), max(args.runs // 5, 5)
        ),
        "trt_end_to_end_1280x720_ms": median_ms(lambda: trt_rt(frames[:1]), args.runs),
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
