"""Shared preprocessing and post-processing: letterbox round trip, NMS, thresholds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refdet_edge.postprocess import postprocess
from refdet_edge.preprocess import ImageReadError, letterbox, preprocess_images, read_image_rgb


def test_letterbox_round_trip_maps_boxes_back_to_original_pixels():
    image = np.zeros((720, 1280, 3), dtype=np.uint8)
    image[100:160, 300:400] = 255
    boxed, info = letterbox(image, 640)
    assert boxed.shape == (640, 640, 3)
    box = np.array([[300.0, 100.0, 400.0, 160.0]])
    inside = info.to_input(box.copy())
    x1, y1, x2, y2 = np.round(inside[0]).astype(int)
    assert boxed[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() == 255
    assert boxed[: y1 - 2, :].max() <= 114
    np.testing.assert_allclose(info.to_original(inside), box, atol=0.5)
    torch.testing.assert_close(
        info.to_original(torch.tensor(inside, dtype=torch.float32)), torch.tensor(box, dtype=torch.float32)
    )


def test_preprocess_images_gives_rgb_unit_range_batch():
    red = np.zeros((50, 80, 3), dtype=np.uint8)
    red[..., 0] = 255
    batch, infos = preprocess_images([red, red[:40]], 64)
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32
    assert batch[0, 0, 32, 32] == 1.0 and batch[0, 1, 32, 32] == 0.0
    assert batch[0, 0, 0, 0] == pytest.approx(114 / 255)
    assert infos[1].orig_shape == (40, 80)


def test_read_image_rgb_names_bad_files(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image_rgb(bad)
    with pytest.raises(ImageReadError, match="absent.jpg: no such image file"):
        read_image_rgb(tmp_path / "absent.jpg")


def test_postprocess_thresholds_suppresses_and_caps():
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.0]]])
    scores = torch.tensor([[[0.9, 0.1], [0.8, 0.1], [0.7, 0.6], [0.2, 0.95]]])
    (dets,) = postprocess(boxes, scores, conf=0.5, iou=0.5)
    assert sorted(zip(dets.scores.tolist(), dets.labels.tolist(), strict=True)) == [
        (pytest.approx(0.6), 1),
        (pytest.approx(0.7), 0),
        (pytest.approx(0.9), 0),
        (pytest.approx(0.95), 1),
    ]
    (capped,) = postprocess(boxes, scores, conf=0.5, max_det=2)
    assert capped.scores.tolist() == pytest.approx([0.95, 0.9])
    (empty,) = postprocess(boxes, scores, conf=0.99)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_postprocess_maps_to_original_pixels():
    _, info = letterbox(np.zeros((720, 1280, 3), dtype=np.uint8), 640)
    original = torch.tensor([[300.0, 100.0, 400.0, 160.0]])
    boxes = info.to_input(original.clone())[None]
    (dets,) = postprocess(boxes, torch.tensor([[[0.9]]]), [info])
    torch.testing.assert_close(dets.boxes, original, atol=0.5, rtol=0)


def test_postprocess_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"boxes \(B, A, 4\)"):
        postprocess(torch.zeros(1, 5, 4), torch.zeros(1, 6, 1))
