"""The one preprocessing contract shared by training, inference and export.

Images enter the model as RGB float tensors in [0, 1], letterboxed to a square size (query frames to
``imgsz``, reference photos to ``support_size``) with ultralytics' ``LetterBox`` (grey 114 padding). Any
further normalisation lives inside the model (the support encoder applies ImageNet mean/std itself), so the
exported graphs take exactly what this module produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils.ops import clip_boxes

PAD_VALUE = 114
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image was mapped into the square model input."""

    orig_shape: tuple[int, int]  # (height, width) of the original image
    size: int  # side of the square model input
    gain: tuple[float, float]  # (x, y) scale from original to model-input pixels
    pad: tuple[int, int]  # (left, top) padding in model-input pixels

    def to_input(self, boxes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map xyxy boxes from original pixels into model-input pixels."""
        out = boxes * 1.0
        out[..., [0, 2]] = out[..., [0, 2]] * self.gain[0] + self.pad[0]
        out[..., [1, 3]] = out[..., [1, 3]] * self.gain[1] + self.pad[1]
        return out

    def to_original(self, boxes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map xyxy boxes from model-input pixels back to original pixels, clipped to the image."""
        out = boxes * 1.0
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad[0]) / self.gain[0]
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad[1]) / self.gain[1]
        return clip_boxes(out, self.orig_shape)


def letterbox_info(orig_shape: tuple[int, int], size: int) -> LetterboxInfo:
    """The mapping that :func:`letterbox` applies to an image of ``orig_shape`` (h, w): LetterBox scales by
    ``min(size / h, size / w)``, rounds each side and centres the result."""
    h, w = orig_shape
    gain = min(size / h, size / w)
    new_w, new_h = max(round(w * gain), 1), max(round(h * gain), 1)
    pad = (round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1))
    return LetterboxInfo(orig_shape=(h, w), size=size, gain=(new_w / w, new_h / h), pad=pad)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize an HxWx3 uint8 image into a ``size`` x ``size`` canvas, keeping its aspect ratio."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {tuple(image.shape)}")
    resized = LetterBox(new_shape=(size, size), auto=False, scaleup=True, center=True)(image=image)
    return resized, letterbox_info(image.shape[:2], size)


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array, or raise :class:`ImageReadError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or not an image format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 image -> JPEG file bytes (the counterpart of :func:`read_image_rgb`)."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return data.tobytes()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def preprocess_images(images: list[np.ndarray], size: int) -> tuple[torch.Tensor, list[LetterboxInfo]]:
    """Letterbox a list of RGB uint8 images into one (B, 3, size, size) batch and their mappings."""
    boxed = [letterbox(img, size) for img in images]
    batch = torch.stack([to_tensor(img) for img, _ in boxed])
    return batch, [info for _, info in boxed]
