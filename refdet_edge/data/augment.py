"""Light, seeded augmentation of query frames and reference photos with ultralytics' augment module.

``RandomHSV`` (small hue shift, so a red target stays red and still matches its references, with stronger
saturation and brightness changes) and a horizontal ``RandomFlip`` that moves the boxes with the image. The
ultralytics transforms draw from the global ``random`` / ``numpy.random`` generators; :class:`Augmenter` seeds
them for the call and restores their state afterwards, so an item depends only on its own seed (the same in
any DataLoader worker) and the caller's global random state is untouched.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import cv2
import numpy as np
from ultralytics.data.augment import RandomFlip, RandomHSV
from ultralytics.utils.instance import Instances


@contextmanager
def seeded_global_rng(seed: int):
    """Seed ``random`` and ``numpy.random`` inside the block; restore their previous state after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class Augmenter:
    """``(image_rgb, boxes_xyxy, seed) -> (image_rgb, boxes_xyxy)``; boxes may be an empty (0, 4) array."""

    def __init__(self, hgain: float = 0.015, sgain: float = 0.6, vgain: float = 0.35, flip: float = 0.5):
        self.hsv = RandomHSV(hgain=hgain, sgain=sgain, vgain=vgain)
        self.flip = RandomFlip(p=flip, direction="horizontal")
        self.flip_p = flip

    def __call__(self, image: np.ndarray, boxes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        bgr = np.ascontiguousarray(image[..., ::-1])  # RandomHSV works in OpenCV's BGR order, in place
        instances = Instances(
            np.asarray(boxes, np.float32).reshape(-1, 4), bbox_format="xyxy", normalized=False
        )
        with seeded_global_rng(seed):
            labels = self.flip(self.hsv({"img": bgr, "instances": instances}))
        labels["instances"].convert_bbox(format="xyxy")
        return cv2.cvtColor(np.ascontiguousarray(labels["img"]), cv2.COLOR_BGR2RGB), labels[
            "instances"
        ].bboxes
