"""Losses of issue 4 against hand-computed values, with gradients."""

import math

import pytest
import torch
from ultralytics.utils.tal import bbox2dist, make_anchors

from refdet_edge.losses import (
    BoxLoss,
    DetectionLoss,
    LossWeights,
    PrototypeContrastiveLoss,
    SupConLoss,
    TripletLoss,
    WIoULoss,
    combine,
)

REG_MAX = 16
STRIDES = torch.tensor([8.0, 16.0, 32.0])


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def assert_learns(t: torch.Tensor) -> None:
    assert t.grad is not None
    assert torch.isfinite(t.grad).all()
    assert t.grad.abs().sum() > 0


def anchors(imgsz: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    feats = [torch.zeros(1, 1, imgsz // int(s), imgsz // int(s)) for s in STRIDES]
    return make_anchors(feats, STRIDES, 0.5)


def detections(pred_dist: torch.Tensor, pred_scores: torch.Tensor) -> dict[str, torch.Tensor]:
    anchor_points, stride_tensor = anchors()
    return {
        "pred_dist": pred_dist,
        "pred_scores": pred_scores,
        "anchor_points": anchor_points,
        "stride_tensor": stride_tensor,
    }


def dist_logits_for(box_px: torch.Tensor) -> torch.Tensor:
    """(1, A, 4*REG_MAX) DFL logits whose expectation is ``box_px``'s ltrb distance at every anchor."""
    anchor_points, stride_tensor = anchors()
    ltrb = bbox2dist(anchor_points, box_px / stride_tensor, REG_MAX - 1)  # (A, 4)
    left = ltrb.floor().long()
    w_right = ltrb - left
    probs = torch.full((*ltrb.shape, REG_MAX), 1e-6)
    probs.scatter_(-1, left[..., None], (1 - w_right)[..., None])
    probs.scatter_(-1, (left + 1)[..., None], w_right[..., None])
    return probs.clamp_min(1e-6).log().reshape(1, -1, 4 * REG_MAX)


# ---------------------------------------------------------------- WIoU v3 and DFL


def test_wiou_one_pair_matches_hand_value_and_updates_running_mean():
    wiou = WIoULoss(momentum=0.1)
    wiou.iou_mean.fill_(0.5)
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    loss = wiou(pred, target)

    l_iou = 1 - 1 / 7  # intersection 1, union 4 + 4 - 1
    mean = 0.9 * 0.5 + 0.1 * l_iou  # updated before use
    beta = l_iou / mean
    r = beta / (3.0 * 1.9 ** (beta - 3.0))
    r_wiou = math.exp(2.0 / 18.0)  # centres (1,1),(2,2); enclosing box 3x3
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(r * r_wiou * l_iou, rel=1e-5)
    assert wiou.iou_mean.item() == pytest.approx(mean, rel=1e-6)

    loss.sum().backward()
    assert_learns(pred)

    wiou.eval()
    wiou(pred.detach(), target)
    assert wiou.iou_mean.item() == pytest.approx(mean, rel=1e-6)  # frozen in eval mode


def test_wiou_is_zero_for_identical_boxes_and_empty_input_keeps_mean():
    wiou = WIoULoss(momentum=0.5)
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert wiou(boxes, boxes).item() == pytest.approx(0.0, abs=1e-6)
    mean = wiou.iou_mean.item()
    assert wiou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    assert wiou.iou_mean.item() == mean
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        wiou(torch.zeros(2, 4), torch.zeros(3, 4))


def test_box_loss_dfl_on_known_distributions_per_side():
    # side s has bin probabilities proportional to (k + 1 + s): checks the (4 sides x reg_max) layout
    probs = torch.stack([torch.arange(REG_MAX) + 1.0 + s for s in range(4)])
    probs = probs / probs.sum(1, keepdim=True)
    pred_dist = probs.log().reshape(1, 1, 4 * REG_MAX).clone().requires_grad_(True)
    anchor = torch.tensor([[5.0, 5.0]])
    target = torch.tensor([[[1.6, 2.0, 8.5, 9.3]]])  # ltrb = 3.4, 3.0, 3.5, 4.3
    pred_box = torch.tensor([[[1.0, 1.0, 9.0, 9.0]]])
    scores = torch.tensor([[[0.0, 0.8]]])

    box_loss = BoxLoss(REG_MAX)
    box_loss.eval()
    box, dfl = box_loss(
        pred_dist, pred_box, anchor, target, scores, torch.tensor(1.0), torch.tensor([[True]])
    )

    def lp(side: int, k: int) -> float:
        return math.log(probs[side, k].item())

    sides = [
        -(0.6 * lp(0, 3) + 0.4 * lp(0, 4)),
        -lp(1, 3),
        -(0.5 * lp(2, 3) + 0.5 * lp(2, 4)),
        -(0.7 * lp(3, 4) + 0.3 * lp(3, 5)),
    ]
    assert dfl.item() == pytest.approx(0.8 * sum(sides) / 4, rel=1e-4)
    expected_box = 0.8 * WIoULoss().eval()(pred_box[0], target[0]).item()
    assert box.item() == pytest.approx(expected_box, rel=1e-6)
    dfl.backward()
    assert_learns(pred_dist)


# ---------------------------------------------------------------- detection loss


def test_zero_target_batch_gives_only_cls_loss_on_every_anchor():
    pred_dist = torch.randn(2, 84, 4 * REG_MAX, requires_grad=True)
    pred_scores = torch.zeros(2, 84, 3, requires_grad=True)
    loss = DetectionLoss()
    total, parts = loss(detections(pred_dist, pred_scores), torch.zeros(0, 6))

    assert set(parts) == {"box", "dfl", "cls"}
    assert parts["box"].item() == 0.0 and parts["dfl"].item() == 0.0
    assert parts["cls"].item() == pytest.approx(2 * 84 * 3 * math.log(2), rel=1e-5)  # BCE(0, 0) = log 2
    assert total.item() == pytest.approx(0.5 * parts["cls"].item(), rel=1e-6)
    assert not parts["cls"].requires_grad
    total.backward()
    assert (pred_scores.grad > 0).all()  # every background logit is pushed down
    assert pred_dist.grad is not None and pred_dist.grad.abs().sum() == 0


def test_gradient_reaches_background_anchors_and_boxes():
    torch.manual_seed(0)
    pred_dist = torch.randn(2, 84, 4 * REG_MAX, requires_grad=True)
    pred_scores = torch.randn(2, 84, 2, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 16.0, 16.0, 40.0, 48.0]])  # image 1 is a background frame
    total, parts = DetectionLoss()(detections(pred_dist, pred_scores), targets)
    assert parts["box"] > 0 and parts["dfl"] > 0 and parts["cls"] > 0
    total.backward()
    assert (pred_scores.grad[1] != 0).all()  # background frame
    assert (pred_scores.grad[0, :, 0] != 0).all()  # the target absent from image 0
    assert_learns(pred_dist)
    assert pred_dist.grad[1].abs().sum() == 0  # no box to regress on the background frame


def test_perfect_prediction_beats_shifted_one():
    gt = torch.tensor([16.0, 16.0, 40.0, 48.0])
    targets = torch.cat((torch.tensor([0.0, 1.0]), gt))[None]
    anchor_points, stride_tensor = anchors()
    inside = ((anchor_points * stride_tensor > gt[:2]) & (anchor_points * stride_tensor < gt[2:])).all(1)
    pred_scores = torch.full((1, 84, 2), -6.0)
    pred_scores[0, inside, 1] = 4.0

    loss = DetectionLoss().eval()  # frozen WIoU mean: both calls see the same focusing
    perfect_total, perfect = loss(detections(dist_logits_for(gt), pred_scores), targets)
    shift = torch.tensor([6.0, 6.0, 6.0, 6.0])
    shifted_total, shifted = loss(detections(dist_logits_for(gt + shift), pred_scores), targets)

    assert perfect["box"].item() < 1e-3
    assert shifted["box"] > 10 * perfect["box"]
    assert shifted["dfl"] > perfect["dfl"]
    assert shifted_total > perfect_total


def test_components_combine_to_total_and_target_order_does_not_matter():
    torch.manual_seed(1)
    det = detections(torch.randn(3, 84, 4 * REG_MAX), torch.randn(3, 84, 2))
    targets = torch.tensor(
        [
            [2.0, 0.0, 4.0, 4.0, 20.0, 30.0],
            [0.0, 1.0, 30.0, 8.0, 60.0, 40.0],
            [2.0, 1.0, 33.0, 35.0, 50.0, 62.0],
        ]
    )
    loss = DetectionLoss(box=2.0, dfl=3.0, cls=0.25).eval()
    total, parts = loss(det, targets)
    hand = 2.0 * parts["box"].item() + 3.0 * parts["dfl"].item() + 0.25 * parts["cls"].item()
    assert total.item() == pytest.approx(hand, rel=1e-6)
    assert combine(parts, loss.gains).item() == pytest.approx(total.item(), rel=1e-6)
    total_sorted, _ = loss(det, targets[[1, 0, 2]])
    assert total_sorted.item() == pytest.approx(total.item(), rel=1e-6)


def test_detection_loss_moves_wiou_mean_in_training_mode_only():
    det = detections(torch.randn(1, 84, 4 * REG_MAX), torch.randn(1, 84, 1))
    targets = torch.tensor([[0.0, 0.0, 8.0, 8.0, 40.0, 40.0]])
    loss = DetectionLoss(wiou_momentum=0.5)
    loss(det, targets)
    moved = loss.box_loss.wiou.iou_mean.item()
    assert moved < 1.0
    assert "box_loss.wiou.iou_mean" in loss.state_dict()
    loss.eval()
    loss(det, targets)
    assert loss.box_loss.wiou.iou_mean.item() == moved


def test_losses_stay_float32_under_autocast():
    torch.manual_seed(2)
    det = detections(torch.randn(1, 84, 4 * REG_MAX), torch.randn(1, 84, 2))
    targets = torch.tensor([[0.0, 1.0, 8.0, 8.0, 40.0, 40.0]])
    feats, labels = torch.randn(6, 16), torch.tensor([0, 0, 1, 1, -1, 2])
    loss = DetectionLoss().eval()
    negatives = feats[:2, None].expand(2, 3, 16)
    plain = (
        loss(det, targets)[0],
        SupConLoss()(feats, labels),
        TripletLoss()(feats[2:4], feats[4:], negatives),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = (
            loss(det, targets)[0],
            SupConLoss()(feats, labels),
            TripletLoss()(feats[2:4], feats[4:], negatives),
        )
    for a, b in zip(amp, plain, strict=True):
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d, t: (d | {"pred_dist": d["pred_dist"][..., :60]}, t), "pred_dist must be"),
        (lambda d, t: ({k: v for k, v in d.items() if k != "stride_tensor"}, t), "missing"),
        (lambda d, t: (d | {"anchor_points": d["anchor_points"][:-1]}, t), "anchor_points must be"),
        (lambda d, t: (d, t[:, :5]), r"\(T, 6\)"),
        (lambda d, t: (d, t.index_fill(1, torch.tensor([1]), 2.0)), "class_idx"),
        (lambda d, t: (d, t.index_fill(1, torch.tensor([0]), 1.0)), "batch_idx"),
        (lambda d, t: (d, t[:, [0, 1, 4, 3, 2, 5]]), "x2 >= x1"),
    ],
)
def test_detection_loss_rejects_bad_inputs(change, message):
    det = detections(torch.randn(1, 84, 4 * REG_MAX), torch.randn(1, 84, 2))
    targets = torch.tensor([[0.0, 1.0, 8.0, 8.0, 40.0, 40.0]])
    with pytest.raises(ValueError, match=message):
        DetectionLoss()(*change(det, targets))


# ---------------------------------------------------------------- SupCon, CPE


def test_supcon_on_four_points():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = SupConLoss(temperature=0.5)(feats, labels)
    # every anchor: one positive at similarity 1, two negatives at 0; logits / 0.5
    assert loss.item() == pytest.approx(math.log(math.exp(2) + 2) - 2, rel=1e-6)
    loss.backward()
    assert_learns(feats)


def test_supcon_background_rows_are_negatives_only():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, -1, -1])
    loss = SupConLoss(temperature=1.0)(feats, labels)
    e = math.e
    anchor_0 = math.log(e + 2 + 2 / e) - 1  # positive 1, negatives 0, 0, -1, -1
    anchor_2 = math.log(e + 4) - 1  # positive 1, negatives 0, 0, 0, 0
    assert loss.item() == pytest.approx((anchor_0 + anchor_2) / 2, rel=1e-6)

    only_background = torch.randn(3, 4, requires_grad=True)
    zero = SupConLoss()(only_background, torch.tensor([-1, -1, -1]))
    assert zero.item() == 0.0
    zero.backward()  # still in the graph
    with pytest.raises(ValueError, match="labels must be"):
        SupConLoss()(feats, labels[:3])


def test_cpe_on_two_prototypes_with_background_logit():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, -1])
    loss = PrototypeContrastiveLoss(temperature=1.0, margin=0.5)(embeddings, prototypes, labels)
    e = math.e
    row_0 = -1 + math.log(e + 1 + math.exp(0.5))  # logits [1, 0, 0.5], class 0
    row_1 = -0.5 + math.log(1 + e + math.exp(0.5))  # logits [0, 1, 0.5], background
    assert loss.item() == pytest.approx((row_0 + row_1) / 2, rel=1e-6)
    loss.backward()
    assert_learns(embeddings)
    assert_learns(prototypes)

    with pytest.raises(ValueError, match=r"in \[0, 2\) or -1"):
        PrototypeContrastiveLoss()(embeddings, prototypes, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="prototypes must be"):
        PrototypeContrastiveLoss()(embeddings, torch.zeros(2, 3), labels)


# ---------------------------------------------------------------- triplet


def test_plain_triplet_on_2d_unit_vectors():
    anchor = torch.tensor([unit(0), unit(0)], requires_grad=True)
    positive = torch.tensor([unit(90), unit(0)], requires_grad=True)
    negative = torch.tensor([unit(45), unit(180)], requires_grad=True)
    loss = TripletLoss(margin=0.3)(anchor, positive, negative)
    row_0 = 1.0 - (1.0 - math.sqrt(0.5)) + 0.3  # d(a,p) = 1, d(a,n) = 1 - cos 45
    row_1 = 0.0  # d(a,p) = 0, d(a,n) = 2: inactive
    assert loss.item() == pytest.approx((row_0 + row_1) / 2, rel=1e-6)
    loss.backward()
    for t in (anchor, positive, negative):
        assert_learns(t)


def test_plain_triplet_rejects_negative_with_anchor_label():
    rows = torch.tensor([unit(0), unit(30)])
    with pytest.raises(ValueError, match=r"anchor's label in triplet rows \[1\]"):
        TripletLoss()(rows, rows, rows, torch.tensor([0, 1]), torch.tensor([2, 1]))
    with pytest.raises(ValueError, match="both"):
        TripletLoss()(rows, rows, rows, torch.tensor([0, 1]))


def test_triplet_with_several_negatives_averages_the_valid_ones_per_row():
    anchor = torch.tensor([unit(0), unit(0)], requires_grad=True)
    positive = torch.tensor([unit(60), unit(0)])
    negatives = torch.tensor(
        [[unit(30), unit(90), unit(0)], [unit(10), unit(180), unit(20)]], requires_grad=True
    )
    mask = torch.tensor([[True, True, False], [False, False, False]])  # row 1 has no valid negative

    def d(deg: float) -> float:
        return 1 - math.cos(math.radians(deg))

    margin = 0.3
    row_0 = (max(d(60) - d(30) + margin, 0) + max(d(60) - d(90) + margin, 0)) / 2
    loss = TripletLoss(margin)(anchor, positive, negatives, negative_mask=mask)
    assert loss.item() == pytest.approx(row_0, rel=1e-5)
    loss.backward()
    assert_learns(anchor)
    assert negatives.grad[0, :2].abs().sum() > 0 and negatives.grad[0, 2].abs().sum() == 0
    assert negatives.grad[1].abs().sum() == 0
    none = TripletLoss()(anchor, positive, negatives, negative_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="negative_mask"):
        TripletLoss()(anchor, positive, negatives, negative_mask=mask[:, :2])
    with pytest.raises(ValueError, match=r"\(M, K, E\)"):
        TripletLoss()(anchor, positive, negatives[:1])


# ---------------------------------------------------------------- weights


def test_combine_equals_hand_weighted_sum_and_backpropagates():
    x = torch.tensor(2.0, requires_grad=True)
    components = {"box": x * 1.0, "cls": x * 3.0, "triplet": torch.tensor(0.5)}
    weights = LossWeights(box=2.0, cls=0.5, triplet=4.0)
    total = combine(components, weights)
    assert total.item() == pytest.approx(2.0 * 2.0 + 0.5 * 6.0 + 4.0 * 0.5)
    total.backward()
    assert x.grad.item() == pytest.approx(2.0 * 1.0 + 0.5 * 3.0)
    assert combine({"a": torch.tensor([3.0])}, {"a": 2.0}).item() == 6.0

    with pytest.raises(ValueError, match="no weight"):
        combine({"unknown": torch.tensor(1.0)}, weights)
    with pytest.raises(ValueError, match="one-element"):
        combine({"box": torch.ones(2)}, weights)
    with pytest.raises(ValueError, match=">= 0"):
        LossWeights(triplet=-1.0)
