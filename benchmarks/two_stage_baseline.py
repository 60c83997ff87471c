"""Two-stage reference baseline: COCO YOLOv8n boxes re-ranked by pretrained-embedding similarity to the references.

The pipeline the fused detector must beat (issue 11). For each video of a dataset split:

1. its reference photos are embedded with timm ``mobilenetv2_100`` (ImageNet weights, timm's normalisation),
   each photo also as its mirror image and as its centre (less context); the target embedding is the
   normalised mean of those L2-normalised embeddings;
2. each frame goes through the COCO YOLOv8n detector, class-agnostic at a low confidence, keeping the
   ``--topk`` best boxes; each box, grown by ``--context`` of its size on every side, is cropped from the
   frame at full resolution, letterboxed to the embedder's input and embedded (all crops of a batch of
   frames in one pass);
3. each box scores ``cos ** (1 - alpha) * conf ** alpha``: ``cos`` its cosine to the target embedding (clipped
   to [0, 1]), ``conf`` the detector's confidence; ``alpha = 0`` is the cosine alone, ``1`` the detector alone.

The output is a RAW prediction file (challenge schema): every box of every frame with its ``score``, best first;
``refdet eval --predictions`` scores it (raw: each frame's best box over ``--conf``; online and offline: the
temporal post-processing of its boxes). ``alpha`` and the operating threshold are chosen on the val split
only: a val run without ``--alpha`` searches both for the best raw ST-IoU and writes them to
``<out stem>.selection.json``; a run on any other split takes them with ``--selection`` (or ``--alpha``).

    YOLO_OFFLINE=1 python benchmarks/two_stage_baseline.py --data /work/data/unseen --split val \\
        --out /work/data/baseline/raw_val.json
    YOLO_OFFLINE=1 python benchmarks/two_stage_baseline.py --data /work/data/unseen --split test \\
        --out /work/data/baseline/raw_test.json --selection /work/data/baseline/raw_val.selection.json
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from refdet_edge.data.annotations import DatasetError
from refdet_edge.data.dataset import DroneDataset, VideoRecord
from refdet_edge.data.video import FolderFrames, open_frames
from refdet_edge.evaluation.operating_point import best_threshold
from refdet_edge.evaluation.validator import positions
from refdet_edge.models.weights import WeightsError, read_state_dict
from refdet_edge.preprocess import preprocess_images, read_image_rgb

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
EMBED_MODEL = "mobilenetv2_100"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
CENTRE_SHARE = 2 / 3  # side share of a reference photo kept by its "centre" variant

# One frame's candidates: (N, 6) rows x1, y1, x2, y2 (original pixels), detector confidence, cosine.
Candidates = np.ndarray
Detector = Callable[[list[np.ndarray]], list[np.ndarray]]
ScoredBox = tuple[float, float, float, float, float]


class Embedder:
    """A timm image model as an embedder: RGB uint8 images of any size -> (N, D) L2-normalised embeddings.

    Images are letterboxed to ``size`` (grey padding, :mod:`refdet_edge.preprocess`), then normalised with
    ``mean``/``std`` and embedded ``batch_size`` at a time.
    """

    def __init__(
        self,
        model: nn.Module,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 64,
    ):
        self.model = model.eval()
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch, _ = preprocess_images(list(images[start : start + self.batch_size]), self.size)
            out.append(self.model((batch - self.mean) / self.std).float())
        if not out:
            return torch.zeros(0, 0)
        return nn.functional.normalize(torch.cat(out), dim=1)


def build_embedder(weights: Path | None, size: int | None = None, name: str = EMBED_MODEL) -> Embedder:
    """timm ``name`` (built with ``pad_type="same"``, no classifier) with the state dict ``weights`` (every
    tensor but the classifier's must match; ``None``: random weights), normalised as timm's pretrained config
    says, at input side ``size`` (default: the config's)."""
    import timm
    from timm.data import resolve_data_config

    model = timm.create_model(name, pretrained=False, pad_type="same", num_classes=0)
    if weights is not None:
        state = read_state_dict(Path(weights))
        result = model.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith("classifier.")]
        if result.missing_keys or unexpected:
            raise WeightsError(
                f"{weights}: not a timm {name} state dict ({len(result.missing_keys)} tensors missing, "
                f"{len(unexpected)} unexpected, e.g. {(result.missing_keys + unexpected)[:3]})"
            )
    config = resolve_data_config({}, model=model)
    return Embedder(model, size or config["input_size"][-1], config["mean"], config["std"])


def crop(image: np.ndarray, box: Sequence[float], context: float) -> np.ndarray:
    """``box`` (xyxy) grown by ``context`` times its size on every side, clipped to the image; at least 2 px."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    left, top = int(max(0, min(w - 2, np.floor(x1 - dx)))), int(max(0, min(h - 2, np.floor(y1 - dy))))
    right, bottom = int(min(w, max(left + 2, np.ceil(x2 + dx)))), int(min(h, max(top + 2, np.ceil(y2 + dy))))
    return image[top:bottom, left:right]


def reference_embedding(embedder: Embedder, references: Sequence[np.ndarray]) -> torch.Tensor:
    """One target's embedding (D,): the normalised mean over its photos, each as is, mirrored and its centre."""
    variants = []
    for image in references:
        h, w = image.shape[:2]
        ch, cw = max(2, round(h * CENTRE_SHARE)), max(2, round(w * CENTRE_SHARE))
        top, left = (h - ch) // 2, (w - cw) // 2
        variants += [image, image[:, ::-1], image[top : top + ch, left : left + cw]]
    return nn.functional.normalize(embedder(variants).mean(0), dim=0)


def box_cosines(
    embedder: Embedder,
    frames: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    target: torch.Tensor,
    context: float,
) -> list[np.ndarray]:
    """Cosine of every box's crop (grown by ``context``) to ``target``, per frame; one embedder pass."""
    crops = [
        crop(frame, box, context)
        for frame, frame_boxes in zip(frames, boxes, strict=True)
        for box in frame_boxes
    ]
    cosines = (embedder(crops) @ target).numpy() if crops else np.zeros(0)
    return np.split(cosines.astype(np.float64), np.cumsum([len(b) for b in boxes])[:-1])


def yolo_detector(weights: str | Path, imgsz: int, conf: float, topk: int, device: str = "cpu") -> Detector:
    """Class-agnostic ultralytics YOLO: RGB frames -> per frame (N, 5) ``x1, y1, x2, y2, conf`` in frame
    pixels, at most ``topk``, best first. ``weights``: a checkpoint, or a model yaml (random weights)."""
    from ultralytics import YOLO

    weights = Path(weights)
    if weights.suffix != ".yaml" and not weights.is_file():
        raise WeightsError(f"{weights}: no such YOLO weights file")
    try:
        model = YOLO(str(weights), task="detect")
    except Exception as err:
        raise WeightsError(f"{weights}: not an ultralytics YOLO checkpoint ({err})") from None

    def detect(frames: list[np.ndarray]) -> list[np.ndarray]:
        results = model.predict(
            [np.ascontiguousarray(f[..., ::-1]) for f in frames],  # ultralytics takes BGR arrays
            imgsz=imgsz,
            conf=conf,
            agnostic_nms=True,
            max_det=topk,
            device=device,
            verbose=False,
        )
        return [
            torch.cat([r.boxes.xyxy, r.boxes.conf[:, None]], dim=1).cpu().numpy().astype(np.float64)
            for r in results
        ]

    return detect


@dataclass(frozen=True)
class Settings:
    """How the baseline runs (recorded in the selection file)."""

    context: float = 0.25
    batch_size: int = 8
    limit: int | None = None  # first frames of each video's split only


def split_frames(video: VideoRecord, keep: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """The frames ``keep`` of ``video`` at full resolution, in order: only those files from a frames folder,
    a sequential decode of a video file."""
    source = open_frames(video.sample_dir, video.video_id)
    if isinstance(source, FolderFrames):
        for index in sorted(keep & source.files.keys()):
            yield index, read_image_rgb(source.files[index])
        return
    for index, frame in source.iter_frames():
        if index in keep and frame is not None:
            yield index, frame


def video_candidates(
    dataset: DroneDataset,
    video: VideoRecord,
    detector: Detector,
    embedder: Embedder,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> dict[int, Candidates]:
    """Every frame's candidates (see :data:`Candidates`) for ``video``'s own target, frames read at full
    resolution from the video's own files, in batches of ``settings.batch_size``."""
    target = reference_embedding(embedder, dataset.load_references(video))
    keep = set(video.frames[: settings.limit])
    out: dict[int, Candidates] = {}
    batch: list[tuple[int, np.ndarray]] = []

    def run() -> None:
        frames = [frame for _, frame in batch]
        proposals = detector(frames)
        cosines = box_cosines(embedder, frames, proposals, target, settings.context)
        for (index, _), dets, cos in zip(batch, proposals, cosines, strict=True):
            out[index] = np.concatenate([dets.reshape(-1, 5), cos[:, None]], axis=1)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for index, frame in split_frames(video, keep):
        batch.append((index, frame))
        if len(batch) >= settings.batch_size:
            run()
    if batch:
        run()
    return out


def combine(candidates: Candidates, alpha: float) -> np.ndarray:
    """Scores ``cos ** (1 - alpha) * conf ** alpha`` of a frame's candidates (cosine clipped to [0, 1])."""
    conf = np.clip(candidates[:, 4], 0.0, 1.0)
    cos = np.clip(candidates[:, 5], 0.0, 1.0)
    return cos ** (1.0 - alpha) * conf**alpha


def scored_boxes(candidates: dict[int, Candidates], alpha: float) -> dict[int, list[ScoredBox]]:
    """Each frame's boxes as ``(x1, y1, x2, y2, score)``, best first; frames without candidates left out."""
    out = {}
    for frame, cands in sorted(candidates.items()):
        scores = combine(cands, alpha)
        order = np.argsort(-scores, kind="stable")
        if len(order):
            out[frame] = [(*(float(v) for v in cands[i, :4]), float(scores[i])) for i in order]
    return out


def select(
    dataset: DroneDataset, candidates: dict[str, dict[int, Candidates]]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The ``alpha`` of :data:`ALPHAS` and operating threshold with the best mean raw ST-IoU over the
    dataset's videos (first wins a tie), the threshold chosen as training chooses its own
    (:func:`~refdet_edge.evaluation.operating_point.best_threshold`); also, per alpha, its best threshold and
    ST-IoU."""
    gt = {v.video_id: positions(v, v.boxes) for v in dataset.videos}
    frames = {v.video_id: len(v.frames) for v in dataset.videos}
    table = []
    for alpha in ALPHAS:
        scored = {
            v.video_id: positions(v, scored_boxes(candidates[v.video_id], alpha)) for v in dataset.videos
        }
        threshold, score = best_threshold(gt, scored, frames)
        table.append({"alpha": alpha, "score_threshold": threshold, "st_iou": score})
    chosen = max(table, key=lambda row: row["st_iou"])
    return chosen, table


def run_baseline(
    dataset: DroneDataset,
    detector: Detector,
    embedder: Embedder,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[int, Candidates]]:
    """Candidates of every frame of every video of ``dataset`` (video id -> frame -> candidates)."""
    return {
        v.video_id: video_candidates(dataset, v, detector, embedder, settings, progress)
        for v in dataset.videos
    }


def selection_path(out: Path) -> Path:
    return out.with_name(out.stem + ".selection.json")


def _read_selection(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not a readable selection file ({err})") from None
    chosen = data.get("chosen") if isinstance(data, dict) else None
    if not isinstance(chosen, dict) or not isinstance(chosen.get("alpha"), (int, float)):
        raise DatasetError(f"{path}: field 'chosen.alpha': missing (write it with a val run without --alpha)")
    if data.get("split") != "val":
        raise DatasetError(
            f"{path}: field 'split': {data.get('split')!r}, but a selection must come from val"
        )
    return chosen


EPILOG = """Examples:

\b
  YOLO_OFFLINE=1 python benchmarks/two_stage_baseline.py --data /work/data/unseen --split val \\
      --out /work/data/baseline/raw_val.json
  YOLO_OFFLINE=1 python benchmarks/two_stage_baseline.py --data /work/data/unseen --split test \\
      --out /work/data/baseline/raw_test.json --selection /work/data/baseline/raw_val.selection.json
  refdet eval --predictions /work/data/baseline/raw_test.json --data /work/data/unseen --split test \\
      --score-threshold T   (T: "chosen.score_threshold" of the selection file)
"""


@click.command(
    epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset root.")
@click.option("--split", type=click.Choice(["val", "test", "seen"]), default="val", show_default=True)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="RAW prediction file."
)
@click.option(
    "--yolo-weights",
    default=str(SHARED_WEIGHTS / "yolov8n-coco.pt"),
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ultralytics checkpoint (a model .yaml: random weights).",
)
@click.option(
    "--embed-weights",
    default=str(SHARED_WEIGHTS / "mobilenetv2_100-imagenet.safetensors"),
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"State dict of timm {EMBED_MODEL}.",
)
@click.option("--imgsz", default=640, show_default=True, type=click.IntRange(32), help="Detector input size.")
@click.option(
    "--embed-size", default=None, type=click.IntRange(32), help="Embedder input side.  [default: timm's]"
)
@click.option("--topk", default=10, show_default=True, type=click.IntRange(1), help="Boxes kept per frame.")
@click.option(
    "--conf", default=0.02, show_default=True, type=click.FloatRange(0, 1), help="Detector confidence."
)
@click.option(
    "--context", default=0.25, show_default=True, type=click.FloatRange(0), help="Crop margin per side."
)
@click.option("--alpha", type=click.FloatRange(0, 1), help="Weight of the detector confidence in the score.")
@click.option(
    "--selection",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take alpha from the selection file of a val run.",
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Frames per pass.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N frames of each video (quick runs).")
@click.option("--device", default="cpu", show_default=True, help="Device of the detector.")
def main(
    data: Path,
    split: str,
    out: Path,
    yolo_weights: Path,
    embed_weights: Path,
    imgsz: int,
    embed_size: int | None,
    topk: int,
    conf: float,
    context: float,
    alpha: float | None,
    selection: Path | None,
    batch_size: int,
    limit: int | None,
    device: str,
) -> None:
    """Run the two-stage baseline on a dataset split and write a RAW prediction file with a score per box.

    Without --alpha and --selection the split must be val: alpha and the operating threshold are then chosen
    for the best raw ST-IoU and written, with the figure of every alpha, to <out stem>.selection.json.
    """
    from tqdm import tqdm

    from refdet_edge.evaluation.metrics import save_predictions

    if alpha is not None and selection is not None:
        raise click.UsageError("give --alpha or --selection, not both")
    if alpha is None and selection is None and split != "val":
        raise click.UsageError(
            f"alpha is chosen on val only: for --split {split} give --selection <val out>.selection.json or --alpha"
        )
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    settings = Settings(context=context, batch_size=batch_size, limit=limit)
    try:
        chosen = _read_selection(selection) if selection is not None else None
        dataset = DroneDataset(data, split, check_references=False)
        embedder = build_embedder(embed_weights, embed_size)
        detector = yolo_detector(yolo_weights, imgsz, conf, topk, device)
        total = sum(len(v.frames[:limit]) for v in dataset.videos)
        with tqdm(total=total, unit="frame", desc=f"baseline {split}", dynamic_ncols=True) as bar:
            candidates = run_baseline(dataset, detector, embedder, settings, bar.update)
        table = None
        if chosen is None and alpha is None:
            chosen, table = select(dataset, candidates)
        alpha = chosen["alpha"] if alpha is None else alpha
        boxes = {vid: scored_boxes(cands, alpha) for vid, cands in candidates.items()}
        save_predictions(out, boxes, every_box=True)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    wall = time.perf_counter() - start
    record = {
        "data": str(data),
        "split": split,
        "predictions": str(out),
        "chosen": chosen or {"alpha": alpha},
        "alphas": table,
        "settings": {
            **asdict(settings),
            "imgsz": imgsz,
            "topk": topk,
            "conf": conf,
            "embed_size": embedder.size,
            "yolo_weights": str(yolo_weights),
            "embed_weights": str(embed_weights),
        },
        "frames": total,
        "wall_s": round(wall, 1),
    }
    if table is not None:
        selection_path(out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    click.echo(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
