"""Parity of an export: ONNX Runtime against PyTorch on what a user of the export sees.

The inputs are real-looking: frames and reference photos of a dataset when one is given, else synthetic
aerial scenes (terrain, three pasted objects) and ground-level photos of those objects, from the generator of
:mod:`refdet_edge.data.synth`, letterboxed like video. Per (targets, batch) case the check compares

- the boxes each side keeps above the operating threshold and above 0.05 (threshold, per-target NMS,
  ``max_det``), each matched to a box of the same target on the other side at IoU >= :data:`IOU_TOLERANCE`;
  a box without a match is excused only when its score is within :data:`SCORE_TOLERANCE` of the threshold.
  NMS on both sides ranks the candidates by the PyTorch scores: scores equal up to float noise (the
  letterbox bars, flat terrain, saturated anchors) are then not ranked apart by that noise, which would
  keep other boxes of a cluster on each side. The scores themselves are compared next;
- the top :data:`TOP_K` scores of each target in each frame;
- the largest score difference over every anchor.

Each failed criterion is named with its figures in ``failures``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch
from torchvision.ops import batched_nms, box_iou

from refdet_edge.evaluation.metrics import DEFAULT_SCORE_THRESHOLD
from refdet_edge.export.metadata import ExportError
from refdet_edge.export.onnx_export import (
    BOXES,
    DETECTOR_FILE,
    IMAGES,
    REFERENCES,
    SCORES,
    SUPPORT_FILE,
    cpu_session,
    prototype_names,
)
from refdet_edge.models import RefDetModel
from refdet_edge.postprocess import FrameDetections
from refdet_edge.preprocess import ImageReadError, preprocess_images, read_image_rgb

PARITY_CASES = ((1, 1), (1, 2), (3, 1), (3, 2))  # (targets, batch)
PARITY_REFS = 3
THRESHOLDS = (DEFAULT_SCORE_THRESHOLD, 0.05)
NMS_IOU, MAX_DET, TOP_K = 0.5, 100, 5
SCORE_TOLERANCE = 1e-4
PROTOTYPE_TOLERANCE = 1e-3  # prototypes are O(1); a verifier's scores can hide a wrong support graph
IOU_TOLERANCE = 0.99
SCENE_SHAPE = (360, 640)  # (h, w) of a synthetic frame: 16:9 like drone video
SCENE_OBJECT_PX = (14.0, 48.0)  # long side of a pasted object in a synthetic frame


@dataclass(frozen=True)
class ParityInputs:
    """RGB uint8 frames (any size) and the reference photos of each target; ``source`` says where from."""

    frames: list[np.ndarray]
    references: list[list[np.ndarray]]
    source: str


def synthetic_inputs(seed: int = 1, frames: int = 2, targets: int = 3) -> ParityInputs:
    """Aerial scenes with ``targets`` distinct objects pasted in each (10-50 px, any angle) and
    :data:`PARITY_REFS` ground-level photos of each object."""
    from refdet_edge.data import synth

    rng = np.random.default_rng(seed)
    shapes = rng.choice(synth.SHAPES, targets, replace=False)
    colours = rng.choice(list(synth.COLOURS), targets + 1, replace=False)
    sprites = [
        synth.render_sprite(synth.ObjectSpec(str(shape), str(colours[i]), str(colours[i + 1]), str(pattern)))
        for i, (shape, pattern) in enumerate(zip(shapes, rng.choice(synth.PATTERNS, targets), strict=True))
    ]
    h, w = SCENE_SHAPE
    scenes = []
    for _ in range(frames):
        scene = synth.render_terrain(rng, SCENE_SHAPE)
        for sprite in sprites:
            size = rng.uniform(*SCENE_OBJECT_PX)
            matrix = cv2.getRotationMatrix2D(
                (synth.SPRITE / 2, synth.SPRITE / 2), rng.uniform(0, 360), size / synth.SPRITE
            )
            matrix[:, 2] += rng.uniform((0.1 * w, 0.1 * h), (0.9 * w, 0.9 * h)) - synth.SPRITE / 2
            synth.paste(scene, sprite, matrix)
        scenes.append(scene)
    references = [[synth.render_reference(rng, sprite) for _ in range(PARITY_REFS)] for sprite in sprites]
    return ParityInputs(scenes, references, f"synthetic aerial scenes (seed {seed})")


def dataset_inputs(root: str | Path, frames: int = 2, targets: int = 3) -> ParityInputs:
    """``frames`` frames spread over a dataset's ``samples/*/frames/*.jpg`` and the reference photos of up
    to ``targets`` of its videos; a folder or file that does not fit raises :class:`ExportError`."""
    from refdet_edge.export.calibration import dataset_frames

    picks = dataset_frames(root)
    videos = list(dict.fromkeys(p.references for p in picks))[:targets]
    chosen = [picks[i] for i in np.linspace(0, len(picks) - 1, frames).round().astype(int)]
    try:
        images = [read_image_rgb(p.frame) for p in chosen]
        references = [[read_image_rgb(path) for path in refs] for refs in videos]
    except ImageReadError as err:
        raise ExportError(str(err)) from None
    return ParityInputs(images, references, f"frames and reference photos of {root}")


def detections(
    boxes: torch.Tensor, scores: torch.Tensor, rank: torch.Tensor, conf: float
) -> list[FrameDetections]:
    """Per frame: the (anchor, target) pairs of ``scores`` over ``conf``, per-target NMS with the candidates
    ranked by ``rank`` (same shape as ``scores``), the :data:`MAX_DET` best; scores of ``scores``."""
    results = []
    for i in range(boxes.shape[0]):
        anchor, label = (scores[i] > conf).nonzero(as_tuple=True)
        keep = batched_nms(boxes[i, anchor], rank[i, anchor, label], label, NMS_IOU)[:MAX_DET]
        results.append(FrameDetections(boxes[i, anchor][keep], scores[i, anchor, label][keep], label[keep]))
    return results


@dataclass(frozen=True)
class _Match:
    matched: int
    excused: int
    unmatched: int
    min_iou: float | None


def _match(a: FrameDetections, b: FrameDetections, conf: float) -> _Match:
    """Each box of ``a`` against the boxes of ``b`` (see the module docstring)."""
    matched = excused = unmatched = 0
    ious: list[float] = []
    for box, score, label in zip(a.boxes, a.scores, a.labels, strict=True):
        same = b.boxes[b.labels == label]
        best = float(box_iou(box[None], same).max()) if len(same) else 0.0
        if best >= IOU_TOLERANCE:
            matched += 1
            ious.append(best)
        elif float(score) < conf + SCORE_TOLERANCE:
            excused += 1
        else:
            unmatched += 1
    return _Match(matched, excused, unmatched, min(ious) if ious else None)


def compare_boxes(reference: list[FrameDetections], export: list[FrameDetections], conf: float) -> dict:
    """Boxes both sides keep above ``conf``, matched both ways over every frame."""
    both = [_match(r, e, conf) for r, e in zip(reference, export, strict=True)]
    both += [_match(e, r, conf) for r, e in zip(reference, export, strict=True)]
    ious = [m.min_iou for m in both if m.min_iou is not None]
    return {
        "conf": conf,
        "reference_boxes": sum(len(d) for d in reference),
        "export_boxes": sum(len(d) for d in export),
        "matched": sum(m.matched for m in both),
        "excused": sum(m.excused for m in both),
        "unmatched": sum(m.unmatched for m in both),
        "min_iou": min(ious) if ious else None,
    }


def compare_outputs(
    boxes_ref: torch.Tensor, scores_ref: torch.Tensor, boxes_exp: torch.Tensor, scores_exp: torch.Tensor
) -> dict:
    """The figures of one case, a reference side (PyTorch) against an export (ONNX Runtime): score and box
    differences over every anchor, the reference's top score of each target, the largest difference of the
    top :data:`TOP_K` scores of a target in a frame, and the boxes above each of :data:`THRESHOLDS`."""
    k = min(TOP_K, scores_ref.shape[1])
    top_ref = scores_ref.topk(k, dim=1).values  # (B, k, N), sorted
    top_exp = scores_exp.topk(k, dim=1).values
    return {
        "score_max_abs_diff": float((scores_exp - scores_ref).abs().max()),
        "box_max_abs_diff": float((boxes_exp - boxes_ref).abs().max()),
        "top_scores": [round(float(s), 4) for s in top_ref[:, 0].amax(0)],
        "top_score_max_abs_diff": float((top_exp - top_ref).abs().max()),
        "thresholds": [
            compare_boxes(
                detections(boxes_ref, scores_ref, scores_ref, conf),
                detections(boxes_exp, scores_exp, scores_ref, conf),
                conf,
            )
            for conf in THRESHOLDS
        ],
    }


def case_failures(case: dict) -> list[str]:
    """One line per failed criterion of a case, with its figures."""
    name = f"targets={case['targets']} batch={case['batch']}"
    failures = []
    if not case["score_max_abs_diff"] < SCORE_TOLERANCE:
        failures.append(
            f"{name}: score max |diff| {case['score_max_abs_diff']:.2e} (limit {SCORE_TOLERANCE:.0e})"
        )
    if not case["top_score_max_abs_diff"] < SCORE_TOLERANCE:
        failures.append(
            f"{name}: top-{TOP_K} scores differ by {case['top_score_max_abs_diff']:.2e} (limit {SCORE_TOLERANCE:.0e})"
        )
    for t in case["thresholds"]:
        if t["unmatched"]:
            failures.append(
                f"{name} conf {t['conf']}: {t['unmatched']} box(es) without a match at IoU >= {IOU_TOLERANCE} "
                f"(PyTorch {t['reference_boxes']} boxes, ONNX Runtime {t['export_boxes']})"
            )
    return failures


def _references(inputs: ParityInputs, n: int, size: int) -> torch.Tensor:
    """(n, PARITY_REFS, 3, size, size): target i takes the photos of ``inputs.references[i]`` (cycled)."""
    targets = [inputs.references[i % len(inputs.references)] for i in range(n)]
    return torch.stack(
        [preprocess_images([t[k % len(t)] for k in range(PARITY_REFS)], size)[0] for t in targets]
    )


def check_parity(model: RefDetModel, out_dir: Path, imgsz: int, inputs: ParityInputs | None = None) -> dict:
    """ONNX Runtime against PyTorch on ``inputs`` (default: :func:`synthetic_inputs`), never the export's
    example inputs: both sides encode the references with their own support encoder, and each detector uses
    its own prototypes. Returns the figures per case, ``failures`` and ``passed``."""
    inputs = inputs or synthetic_inputs()
    model = model.eval()
    support, detector = cpu_session(out_dir / SUPPORT_FILE), cpu_session(out_dir / DETECTOR_FILE)
    names = prototype_names(model)
    cases, proto_diff = [], 0.0
    for n, b in PARITY_CASES:
        refs = _references(inputs, n, model.config.support_size)
        frames, _ = preprocess_images([inputs.frames[i % len(inputs.frames)] for i in range(b)], imgsz)
        with torch.no_grad():
            protos = model.detector_inputs(model.encode_references(refs))
            out = model.detect(frames, protos)
        protos_ort = support.run(list(names), {REFERENCES: refs.numpy()})
        proto_diff = max(
            proto_diff, *(float(np.abs(a - p.numpy()).max()) for a, p in zip(protos_ort, protos, strict=True))
        )
        feeds = {IMAGES: frames.numpy(), **dict(zip(names, protos_ort, strict=True))}
        boxes_ort, scores_ort = (torch.from_numpy(x) for x in detector.run([BOXES, SCORES], feeds))
        case = {"targets": n, "batch": b, "refs": PARITY_REFS}
        case.update(compare_outputs(out["boxes"], out["pred_scores"].sigmoid(), boxes_ort, scores_ort))
        cases.append(case)
    failures = [line for case in cases for line in case_failures(case)]
    if not proto_diff < PROTOTYPE_TOLERANCE:
        failures.append(f"prototypes: max |diff| {proto_diff:.2e} (limit {PROTOTYPE_TOLERANCE:.0e})")
    return {
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider vs torch {torch.__version__} CPU, fp32",
        "inputs": inputs.source,
        "sides": {"reference": "PyTorch", "export": "ONNX Runtime"},
        "references": f"K={PARITY_REFS} per target, not the export's example inputs",
        "nms": {"conf": list(THRESHOLDS), "iou": NMS_IOU, "max_det": MAX_DET, "ranked_by": "PyTorch scores"},
        "tolerance": {
            "score_max_abs_diff": SCORE_TOLERANCE,
            "prototype_max_abs_diff": PROTOTYPE_TOLERANCE,
            "box_match_iou": IOU_TOLERANCE,
            "top_k": TOP_K,
        },
        "prototype_max_abs_diff": proto_diff,
        "cases": cases,
        "failures": failures,
        "passed": not failures,
    }
