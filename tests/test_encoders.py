"""Support encoders (siamese, timm, DINOv2): build offline, pretrained files, caching, references, what each
stage trains, gradient groups, checkpoints and export parity, per encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from refdet_edge.models import (
    WeightsError,
    atomic_save,
    checkpoint_payload,
    create_model,
    load_model,
    load_support_weights,
)
from refdet_edge.training.stages import stage_spec
from refdet_edge.training.trainer import GRAD_GROUPS, grad_norms

IMGSZ = 64
SIZES = {"siamese": 64, "dinov2": 56, "timm:mobilenetv2_100": 64}
KWARGS = {"timm:mobilenetv2_100": {"pad_type": "same"}}
ENCODERS = list(SIZES)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights"
MOBILENET = SHARED / "mobilenetv2_100-imagenet.safetensors"
COCO = SHARED / "yolov8n-coco.pt"


def build(encoder: str, seed: int = 0, **weights):
    torch.manual_seed(seed)
    return create_model(
        imgsz=IMGSZ,
        support_size=SIZES[encoder],
        support_encoder=encoder,
        support_kwargs=KWARGS.get(encoder, {}),
        **weights,
    )


def references(encoder: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    s = SIZES[encoder]
    return torch.rand(n, 3, 3, s, s, generator=torch.Generator().manual_seed(seed))


def frames(b: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=ENCODERS)
def encoder_model(request):
    return request.param, build(request.param).eval()


def test_cached_equals_uncached(encoder_model):
    encoder, model = encoder_model
    q, r = frames(), references(encoder)
    with torch.no_grad():
        uncached = model(q, r)
        model.set_references(r)
        cached = model(q)
    model.clear_references()
    for key in ("pred_scores", "boxes", "embeddings", "target_embeddings"):
        torch.testing.assert_close(cached[key], uncached[key])


def test_references_change_the_scores(encoder_model):
    encoder, model = encoder_model
    q = frames()
    with torch.no_grad():
        a = model(q, references(encoder, seed=1))["pred_scores"]
        b = model(q, references(encoder, seed=5))["pred_scores"]
    assert (a - b).abs().max() > 1e-4


def test_prototypes_fit_the_detector_for_every_encoder(encoder_model):
    encoder, model = encoder_model
    with torch.no_grad():
        protos = model.encode_references(references(encoder, n=3)).prototypes
    assert [tuple(p.shape) for p in protos] == [(3, model.num_prototype_tokens, c) for c in (64, 128, 256)]


@pytest.fixture(scope="module")
def siamese():
    return build("siamese").eval()


def test_siamese_encoder_is_the_backbone_with_no_parameters_of_its_own(siamese):
    model = siamese
    assert not list(model.support.parameters())
    assert not any(k.startswith("support.") for k in model.state_dict())
    r = references("siamese", n=1)[0]
    with torch.no_grad():
        maps = model.support(r).maps
        torch.testing.assert_close(maps[-1], model.backbone(r)[-1])
    plain = sum(
        p.numel()
        for name in ("backbone", "projector", "fusion", "head")
        for p in getattr(model, name).parameters()
    )
    extra = sum(
        p.numel() for name in ("query_embed", "fused_embed") for p in getattr(model, name).parameters()
    )
    assert sum(p.numel() for p in model.parameters()) == plain + extra


def test_siamese_prototypes_start_as_the_references_pooled_neck_features(siamese):
    model = siamese
    r = references("siamese", n=1, seed=3)
    with torch.no_grad():
        protos = model.encode_references(r).prototypes
        neck = model.backbone(r[0])
    for proto, level in zip(protos, neck, strict=True):
        torch.testing.assert_close(proto[0, 0], level.mean((2, 3)).mean(0))


@pytest.mark.parametrize(("encoder", "size"), [("siamese", 56), ("timm:mobilenetv2_100", 56), ("dinov2", 64)])
def test_support_size_is_checked_per_encoder(encoder, size):
    with pytest.raises(ValueError, match=f"multiple of {14 if encoder == 'dinov2' else 32}"):
        create_model(imgsz=IMGSZ, support_size=size, support_encoder=encoder)


def test_unknown_timm_model_and_bad_kwargs_are_clear_errors():
    with pytest.raises(ValueError, match="not a timm model name"):
        create_model(imgsz=IMGSZ, support_size=64, support_encoder="timm:no_such_net")
    with pytest.raises(ValueError, match="support_kwargs"):
        create_model(
            imgsz=IMGSZ, support_size=64, support_encoder="timm:resnet18", support_kwargs={"wings": 2}
        )


def test_timm_normalisation_comes_from_its_pretrained_config():
    model = build("timm:mobilenetv2_100")
    cfg = timm.data.resolve_data_config(model=model.support.net)
    torch.testing.assert_close(model.support.mean.flatten(), torch.tensor(cfg["mean"]))
    torch.testing.assert_close(model.support.std.flatten(), torch.tensor(cfg["std"]))
    vit = create_model(imgsz=IMGSZ, support_size=64, support_encoder="timm:vit_tiny_patch16_224")
    assert vit.support.is_vit and tuple(vit.support.net.patch_embed.img_size) == (64, 64)


def parameter_names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("encoder", ENCODERS)
def test_gradients_reach_what_each_stage_trains_and_nothing_frozen(encoder):
    """Stages 1 and 2 on one model: gradients land only in what the stage trains, in the support blocks the
    encoder unfreezes in stage 2, and the gradient groups count every parameter once."""
    model = build(encoder).train()
    for stage in (1, 2):
        model.zero_grad(set_to_none=True)
        groups = stage_spec(stage).apply(model)
        trainable = parameter_names(model, [*groups["main"], *groups["support"]])
        out = model(frames(), references(encoder), return_features=True)
        det = out["detections"]
        loss = det["pred_scores"].sigmoid().mean() + det["pred_dist"].mean()
        (loss + out["features"]["support_global"].mean()).backward()
        got = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got <= trainable, sorted(got - trainable)[:5]
        for module in ("backbone", "head"):
            assert any(n.startswith(f"{module}.") for n in got), module
        support = parameter_names(model, groups["support"])
        if encoder == "siamese":
            assert not support  # its weights are the backbone's, trained with it
        elif stage == 1:
            assert not support and not any(n.startswith("support.") for n in got)
        else:
            assert support and support <= got
            stem = next(name for name, _ in model.support.named_parameters())
            assert f"support.{stem}" not in trainable  # only the last block groups unfreeze
        assert ("projector.embed.weight" in got) == (stage == 2)
    norms = grad_norms(model)
    assert set(norms) == set(GRAD_GROUPS)
    assert (norms["support"] is None) == (encoder == "siamese")
    unique = {id(p): p for g in GRAD_GROUPS for p in getattr(model, g).parameters() if p.grad is not None}
    total = sum(float(p.grad.norm()) ** 2 for p in unique.values())
    assert sum((v or 0.0) ** 2 for v in norms.values()) == pytest.approx(total, rel=1e-5)


def test_siamese_reference_path_trains_the_shared_backbone():
    model = build("siamese").train()
    stage_spec(1).apply(model)
    protos = model.encode_references(references("siamese")).prototypes
    sum(p.sum() for p in protos).backward()
    assert model.backbone.layers[0].conv.weight.grad.abs().sum() > 0


def test_timm_weights_load_every_tensor_and_the_build_arguments_are_stored(tmp_path):
    source = timm.create_model("mobilenetv2_100", pretrained=False, pad_type="same")
    path = tmp_path / "mnv2.safetensors"
    save_file(
        source.state_dict(), str(path), metadata={"arch": "mobilenetv2_100", "timm_kwargs": "pad_type=same"}
    )
    model = create_model(
        imgsz=IMGSZ, support_size=64, support_encoder="timm:mobilenetv2_100", support_weights=path
    )
    assert model.config.support_kwargs == {"pad_type": "same"}
    own = model.support.net.state_dict()
    for key, value in own.items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert load_support_weights(model, path) == {"loaded": len(own), "unused": 2}  # the 1000-way classifier
    ckpt = tmp_path / "ckpt.pt"
    atomic_save(checkpoint_payload(model.eval()), ckpt)
    loaded = load_model(ckpt).eval()
    assert type(loaded.support.net.conv_stem).__name__ == "Conv2dSame"
    r = references("timm:mobilenetv2_100")
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames(), r)["pred_scores"], model(frames(), r)["pred_scores"])


def test_timm_weights_that_do_not_fit_name_the_file(tmp_path):
    wrong_arch = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(wrong_arch))
    with pytest.raises(
        WeightsError, match="other.safetensors: does not fit support encoder 'mobilenetv2_100'"
    ):
        create_model(
            imgsz=IMGSZ, support_size=64, support_encoder="timm:mobilenetv2_100", support_weights=wrong_arch
        )
    stated = tmp_path / "same.safetensors"
    state = timm.create_model("mobilenetv2_100", pad_type="same").state_dict()
    save_file(state, str(stated), metadata={"arch": "mobilenetv2_100", "timm_kwargs": "pad_type=same"})
    with pytest.raises(WeightsError, match="same.safetensors: made for .*pad_type=same"):
        create_model(
            imgsz=IMGSZ,
            support_size=64,
            support_encoder="timm:mobilenetv2_100",
            support_kwargs={"pad_type": ""},
            support_weights=stated,
        )
    with pytest.raises(WeightsError, match="same.safetensors: weights of timm model 'mobilenetv2_100'"):
        create_model(imgsz=IMGSZ, support_size=64, support_encoder="timm:resnet18", support_weights=stated)
    with pytest.raises(WeightsError, match="same.safetensors: the siamese support encoder shares the query"):
        create_model(imgsz=IMGSZ, support_size=64, support_weights=stated)


@pytest.mark.skipif(
    not MOBILENET.is_file(), reason="needs ../shared/weights/mobilenetv2_100-imagenet.safetensors"
)
def test_shared_mobilenet_loads_every_tensor_and_classifies_like_timm():
    from safetensors.torch import load_file

    model = create_model(
        imgsz=IMGSZ, support_size=224, support_encoder="timm:mobilenetv2_100", support_weights=MOBILENET
    ).eval()
    assert model.config.support_kwargs == {"pad_type": "same"}
    reference = timm.create_model("mobilenetv2_100", pad_type="same").eval()
    reference.load_state_dict(load_file(str(MOBILENET)))  # strict: every tensor
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    normalised = (image - model.support.mean) / model.support.std
    with torch.no_grad():
        torch.testing.assert_close(
            model.support(image).global_feature,
            reference.forward_head(reference.forward_features(normalised), pre_logits=True),
        )


@pytest.mark.skipif(not COCO.is_file(), reason="needs ../shared/weights/yolov8n-coco.pt")
def test_siamese_from_coco_weights_encodes_references_with_them():
    model = build("siamese", yolo_weights=COCO).eval()
    r = references("siamese", n=1)
    with torch.no_grad():
        protos = model.encode_references(r).prototypes
        assert torch.isfinite(protos[0]).all() and protos[0].abs().sum() > 0
        torch.testing.assert_close(protos[-1][0, 0], model.backbone(r[0])[-1].mean((2, 3)).mean(0))


@pytest.mark.parametrize(
    "encoder", ["timm:mobilenetv2_100", pytest.param("dinov2", marks=pytest.mark.slow)]
)  # the default (siamese) encoder's export: tests/test_export.py
def test_export_parity_per_encoder(encoder, tmp_path):
    from refdet_edge.export.onnx_export import export_onnx
    from refdet_edge.export.parity import check_parity

    model = build(encoder).eval()
    export_onnx(model, tmp_path, IMGSZ)
    parity = check_parity(model, tmp_path, IMGSZ)
    assert parity["passed"], parity["failures"]
    assert parity["prototype_max_abs_diff"] < 1e-4
