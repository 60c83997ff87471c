"""Episodic detection dataset: N-way, K-shot episodes with Q query frames each.

An episode picks N targets (videos with annotated frames in the split) and K reference photos of each (drawn
with replacement when a target has fewer than K). Its Q queries are:

- positive: an annotated frame of one of the N targets (the first query always is one);
- background: a frame without any box, from any video of the split (``background_prob``);
- mismatched: an annotated frame of a target that is *not* among the N (``mismatch_prob``); the right answer is
  "nothing here", since its object has no reference in the episode.

Query frames come from the resized frame cache, are augmented (:class:`~refdet_edge.data.augment.Augmenter`)
and letterboxed to ``imgsz`` with :func:`refdet_edge.preprocess.letterbox` (or, with ``crop``, cut to a
``crop`` x ``crop`` window at the same scale: small targets keep their size while a training step costs a
fraction of a full frame); references are augmented and
letterboxed to ``support_size``; both become float [0, 1] tensors with :func:`refdet_edge.preprocess.to_tensor`.
Every draw comes from ``numpy.random.default_rng([seed, epoch, index])``, so an item is the same in any worker;
call :meth:`set_epoch` before each epoch for new episodes (with non-persistent DataLoader workers).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from refdet_edge.data.augment import Augmenter
from refdet_edge.data.dataset import DroneDataset, VideoRecord, read_reference
from refdet_edge.preprocess import PAD_VALUE, letterbox, to_tensor


def sample_seed(rng: np.random.Generator) -> int:
    """A seed for one augmentation call, drawn from the item's generator."""
    return int(rng.integers(2**31))


def crop_square(image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """A ``side`` x ``side`` crop centred on (cx, cy); parts outside the image are grey (PAD_VALUE)."""
    h, w = image.shape[:2]
    side = max(1, round(side))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    out = np.full((side, side, 3), PAD_VALUE, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


class ReferenceSampler:
    """Draws K augmented, letterboxed reference photos of a target."""

    def __init__(self, support_size: int, augment: Augmenter | None):
        self.support_size = support_size
        self.augment = augment

    def __call__(self, video: VideoRecord, k: int, rng: np.random.Generator) -> torch.Tensor:
        """(k, 3, S, S) float tensor."""
        picks = rng.choice(len(video.references), size=k, replace=len(video.references) < k)
        return torch.stack([self.one(video, int(i), rng) for i in picks])

    def one(self, video: VideoRecord, index: int, rng: np.random.Generator) -> torch.Tensor:
        image = read_reference(video.references[index], video.video_id)
        if self.augment is not None:
            image, _ = self.augment(image, np.zeros((0, 4), np.float32), sample_seed(rng))
        return to_tensor(letterbox(image, self.support_size)[0])


class EpisodicDataset(torch.utils.data.Dataset):
    """Episodes over a :class:`DroneDataset`; see the module docstring for what an episode holds.

    Item (a dict):
        ``kind``: ``"detection"``;
        ``query_images``: float32 (Q, 3, imgsz, imgsz) in [0, 1];
        ``query_boxes``: float32 (Q, 4) xyxy in model-input pixels of the query's object (zeros when none);
        ``query_labels``: int64 (Q,) global label of the object in the query, -1 for background frames;
        ``support_images``: float32 (N, K, 3, S, S); ``support_labels``: int64 (N,) global labels.
    :class:`~refdet_edge.data.collate.RefDetCollator` turns items into the detection batch.
    """

    def __init__(
        self,
        dataset: DroneDataset,
        n_way: int = 2,
        k_shot: int = 3,
        n_query: int = 4,
        imgsz: int = 640,
        support_size: int = 224,
        background_prob: float = 0.35,
        mismatch_prob: float = 0.2,
        episodes: int | None = None,
        augment: bool = True,
        seed: int = 0,
        crop: int | None = None,
    ):
        if n_way < 1 or k_shot < 1 or n_query < 1:
            raise ValueError(f"need n_way, k_shot, n_query >= 1, got {n_way}, {k_shot}, {n_query}")
        if not (0 <= background_prob and 0 <= mismatch_prob and background_prob + mismatch_prob <= 1):
            raise ValueError(f"need probabilities with a sum <= 1, got {background_prob}, {mismatch_prob}")
        self.dataset = dataset
        self.targets = [v for v in dataset.videos if v.positive_frames]
        if not self.targets:
            raise ValueError(
                f"{dataset.root} ({dataset.split or 'all'} split): no video has an annotated frame"
            )
        self.backgrounds = [v for v in dataset.videos if v.background_frames]
        self.n_way = min(n_way, len(self.targets))
        self.k_shot, self.n_query, self.imgsz = k_shot, n_query, imgsz
        self.background_prob = background_prob if self.backgrounds else 0.0
        self.mismatch_prob = mismatch_prob if len(self.targets) > self.n_way else 0.0
        self.episodes = episodes or max(1, math.ceil(dataset.num_frames / n_query))
        self.augment = Augmenter() if augment else None
        self.references = ReferenceSampler(support_size, self.augment)
        self.seed, self.epoch = seed, 0
        self.crop = crop

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.episodes

    def query(
        self, video: VideoRecord, frame: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray]:
        """One letterboxed query frame and its box in model-input pixels (zeros when it has none)."""
        image, box = self.dataset.load_frame(video, frame)
        boxes = np.zeros((0, 4), np.float32) if box is None else box[None]
        if self.augment is not None:
            image, boxes = self.augment(image, boxes, sample_seed(rng))
        window_rng = np.random.default_rng(sample_seed(rng))  # drawn with or without crop: same episodes
        if self.crop is not None:
            image, boxes = self.window(image, boxes, window_rng)
        boxed, info = letterbox(image, self.crop or self.imgsz)
        out = info.to_input(boxes.astype(np.float32)) if len(boxes) else np.zeros((1, 4), np.float32)
        return to_tensor(boxed), out[0]

    def window(
        self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A ``crop`` x ``crop`` window of the frame, at the frame's scale: anywhere on a frame without a box,
        else placed at random so that it holds the box (as much of it as fits)."""
        h, w = image.shape[:2]
        c = self.crop
        if len(boxes):
            x1, y1, x2, y2 = boxes[0]
            x0 = rng.uniform(min(x2 - c, x1), max(x2 - c, x1))
            y0 = rng.uniform(min(y2 - c, y1), max(y2 - c, y1))
        else:
            x0, y0 = rng.uniform(0, max(w - c, 0)), rng.uniform(0, max(h - c, 0))
        x0, y0 = int(x0), int(y0)
        shifted = np.clip(boxes - np.array([x0, y0, x0, y0], np.float32), 0, c)
        return crop_square(image, x0 + c / 2, y0 + c / 2, c), shifted

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = [self.targets[i] for i in rng.choice(len(self.targets), self.n_way, replace=False)]
        support_ids = {v.label for v in chosen}
        others = [v for v in self.targets if v.label not in support_ids]
        images, boxes, labels = [], [], []
        for q in range(self.n_query):
            draw = rng.random()
            if q > 0 and draw < self.background_prob:
                video = self.backgrounds[rng.integers(len(self.backgrounds))]
                frame, label = int(rng.choice(video.background_frames)), -1
            else:
                mismatched = q > 0 and draw < self.background_prob + self.mismatch_prob
                pool = others if mismatched else chosen
                video = pool[rng.integers(len(pool))]
                frame, label = int(rng.choice(video.positive_frames)), video.label
            image, box = self.query(video, frame, rng)
            images.append(image)
            boxes.append(box)
            labels.append(label)
        return {
            "kind": "detection",
            "query_images": torch.stack(images),
            "query_boxes": torch.from_numpy(np.stack(boxes)),
            "query_labels": torch.tensor(labels, dtype=torch.int64),
            "support_images": torch.stack([self.references(v, self.k_shot, rng) for v in chosen]),
            "support_labels": torch.tensor([v.label for v in chosen], dtype=torch.int64),
        }
