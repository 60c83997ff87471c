"""Appearance verification: the head's candidates re-scored by the support encoder, in the graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refdet_edge.export.onnx_export import APPEARANCE, PROTOTYPES, export_onnx, prototype_names
from refdet_edge.export.parity import check_parity
from refdet_edge.models import ModelConfig, RefDetModel
from refdet_edge.models.verifier import SUPPRESSED_LOGIT, local_peaks, square_regions
from refdet_edge.preprocess import preprocess_images

IMGSZ, SUPPORT = 64, 32


def verifying_model(topk: int = 2, **kwargs) -> RefDetModel:
    torch.manual_seed(0)
    return RefDetModel(ModelConfig(imgsz=IMGSZ, support_size=SUPPORT, verify_topk=topk, **kwargs)).eval()


def test_local_peaks_keep_one_anchor_per_blob_on_each_level():
    logits = torch.zeros(1, 4 * 4 + 2 * 2, 1)
    level0 = torch.zeros(4, 4)
    level0[1, 1], level0[1, 2], level0[3, 3] = 5.0, 4.0, 3.0  # a blob of two anchors, and a second peak
    logits[0, :16, 0] = level0.flatten()
    logits[0, 16:, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    peaks = local_peaks(logits, [(4, 4), (2, 2)])[0, :, 0]
    assert peaks[:16].view(4, 4)[1, 1] and peaks[:16].view(4, 4)[3, 3]
    assert not peaks[:16].view(4, 4)[1, 2]  # the blob's weaker neighbour
    assert peaks[16] and not peaks[17:].any()


def test_square_regions_keep_the_centre_and_add_context():
    square = square_regions(torch.tensor([[10.0, 20.0, 30.0, 30.0]]), context=0.25)
    np.testing.assert_allclose(square.numpy(), [[5.0, 10.0, 35.0, 40.0]])  # side 20 * 1.5 around (20, 25)


def _scene() -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    """A grey 64 x 64 frame with the target (a striped patch) and a look-alike of other texture."""
    rng = np.random.default_rng(0)
    frame = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
    target = np.zeros((16, 16, 3), np.uint8)
    target[::4] = (230, 40, 40)
    frame[8:24, 8:24] = target
    frame[40:56, 40:56] = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    reference = frame[4:28, 4:28].copy()  # the target's box grown by a quarter on every side
    return frame, reference, [8.0, 8.0, 24.0, 24.0], [40.0, 40.0, 56.0, 56.0]


ANCHORS = 8 * 8 + 4 * 4 + 2 * 2  # of a 64 px frame


def _scene_inputs(model: RefDetModel):
    """The verifier's inputs for :func:`_scene`: frame, the target's appearance, empty boxes and low logits
    for every anchor (a test places its candidates), and the two objects' boxes."""
    frame, reference, target_box, other_box = _scene()
    images, _ = preprocess_images([frame], IMGSZ)
    refs, _ = preprocess_images([reference], SUPPORT)
    appearance = model.encode_references(refs[None]).appearance
    boxes, logits = torch.zeros(1, ANCHORS, 4), torch.full((1, ANCHORS, 1), -5.0)
    return images, appearance, boxes, logits, target_box, other_box


def test_verification_ranks_the_target_over_a_stronger_look_alike_and_suppresses_the_rest():
    model = verifying_model(topk=2)
    images, appearance, boxes, logits, target_box, other_box = _scene_inputs(model)
    t, o = 2 * 8 + 2, 6 * 8 + 6  # level-0 anchors at the two objects, apart: both are peaks
    boxes[0, t], boxes[0, o] = torch.tensor(target_box), torch.tensor(other_box)
    logits[0, t, 0], logits[0, o, 0] = 1.0, 3.0  # the head prefers the look-alike
    with torch.no_grad():
        verified = model.verifier(images, boxes, logits, appearance, [(8, 8), (4, 4), (2, 2)])
    assert verified[0, t, 0] > verified[0, o, 0] > SUPPRESSED_LOGIT
    others = torch.ones(ANCHORS, dtype=torch.bool)
    others[[t, o]] = False
    assert (verified[0, others, 0] == SUPPRESSED_LOGIT).all()


def test_alpha_one_keeps_the_heads_ranking():
    model = verifying_model(topk=2, verify_alpha=1.0)
    images, appearance, boxes, logits, target_box, other_box = _scene_inputs(model)
    t, o = 2 * 8 + 2, 6 * 8 + 6
    boxes[0, t], boxes[0, o] = torch.tensor(target_box), torch.tensor(other_box)
    logits[0, t, 0], logits[0, o, 0] = 1.0, 3.0
    with torch.no_grad():
        verified = model.verifier(images, boxes, logits, appearance, [(8, 8), (4, 4), (2, 2)])
    np.testing.assert_allclose(verified[0, [t, o], 0].numpy(), [1.0, 3.0], atol=1e-4)


@pytest.mark.parametrize("iou", [1.0, 0.5])
def test_verify_iou_gives_an_objects_second_peak_slot_to_another_object(iou):
    model = verifying_model(topk=2, verify_iou=iou)
    images, appearance, boxes, logits, target_box, other_box = _scene_inputs(model)
    o, o2, t = 6 * 8 + 6, 64 + 3 * 4 + 3, 2 * 8 + 2  # the look-alike peaks on levels 0 and 1; the target
    boxes[0, o], boxes[0, o2], boxes[0, t] = (torch.tensor(b) for b in (other_box, other_box, target_box))
    boxes[0, o2] += 1.0  # the same object, one pixel apart
    logits[0, o, 0], logits[0, o2, 0], logits[0, t, 0] = 3.0, 2.5, 1.0
    with torch.no_grad():
        verified = model.verifier(images, boxes, logits, appearance, [(8, 8), (4, 4), (2, 2)])[0, :, 0]
    kept = {int(i) for i in torch.nonzero(verified > SUPPRESSED_LOGIT)}
    assert kept == ({o, o2} if iou == 1.0 else {o, t})  # off: the target is never looked at


def test_a_letterbox_crop_shows_a_tall_target_as_its_reference_shows_it():
    rng = np.random.default_rng(1)
    frame = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
    frame[16:48, 24:40] = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)  # the target, 16 x 32
    frame[12:52, 8:20] = frame[12:52, 44:56] = (20, 200, 20)  # clutter beside it, inside its square crop
    box = [24.0, 16.0, 40.0, 48.0]
    reference = frame[8:56, 20:44].copy()  # the box grown by a quarter of its width and height
    images, _ = preprocess_images([frame], IMGSZ)
    refs, _ = preprocess_images([reference], SUPPORT)
    boxes, logits = torch.zeros(1, ANCHORS, 4), torch.full((1, ANCHORS, 1), -5.0)
    boxes[0, 27], logits[0, 27, 0] = torch.tensor(box), 1.0
    scores = {}
    for crop in ("square", "letterbox"):
        model = verifying_model(topk=1, verify_crop=crop)
        appearance = model.encode_references(refs[None]).appearance
        with torch.no_grad():
            scores[crop] = float(
                model.verifier(images, boxes, logits, appearance, [(8, 8), (4, 4), (2, 2)])[0, 27, 0]
            )
    assert torch.sigmoid(torch.tensor(scores["letterbox"])) > 0.95  # the reference's own pixels
    assert scores["letterbox"] > scores["square"] + 1.0  # the square also shows the clutter
    with pytest.raises(ValueError, match="verify_crop"):
        verifying_model(verify_crop="circle")


def test_only_inference_verifies_and_the_detector_takes_the_appearance():
    model = verifying_model(topk=3)
    refs, query = torch.rand(2, 2, 3, SUPPORT, SUPPORT), torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        inputs = model.detector_inputs(model.encode_references(refs))
        verified = model.detect(query, inputs)["pred_scores"]
        model.train()
        trained_on = model(query, refs)["pred_scores"]
    model.eval()
    assert len(inputs) == 4 and inputs[3].shape[0] == 2
    assert ((verified > SUPPRESSED_LOGIT).sum(1) == 3).all()  # 3 verified candidates per frame and target
    assert (trained_on > SUPPRESSED_LOGIT).all()  # training scores every anchor with the head
    with pytest.raises(ValueError, match="appearance"):
        model.detect(query, inputs[:3])
    assert prototype_names(model) == (*PROTOTYPES, APPEARANCE)
    assert prototype_names(RefDetModel(ModelConfig(imgsz=IMGSZ, support_size=SUPPORT))) == PROTOTYPES


def test_a_verifying_mobilenet_model_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    model = RefDetModel(  # support 96: a 3 x 3 last map, pooled into 2 x 2 overlapping cells
        ModelConfig(
            imgsz=IMGSZ,
            support_size=96,
            verify_topk=4,
            verify_iou=0.6,
            support_encoder="timm:mobilenetv2_100",
            support_kwargs={"pad_type": "same"},
        )
    ).eval()
    export_onnx(model, tmp_path, IMGSZ)
    report = check_parity(model, tmp_path, IMGSZ)
    assert report["passed"], report["failures"]
    assert report["prototype_max_abs_diff"] < 1e-4


def test_verify_scale_crops_from_the_larger_input_and_the_backbone_sees_it_reduced():
    from refdet_edge import runtime

    sharp = verifying_model(topk=3, verify_scale=2)
    plain = verifying_model(topk=3)
    plain.load_state_dict(sharp.state_dict())
    refs, query = torch.rand(1, 2, 3, SUPPORT, SUPPORT), torch.rand(2, 3, 2 * IMGSZ, 2 * IMGSZ)
    with torch.no_grad():
        inputs = sharp.detector_inputs(sharp.encode_references(refs))
        big = sharp.detect(query, inputs)
        small = plain.detect(torch.nn.functional.avg_pool2d(query, 2), inputs)
    torch.testing.assert_close(big["boxes"], 2 * small["boxes"])  # boxes in the input's pixels
    kept = big["pred_scores"] > SUPPRESSED_LOGIT
    assert torch.equal(kept, small["pred_scores"] > SUPPRESSED_LOGIT)  # the same candidates verified
    assert not torch.allclose(big["pred_scores"][kept], small["pred_scores"][kept])  # from other crops
    assert (
        sharp.config.input_size == 2 * IMGSZ and runtime.load(sharp, "torch", device="cpu").imgsz == 2 * IMGSZ
    )
    with pytest.raises(ValueError, match="multiples of 64"):
        sharp.detect(query[:, :, :96, :96], inputs)
    sharp.train()
    assert sharp(query[:, :, :IMGSZ, :IMGSZ], refs)["boxes"].shape == small["boxes"].shape  # training: imgsz
    with pytest.raises(ValueError, match="verify_scale"):
        ModelConfig(imgsz=IMGSZ, support_size=SUPPORT, verify_scale=2)


def test_verify_scale_tells_apart_a_look_alike_that_differs_only_in_fine_detail():
    """Target: 1-pixel stripes at the large input's resolution; look-alike: flat, of the same mean. Reduced
    to the backbone's resolution both are the same grey patch: only crops of the large input separate them."""
    model = verifying_model(topk=2, verify_scale=2)
    frame = np.full((2 * IMGSZ, 2 * IMGSZ, 3), 114, np.uint8)
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[::2] = 220
    frame[16:48, 16:48] = stripes
    frame[80:112, 80:112] = 110
    reference = frame[8:56, 8:56].copy()
    refs, _ = preprocess_images([reference], SUPPORT)
    appearance = model.encode_references(refs[None]).appearance
    t, o = 2 * 8 + 2, 6 * 8 + 6
    scores = {}
    for scale in (1, 2):
        images = preprocess_images([frame], 2 * IMGSZ)[0]
        images = images if scale == 2 else torch.nn.functional.avg_pool2d(images, 2)
        boxes, logits = torch.zeros(1, ANCHORS, 4), torch.full((1, ANCHORS, 1), -5.0)
        boxes[0, t] = torch.tensor([16.0, 16.0, 48.0, 48.0]) * scale / 2
        boxes[0, o] = torch.tensor([80.0, 80.0, 112.0, 112.0]) * scale / 2
        logits[0, t, 0], logits[0, o, 0] = 1.0, 3.0
        with torch.no_grad():
            scores[scale] = model.verifier(images, boxes, logits, appearance, [(8, 8), (4, 4), (2, 2)])[
                0, :, 0
            ]
    assert abs(scores[1][t] - scores[1][o]) < 0.05 * abs(scores[2][t] - scores[2][o])
    assert scores[2][t] > scores[2][o]


def test_a_verify_scale_model_exports_with_parity(tmp_path):
    model = verifying_model(topk=3, verify_scale=2)
    export_onnx(model, tmp_path, model.config.input_size)
    report = check_parity(model, tmp_path, model.config.input_size)
    assert report["passed"], report["failures"]
