"""The reference-conditioned model: caching, reference dependence, the head's prior, fusion, weights, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
from refdet_edge.models.fusion import CHEAF
from refdet_edge.models.prototypes import combine_references, grid_pool

IMGSZ, SUPPORT = 64, 64
SHARED = Path(__file__).resolve().parents[2] / "shared"
COCO = SHARED / "weights" / "yolov8n-coco.pt"
needs_coco = pytest.mark.skipif(not COCO.is_file(), reason="needs ../shared/weights/yolov8n-coco.pt")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(imgsz=IMGSZ, support_size=SUPPORT).eval()


@pytest.fixture(scope="module")
def trained_like():
    """A model whose zero-initialised branches (CHEAF residuals and gates) are perturbed, as after training."""
    torch.manual_seed(0)
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT).eval()
    with torch.no_grad():
        for p in m.fusion.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def refs(n=1, k=3, seed=1, size=SUPPORT):
    return torch.rand(n, k, 3, size, size, generator=torch.Generator().manual_seed(seed))


def pattern_refs(n=1, k=3):
    """References unlike the uniform noise of :func:`refs`: bright squares on black."""
    images = torch.zeros(n, k, 3, SUPPORT, SUPPORT)
    images[..., SUPPORT // 4 : SUPPORT // 2, SUPPORT // 4 : SUPPORT // 2] = 1.0
    return images


def query(b=2, seed=2):
    return torch.rand(b, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def test_cached_forward_equals_uncached(model):
    q, r = query(), refs(n=2)
    with torch.no_grad():
        uncached = model(q, r)
        model.set_references(r)
        cached = model(q)
    model.clear_references()
    for key in ("pred_scores", "pred_dist", "boxes", "embeddings", "target_embeddings", "objectness"):
        torch.testing.assert_close(cached[key], uncached[key])
    assert cached["pred_scores"].shape == (2, 8 * 8 + 4 * 4 + 2 * 2, 2)


def test_head_outputs_follow_the_contract(model):
    q, r = query(b=3), refs(n=2)
    with torch.no_grad():
        out = model(q, r)
    a, e = 8 * 8 + 4 * 4 + 2 * 2, model.head.embed_dim
    assert out["embeddings"].shape == (3, 2, a, e)
    assert out["target_embeddings"].shape == (2, e)
    assert out["objectness"].shape == (3, a)
    torch.testing.assert_close(out["embeddings"].norm(dim=-1), torch.ones(3, 2, a))
    torch.testing.assert_close(out["target_embeddings"].norm(dim=-1), torch.ones(2))
    head = model.head
    cosine = torch.einsum("bnae,ne->ban", out["embeddings"], out["target_embeddings"])
    expected = head.obj_weight * out["objectness"][..., None] + head.logit_scale * cosine + head.logit_bias
    torch.testing.assert_close(out["pred_scores"], expected)


def test_initial_score_is_objectness_lowered_by_identity(model):
    """At init: logit = objectness + scale * (cosine - 1), never above the prior, equal where cosine is 1."""
    head = model.head
    assert head.obj_weight.item() == 1.0 and head.logit_scale.item() > 0
    assert head.logit_bias.item() == -head.logit_scale.item()
    with torch.no_grad():
        out = model(query(), refs(n=2))
    gap = out["pred_scores"] - out["objectness"][..., None]
    assert (gap <= 1e-5).all() and (gap < -1e-3).any()


def test_changing_references_changes_scores_not_boxes_or_objectness(trained_like):
    q = query()
    with torch.no_grad():
        a, b = trained_like(q, refs(seed=1)), trained_like(q, refs(seed=7))
    assert (a["pred_scores"] - b["pred_scores"]).abs().max() > 1e-3
    for key in ("boxes", "pred_dist", "objectness"):
        torch.testing.assert_close(a[key], b[key])


def test_each_targets_scores_depend_on_its_own_references_only(trained_like):
    """Fusion runs per target: target 0's scores with targets (A, B) equal those with (A, C) and with A alone."""
    q = query()
    ra, rb, rc = refs(seed=1), refs(seed=7), refs(seed=9)
    with torch.no_grad():
        ab = trained_like(q, torch.cat([ra, rb]))
        ac = trained_like(q, torch.cat([ra, rc]))
        alone = trained_like(q, ra)
    torch.testing.assert_close(ab["pred_scores"][..., 0], ac["pred_scores"][..., 0])
    torch.testing.assert_close(ab["pred_scores"][..., :1], alone["pred_scores"])
    torch.testing.assert_close(ab["embeddings"][:, 0], alone["embeddings"][:, 0])
    assert (ab["pred_scores"][..., 1] - ac["pred_scores"][..., 1]).abs().max() > 1e-3


def test_cheaf_is_the_identity_at_init():
    torch.manual_seed(0)
    channels = (16, 32, 64)
    fusion = CHEAF(channels).eval()
    feats = [torch.randn(3, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(channels)]
    prototypes = [torch.randn(3, 5, c) for c in channels]
    with torch.no_grad():
        out = fusion(feats, prototypes)
    for x, y in zip(feats, out, strict=True):
        assert torch.equal(x, y)


def test_fusion_output_depends_on_prototypes_once_trained(trained_like):
    with torch.no_grad():
        feats = trained_like.backbone(query())
        pa = [p.expand(2, -1, -1) for p in trained_like.encode_references(refs(seed=1)).prototypes]
        pb = [p.expand(2, -1, -1) for p in trained_like.encode_references(pattern_refs()).prototypes]
        fa, fb = trained_like.fusion(feats, pa), trained_like.fusion(feats, pb)
    for level_a, level_b in zip(fa, fb, strict=True):
        assert (level_a - level_b).abs().max() > 1e-4


class _GridPool(torch.nn.Module):
    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return grid_pool(maps, 2)


def test_grid_pool_equals_adaptive_average_pooling_in_torch_and_in_onnx(tmp_path):
    import onnxruntime as ort

    maps = torch.randn(2, 4, 7, 5)  # odd sides: the 2 x 2 cells overlap
    expected = torch.nn.functional.adaptive_avg_pool2d(maps, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(grid_pool(maps, 2), expected)
    path = tmp_path / "grid_pool.onnx"
    torch.onnx.export(_GridPool(), (maps,), str(path), dynamo=False, input_names=["maps"])
    (exported,) = ort.InferenceSession(str(path)).run(None, {"maps": maps.numpy()})
    np.testing.assert_allclose(exported, expected.numpy(), atol=1e-6)


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
    with torch.no_grad():
        pooled = model.backbone(q)[-1].mean((2, 3))
    torch.testing.assert_close(feats["query_global"], model.query_embed(pooled))
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


def test_ultralytics_checkpoint_loads_every_tensor(tmp_path):
    """Backbone, neck and the whole Detect layer (box towers, class towers with the 80-class layer, DFL)."""
    from ultralytics import YOLO

    torch.manual_seed(3)
    source = YOLO("yolov8n.yaml")
    path = tmp_path / "yolo_random.pt"
    source.save(path)
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT)
    report = load_yolo_weights(m, path)
    src = {k: v.half().float() for k, v in source.model.state_dict().items()}  # ultralytics saves fp16
    assert report == {"loaded": len(src), "unused": 0}
    ours = m.state_dict()
    for key, value in src.items():
        index, rest = key.split(".", 2)[1:]
        mine = f"backbone.layers.{index}.{rest}" if int(index) < 22 else f"head.{rest}"
        assert torch.equal(ours[mine].float(), value), key
    assert torch.equal(ours["head.cv3.2.2.weight"], src["model.22.cv3.2.2.weight"])


@needs_coco
def test_objectness_is_ultralytics_coco_max_class_score():
    """With the COCO weights, sigmoid(objectness) at every anchor of a real frame is YOLOv8n's own max class
    score there, and the boxes are its boxes."""
    from ultralytics import YOLO
    from ultralytics.utils.ops import xywh2xyxy

    from refdet_edge.preprocess import preprocess_images, read_image_rgb

    frames = sorted((SHARED / "data" / "sot" / "boat1" / "img").glob("*.jpg"))
    if not frames:
        pytest.skip("needs ../shared/data/sot/boat1")
    m = create_model(imgsz=320, support_size=SUPPORT, yolo_weights=COCO).eval()
    x, _ = preprocess_images([read_image_rgb(frames[0])], 320)
    reference = YOLO(str(COCO)).model.float().eval()
    with torch.no_grad():
        expected = reference(x)[0]  # (1, 4 + 80, A): xywh boxes, class probabilities
        out = m(x, refs())
    torch.testing.assert_close(out["objectness"].sigmoid(), expected[:, 4:].amax(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["boxes"], xywh2xyxy(expected[:, :4].transpose(1, 2)), atol=1e-2, rtol=0)
    assert expected[:, 4:].max() > 0.25  # a real detection among them, not an all-background frame


def test_yolo_weights_errors_name_the_file(tmp_path):
    m = create_model(imgsz=IMGSZ, support_size=SUPPORT)
    with pytest.raises(WeightsError, match="missing.pt: no such"):
        load_yolo_weights(m, tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pt"):
        load_yolo_weights(m, bad)


def dinov2_model():
    return create_model(imgsz=IMGSZ, support_size=28, support_encoder="dinov2")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_loads_into_dinov2_encoder(tmp_path, suffix):
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, num_classes=0)
    state = source.state_dict()
    path = tmp_path / f"dinov2{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    m = dinov2_model()
    report = load_dinov2_weights(m, path)
    assert report["loaded"] == len(state)
    for key, value in state.items():
        assert torch.equal(m.support.net.state_dict()[key], value), key


def test_mismatched_dinov2_weights_are_rejected(tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "tiny.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsError, match="tiny.pth"):
        load_dinov2_weights(dinov2_model(), path)


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


def test_config_rejects_bad_sizes_per_encoder():
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(imgsz=100)
    with pytest.raises(ValueError, match="multiple of 32 for the siamese encoder"):
        ModelConfig(support_size=112)
    with pytest.raises(ValueError, match="multiple of 14 for the dinov2 encoder"):
        ModelConfig(support_size=64, support_encoder="dinov2")
    with pytest.raises(ValueError, match="'siamese', 'dinov2' or 'timm:NAME'"):
        ModelConfig(support_encoder="clip")


def test_checkpoint_round_trip_and_rejection(tmp_path, trained_like):
    path = tmp_path / "run" / "best.pt"
    atomic_save(checkpoint_payload(trained_like, epoch=3), path)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    loaded = load_model(path).eval()
    q, r = query(), refs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(q, r)["pred_scores"], trained_like(q, r)["pred_scores"])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(WeightsError, match="foreign.pt: not a refdet-edge checkpoint"):
        load_model(foreign)
