"""The reference-conditioned model: caching, reference dependence, gradients, weights, errors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from refdet_edge.models import (
    ModelConfig,
    WeightsError,
    atomic_save,
    checkpoint_payload,
    create_model,
    load_dinov2_weights,
    load_model,
    load_yolo_weights,
)
from refdet_edge.models.prototypes import combine_references

IMGSZ, SUPPORT = 64, 28


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(imgsz=IMGSZ, support_size=SUPPORT).eval()


def refs(n=1, k=3, seed=1):
    return torch.rand(n, k, 3, SUPPORT, SUPPORT, generator=torch.Generator().manual_seed(seed))


def query(b=2, seed=2):
    return torch.rand(b, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def test_cached_forward_equals_uncached(model):
    q, r = query(), refs(n=2)
    with torch.no_grad():
        uncached = model(q, r)
        model.set_references(r)
        cached = model(q)
    model.clear_references()
    for key in ("pred_scores", "pred_dist", "boxes"):
        torch.testing.assert_close(cached[key], uncached[key])
    assert cached["pred_scores"].shape == (2, 8 * 8 + 4 * 4 + 2 * 2, 2)


def test_changing_references_changes_scores(model):
    q = query()
    with torch.no_grad():
        a = model(q, refs(seed=1))["pred_scores"]
        b = model(q, refs(seed=7))["pred_scores"]
    assert (a - b).abs().max() > 1e-3


def test_fusion_output_depends_on_prototypes(model):
    with torch.no_grad():
        feats = model.backbone(query())
        pa = model.encode_references(refs(seed=1)).prototypes
        pb = model.encode_references(refs(seed=7)).prototypes
        fa, fb = model.fusion(feats, pa), model.fusion(feats, pb)
    for level_a, level_b in zip(fa, fb, strict=True):
        assert (level_a - level_b).abs().max() > 1e-4


def test_head_scores_depend_on_prototypes(model):
    with torch.no_grad():
        pa = model.encode_references(refs(seed=1)).prototypes
        pb = model.encode_references(refs(seed=7)).prototypes
        fused = model.fusion(model.backbone(query()), pa)
        sa, sb = model.head(fused, pa), model.head(fused, pb)
    assert (sa["pred_scores"] - sb["pred_scores"]).abs().max() > 1e-3
    torch.testing.assert_close(sa["pred_dist"], sb["pred_dist"])


def test_detection_loss_reaches_every_learning_module():
    torch.manual_seed(0)
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT).train()
    for p in m.support.parameters():
        p.requires_grad_(False)
    unfrozen = m.support.last_blocks(1)
    for module in unfrozen:
        for p in module.parameters():
            p.requires_grad_(True)
    out = m(query(), refs(n=2))
    (out["pred_scores"].sigmoid().sum() + out["boxes"].sum() * 1e-3).backward()

    def grad_norm(module):
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    for name in ("projector", "fusion", "head", "backbone"):
        assert grad_norm(getattr(m, name)) > 0, name
    assert grad_norm(m.projector.levels) > 0
    for module in unfrozen:
        assert grad_norm(module) > 0
    assert grad_norm(m.support.vit.blocks[0]) == 0.0
    assert all(p.grad is None for p in m.support.vit.blocks[0].parameters())


def test_features_have_documented_shapes_and_match_detections(model):
    q, r = query(b=3), refs(n=2)
    with torch.no_grad():
        plain = model(q, r)
        out = model(q, r, return_features=True)
    feats = out["features"]
    e = model.config.embed_dim
    assert feats["support_global"].shape == (2, e)
    assert feats["query_global"].shape == (3, e)
    assert feats["fused_global"].shape == (3, e)
    assert [p.shape for p in feats["prototypes"]] == [
        (2, model.num_prototype_tokens, c) for c in model.backbone.channels
    ]
    torch.testing.assert_close(out["detections"]["pred_scores"], plain["pred_scores"])
    torch.testing.assert_close(feats["query_global"], model.embed_images(q))
    assert not torch.allclose(feats["query_global"], feats["fused_global"])


def test_eval_output_is_deterministic(model):
    q, r = query(), refs()
    with torch.no_grad():
        a, b = model(q, r), model(q, r)
    assert torch.equal(a["pred_scores"], b["pred_scores"])
    assert torch.equal(a["boxes"], b["boxes"])


def test_boxes_are_decoded_in_input_pixels(model):
    with torch.no_grad():
        out = model(query(), refs())
    boxes = out["boxes"]
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    anchors = out["anchor_points"] * out["stride_tensor"]
    assert (centres - anchors).abs().amax() < IMGSZ


def test_robust_combination_downweights_an_outlier():
    inlier = torch.tensor([1.0, 0.0, 0.0])
    features = torch.stack([inlier, inlier + 0.05, torch.tensor([-1.0, 1.0, 0.0])])[None]
    mean = combine_references(features, "mean")
    robust = combine_references(features, "robust")
    torch.testing.assert_close(mean, torch.full((1, 3), 1 / 3))
    assert robust[0, 2] < 0.05 and robust.sum() == pytest.approx(1.0)


def test_ultralytics_checkpoint_loads_every_backbone_tensor(tmp_path):
    from ultralytics import YOLO

    torch.manual_seed(3)
    source = YOLO("yolov8n.yaml")
    path = tmp_path / "yolo_random.pt"
    source.save(path)
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT)
    report = load_yolo_weights(m, path)
    src = {k: v.half().float() for k, v in source.model.state_dict().items()}  # ultralytics saves fp16
    ours = m.state_dict()
    backbone = [k for k in ours if k.startswith("backbone.layers.")]
    assert backbone and report["loaded"] >= len(backbone)
    for key in backbone:
        assert torch.equal(ours[key].float(), src[key.replace("backbone.layers.", "model.")]), key
    assert torch.equal(ours["head.cv2.0.2.weight"], src["model.22.cv2.0.2.weight"])
    assert torch.equal(ours["head.cv3.1.1.conv.weight"], src["model.22.cv3.1.1.conv.weight"])


def test_yolo_weights_errors_name_the_file(tmp_path):
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT)
    with pytest.raises(WeightsError, match="missing.pt: no such"):
        load_yolo_weights(m, tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pt"):
        load_yolo_weights(m, bad)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_loads_into_support_encoder(tmp_path, suffix):
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=SUPPORT, num_classes=0)
    state = source.state_dict()
    path = tmp_path / f"dinov2{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT)
    report = load_dinov2_weights(m, path)
    assert report["loaded"] == len(state)
    for key, value in state.items():
        assert torch.equal(m.support.vit.state_dict()[key], value), key


def test_mismatched_dinov2_weights_are_rejected(tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "tiny.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsError, match="tiny.pth"):
        load_dinov2_weights(create_model(imgsz=IMGSZ, support_size=SUPPORT), path)


def test_forward_without_references_raises(model):
    model.clear_references()
    with pytest.raises(RuntimeError, match="set_references"):
        model(query())


@pytest.mark.parametrize(
    ("q_shape", "r_shape", "match"),
    [
        ((2, 3, 60, 64), (1, 3, 3, SUPPORT, SUPPORT), "multiples of 32"),
        ((2, 1, 64, 64), (1, 3, 3, SUPPORT, SUPPORT), r"\(B, 3, H, W\)"),
        ((2, 3, 64, 64), (1, 3, 3, 32, 32), "support size"),
        ((2, 3, 64, 64), (3, SUPPORT, SUPPORT), "support size"),
    ],
)
def test_wrong_shapes_raise_clear_errors(model, q_shape, r_shape, match):
    with pytest.raises(ValueError, match=match):
        model(torch.rand(q_shape), torch.rand(r_shape))


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(imgsz=100)
    with pytest.raises(ValueError, match="multiple of 14"):
        ModelConfig(support_size=100)


def test_checkpoint_round_trip_and_rejection(tmp_path, model):
    path = tmp_path / "run" / "best.pt"
    atomic_save(checkpoint_payload(model, epoch=3), path)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    loaded = load_model(path).eval()
    q, r = query(), refs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(q, r)["pred_scores"], model(q, r)["pred_scores"])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(WeightsError, match="foreign.pt: not a refdet-edge checkpoint"):
        load_model(foreign)
