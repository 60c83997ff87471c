"""Size of the model per module and cost of its two paths, as ``refdet info`` prints them."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from refdet_edge.models.refdet import RefDetModel

PER_FRAME_MODULES = ("backbone", "fusion", "head")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _gflops(fn, *args) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def model_summary(model: RefDetModel, num_refs: int = 3) -> dict:
    """Parameters per module, and GFLOPs (2 x multiply-accumulates, as ultralytics counts them) of the
    per-frame path (one query frame at ``imgsz`` against one target, its verification included) and of the
    support path (the chosen
    encoder and the projector on one target's ``num_refs`` reference images at ``support_size``).

    The siamese encoder has no parameters of its own: ``support_path.shared_params`` counts the backbone
    weights it runs, which ``params`` and ``total_params`` count once, under ``backbone``.
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    query = torch.zeros(1, 3, cfg.input_size, cfg.input_size)
    refs = torch.zeros(1, num_refs, 3, cfg.support_size, cfg.support_size)
    with torch.no_grad():
        inputs = model.detector_inputs(model.encode_references(refs))
    per_frame = _gflops(model.detect, query, inputs)
    support = _gflops(model.encode_references, refs)
    model.train(was_training)
    modules = {name: _params(mod) for name, mod in model.named_children()}
    shared = modules["backbone"] if cfg.support_encoder == "siamese" else 0
    return {
        "imgsz": cfg.imgsz,
        "input_size": cfg.input_size,
        "support_size": cfg.support_size,
        "num_refs": num_refs,
        "params": modules,
        "per_frame": {  # a verifying model runs its support encoder on every frame's candidates too
            "params": sum(modules[m] for m in PER_FRAME_MODULES)
            + (modules["support"] if cfg.verify_topk else 0),
            "gflops": per_frame,
        },
        "support_path": {
            "encoder": cfg.support_encoder,
            "params": modules["support"] + modules["projector"],
            "shared_params": shared,
            "gflops": support,
        },
        "verify_topk": cfg.verify_topk,
        "total_params": _params(model),
    }


def yolov8n_summary(imgsz: int = 640) -> dict:
    """Parameters and GFLOPs of plain YOLOv8n (the ultralytics ``DetectionModel`` of ``yolov8n.yaml``, 80
    classes, random weights) on one ``imgsz`` frame, counted as :func:`model_summary` counts."""
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolov8n.yaml", verbose=False).eval()
    return {"params": _params(net), "gflops": _gflops(net, torch.zeros(1, 3, imgsz, imgsz))}
