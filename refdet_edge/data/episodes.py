"""Episodic detection dataset: N-way, K-shot episodes with Q query frames each.

An episode picks N targets (videos with annotated frames in the split) and K reference photos of each (drawn
with replacement when a target has fewer than K). Its Q queries are:

- positive: an annotated frame of one of the N targets (the first query always is one);
- background: a frame without any box, from any video of the split (``background_prob``);
- mismatched: an annotated frame of a target that is *not* among the N (``mismatch_prob``); the right answer is
  "nothing here", since its object has no reference in the episode.

No query shows a target of the episode that its label does not name: a frame spliced in from a target's video,
or a frame of a twin video (``VideoRecord.shows``), is never drawn for an episode with that target's references,
and twins are never in one episode.

Query frames come from the resized frame cache, are augmented (:class:`~refdet_edge.data.augment.Augmenter`)
and letterboxed to ``imgsz`` with :func:`refdet_edge.preprocess.letterbox`, as at inference (the grey bars of a
16:9 frame included). With ``crop`` a ``crop`` x ``crop`` window is then cut from that letterboxed frame (small
targets keep their size while a step costs a fraction of a full frame). A window of a frame with a box holds
the box and is placed uniformly among the positions that do; a window of a background frame is placed the same
way around a box of the same video (another of its frames), so that windows of both kinds hold letterbox bars
alike and the grey never tells them apart. References are augmented and letterboxed to ``support_size``; both
become float [0, 1] tensors with :func:`refdet_edge.preprocess.to_tensor`.
Every draw comes from ``numpy.random.default_rng([seed, epoch, index])``, so an item is the same in any worker;
call :meth:`set_epoch` before each epoch for new episodes (with non-persistent DataLoader workers).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from refdet_edge.data.augment import Augmenter
from refdet_edge.data.dataset import DroneDataset, VideoRecord, read_reference
from refdet_edge.preprocess import LetterboxInfo, letterbox, to_tensor

MAX_TRIES = 20  # random draws before a query falls back to listing the frames that qualify


def sample_seed(rng: np.random.Generator) -> int:
    """A seed for one augmentation call, drawn from the item's generator."""
    return int(rng.integers(2**31))


def window_start(rng: np.random.Generator, lo: float, hi: float, side: int, limit: int) -> float:
    """Start of a ``side``-long window inside ``[0, limit)`` that holds ``[lo, hi]``, uniform over the starts
    that do; centred on the span when it is longer than the window, anywhere when ``lo`` is None."""
    if lo is None:
        return rng.uniform(0, limit - side)
    first, last = max(0.0, hi - side), min(float(limit - side), lo)
    if first > last:
        return float(np.clip((lo + hi - side) / 2, 0, limit - side))
    return rng.uniform(first, last)


def cut_window(
    image: np.ndarray, boxes: np.ndarray, anchor: np.ndarray | None, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` window of ``image`` (which is at least that large) placed to hold ``anchor`` (a
    box, or None: anywhere), and ``boxes`` shifted into it and clipped to it."""
    h, w = image.shape[:2]
    x_span = (None, None) if anchor is None else (anchor[0], anchor[2])
    y_span = (None, None) if anchor is None else (anchor[1], anchor[3])
    x0 = int(window_start(rng, *x_span, side, w))
    y0 = int(window_start(rng, *y_span, side, h))
    shifted = np.clip(boxes - np.array([x0, y0, x0, y0], np.float32), 0, side)
    return image[y0 : y0 + side, x0 : x0 + side], shifted


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
        """One letterboxed query frame (or crop window) and its box in model-input pixels (zeros when none)."""
        image, box = self.dataset.load_frame(video, frame)
        boxes = np.zeros((0, 4), np.float32) if box is None else box[None]
        if self.augment is not None:
            image, boxes = self.augment(image, boxes, sample_seed(rng))
        window_rng = np.random.default_rng(sample_seed(rng))  # drawn with or without crop: same episodes
        boxed, info = letterbox(image, self.imgsz)
        boxes = info.to_input(boxes.astype(np.float32)) if len(boxes) else boxes
        if self.crop is not None:
            anchor = boxes[0] if len(boxes) else self.stand_in_box(video, info, window_rng)
            boxed, boxes = cut_window(boxed, boxes, anchor, self.crop, window_rng)
        return to_tensor(np.ascontiguousarray(boxed)), boxes[0] if len(boxes) else np.zeros(4, np.float32)

    def stand_in_box(
        self, video: VideoRecord, info: LetterboxInfo, rng: np.random.Generator
    ) -> np.ndarray | None:
        """A box of another frame of ``video`` in model-input pixels, mirrored as often as augmentation mirrors
        real boxes: a background frame's window is placed around it, as a positive's is around its box. None
        when the video has no box."""
        frames = video.positive_frames or tuple(video.boxes)
        if not frames:
            return None
        box = np.asarray(video.boxes[frames[int(rng.integers(len(frames)))]], np.float32) * video.cached.scale
        if self.augment is not None and rng.random() < self.augment.flip_p:
            width = info.orig_shape[1]
            box = np.array([width - box[2], box[1], width - box[0], box[3]], np.float32)
        return info.to_input(box)

    def pick(
        self,
        videos: list[VideoRecord],
        frames_of: str,
        support: frozenset[int],
        rng: np.random.Generator,
    ) -> tuple[VideoRecord, int] | None:
        """A random video of ``videos`` and one of its ``frames_of`` frames (``"positive_frames"`` or
        ``"background_frames"``) that shows no target of ``support`` other than its own; None if none does."""
        for _ in range(MAX_TRIES):
            video = videos[int(rng.integers(len(videos)))]
            frame = int(rng.choice(getattr(video, frames_of)))
            if video.clean_for(frame, support):
                return video, frame
        clean = [(v, f) for v in videos for f in getattr(v, frames_of) if v.clean_for(f, support)]
        return clean[int(rng.integers(len(clean)))] if clean else None

    def choose_targets(self, rng: np.random.Generator) -> list[VideoRecord]:
        """The episode's N targets, never two twins (videos of the same frames) together."""
        twins = self.dataset.twins
        if not any(v.label in twins for v in self.targets):
            return [self.targets[i] for i in rng.choice(len(self.targets), self.n_way, replace=False)]
        chosen: list[VideoRecord] = []
        for i in rng.permutation(len(self.targets)):
            video = self.targets[int(i)]
            if not any(video.label in twins.get(c.label, ()) for c in chosen):
                chosen.append(video)
            if len(chosen) == self.n_way:
                break
        return chosen

    def queries(
        self, chosen: list[VideoRecord], rng: np.random.Generator
    ) -> list[tuple[VideoRecord, int, int]]:
        """``(video, frame, label)`` of each query of an episode whose references are those of ``chosen``."""
        support = frozenset(v.label for v in chosen)
        blocked = support | {t for v in chosen for t in self.dataset.twins.get(v.label, ())}
        others = [v for v in self.targets if v.label not in blocked]
        picks = []
        for q in range(self.n_query):
            draw = rng.random()
            pick, label = None, None
            if q > 0 and draw < self.background_prob:
                pick, label = self.pick(self.backgrounds, "background_frames", support, rng), -1
            elif q > 0 and draw < self.background_prob + self.mismatch_prob and others:
                pick = self.pick(others, "positive_frames", support, rng)
            if pick is None:
                pick = self.pick(chosen, "positive_frames", support, rng)
                if pick is None:
                    raise ValueError(
                        f"{self.dataset.root}: every annotated frame of targets {sorted(support)} shows another "
                        "of them (see sources.json)"
                    )
            video, frame = pick
            picks.append((video, frame, video.label if label is None else label))
        return picks

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = self.choose_targets(rng)
        images, boxes, labels = [], [], []
        for video, frame, label in self.queries(chosen, rng):
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
