"""The training recipe of issue 10: a triplet loss in the head's score space, frozen batch norms, weight
decay on weight matrices only, WIoU momentum from the run length, mixed batches that hold both kinds."""

from __future__ import annotations

import math

import pytest
import torch

from refdet_edge.data.collate import MixedCollator, RefDetCollator, TripletCollator
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.mixed import MixedBatchSampler, MixedDataset, triplets_per_batch
from refdet_edge.data.triplet import TripletDataset
from refdet_edge.losses import WIoULoss, combine, wiou_momentum
from refdet_edge.models import create_model
from refdet_edge.training.batchnorm import BatchNorm, calibrate_batchnorm, never_calibrated
from refdet_edge.training.config import load_config
from refdet_edge.training.loaders import build_train_loader
from refdet_edge.training.optim import param_groups
from refdet_edge.training.prepare import LossComputer, merge_mixed, select_frames
from refdet_edge.training.stages import stage_spec

IMGSZ, SUPPORT = 64, 64
BOX = [16.0, 16.0, 44.0, 44.0]


def episode(labels: list[int], query_labels: list[int], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "kind": "detection",
        "query_images": torch.rand(len(query_labels), 3, IMGSZ, IMGSZ, generator=g),
        "query_boxes": torch.tensor([BOX if q >= 0 else [0.0] * 4 for q in query_labels]),
        "query_labels": torch.tensor(query_labels),
        "support_images": torch.rand(len(labels), 2, 3, SUPPORT, SUPPORT, generator=g),
        "support_labels": torch.tensor(labels),
    }


def triplet_item(label: int, negative_label: int, seed: int) -> dict:
    item = episode([label], [label, negative_label], seed)
    return item | {"kind": "triplet"}


def make(stage: int = 3, freeze_bn: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(imgsz=IMGSZ, support_size=SUPPORT)
    spec = stage_spec(stage)
    groups = spec.apply(model)
    computer = LossComputer(model, spec.loss_weights(1.0), freeze_bn=freeze_bn).train()
    return model, groups, computer


def batchnorm_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: value.clone()
        for name, value in model.state_dict().items()
        if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


# ---------------------------------------------------------------- triplet in the head's space


def pattern(size: int, g: torch.Generator) -> torch.Tensor:
    """A red-blue checkerboard with a little noise: the object of the triplet test."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((yy // (size // 4) + xx // (size // 4)) % 2).float()
    image = torch.stack([checker, 0.2 * checker, 1 - checker]) * 0.8 + 0.1
    return (image + 0.05 * torch.rand(3, size, size, generator=g)).clamp(0, 1)


def object_triplet(seed: int) -> dict:
    """References of the checkerboard; the positive frame shows it at BOX, the background frame does not."""
    g = torch.Generator().manual_seed(seed)
    positive, negative = (0.35 + 0.3 * torch.rand(3, IMGSZ, IMGSZ, generator=g) for _ in range(2))
    x1, y1, x2, y2 = map(int, BOX)
    positive[:, y1:y2, x1:x2] = pattern(x2 - x1, g)
    return {
        "kind": "triplet",
        "support_images": torch.stack([pattern(SUPPORT, g) for _ in range(2)])[None],
        "support_labels": torch.tensor([4]),
        "query_images": torch.stack([positive, negative]),
        "query_boxes": torch.tensor([BOX, [0.0] * 4]),
        "query_labels": torch.tensor([4, -1]),
    }


def test_triplet_steps_pull_the_target_anchors_to_the_prototype_and_push_background_away():
    model, groups, computer = make(3)
    batch = TripletCollator()([object_triplet(0)])
    calibrate_batchnorm(model, lambda b: model(b["query_images"], b["support_images"]), [batch])
    optimizer = torch.optim.AdamW([*groups["main"], *groups["support"]], lr=5e-4, weight_decay=0.0)

    def cosines():  # of frame b's anchors with the target's prototype as the head sees it, (2, A)
        with torch.no_grad():
            det = model(batch["query_images"], batch["support_images"])
        return det, det["embeddings"][:, 0] @ det["target_embeddings"][0]

    det, before = cosines()
    positives = computer.detection_loss.assign(
        select_frames(det, slice(0, 1)), torch.tensor([[0.0, 0.0, *BOX]])
    ).fg_mask[0]
    hardest = det["pred_scores"][1, :, 0].topk(10).indices  # the background anchors that score highest
    assert positives.sum() >= 3
    for _ in range(3):
        optimizer.zero_grad()
        terms = computer(batch)
        assert set(terms) == {"triplet"}
        terms["triplet"].backward()
        optimizer.step()
    _, after = cosines()
    assert after[0, positives].mean() > before[0, positives].mean() + 0.02
    assert after[1, hardest].mean() < before[1, hardest].mean() - 0.2


def test_triplet_loss_reads_the_head_not_side_embeddings():
    model, _, computer = make(3)
    computer(TripletCollator()([triplet_item(4, -1, 1), triplet_item(7, 4, 2)]))["triplet"].backward()
    for name in ("head", "fusion", "backbone", "projector"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    for name in ("query_embed", "fused_embed"):
        assert all(p.grad is None for p in getattr(model, name).parameters()), name


def test_triplet_batch_rejects_a_negative_with_the_anchor_label():
    _, _, computer = make(3)
    batch = TripletCollator()([triplet_item(4, 4, 1)])
    with pytest.raises(ValueError, match="anchor's label"):
        computer(batch)


def test_mixed_batch_runs_one_forward_and_keeps_the_detection_terms():
    model, _, computer = make(3)
    detection = RefDetCollator()([episode([4, 7], [4, 7, -1], 3)])
    triplet = TripletCollator()([triplet_item(7, -1, 4)])
    calls = []
    handle = model.head.register_forward_hook(lambda *_: calls.append(1))
    computer.eval()
    with torch.no_grad():
        mixed = computer({"batch_type": "mixed", "detection": detection, "triplet": triplet})
        assert len(calls) == 1
        alone = computer(detection)
    handle.remove()
    assert set(mixed) == {"box", "dfl", "cls", "cpe", "supcon", "triplet"}
    for name, value in alone.items():  # the triplet's target is among the detection's: same N, same terms
        torch.testing.assert_close(mixed[name], value, rtol=1e-4, atol=1e-5)


def test_merge_gives_a_detection_query_of_a_triplet_only_target_its_row():
    detection = RefDetCollator()([episode([4], [4, 9, -1], 5)])
    triplet = TripletCollator()([triplet_item(9, -1, 6)])
    merged, frames = merge_mixed(detection, triplet)
    assert frames == 3 and merged["query_images"].shape[0] == 5
    assert merged["support_labels"].tolist() == [4, 9]
    assert merged["targets"][:, :2].tolist() == [[0.0, 0.0], [1.0, 1.0]]  # query 1 shows target 9
    assert merged["triplets"].tolist() == [[1, 3, 4]]


# ---------------------------------------------------------------- batch norm frozen


@pytest.mark.parametrize("kind", ["detection", "triplet"])
def test_training_steps_leave_batchnorm_statistics_alone(kind):
    model, groups, computer = make(3)
    bn = batchnorm_state(model)
    norm = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    affine = norm.weight.detach().clone()
    optimizer = torch.optim.AdamW([*groups["main"], *groups["support"]], lr=1e-2)
    if kind == "detection":
        batch = RefDetCollator()([episode([4, 7], [4, 7, -1], 7)])
    else:
        batch = TripletCollator()([triplet_item(4, -1, 8), triplet_item(7, 4, 9)])
    for _ in range(2):
        optimizer.zero_grad()
        combine(computer(batch), computer.weights).backward()
        optimizer.step()
    after = batchnorm_state(model)
    assert bn.keys() == after.keys() and len(bn) > 50
    for name, value in bn.items():
        assert torch.equal(value, after[name]), name
    assert not torch.equal(affine, norm.weight)  # affine weights still train


def test_calibration_runs_the_training_pass_of_a_verifying_model():
    model = create_model(  # the backbone sees the queries alone
        imgsz=IMGSZ,
        support_size=SUPPORT,
        support_encoder="timm:mobilenetv2_100",
        verify_topk=2,
        verify_scale=2,
    ).eval()
    queries, refs = torch.rand(1, 3, IMGSZ, IMGSZ), torch.rand(1, 2, 3, SUPPORT, SUPPORT)
    seen = []
    model.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-1]))
    assert calibrate_batchnorm(model, lambda b: model(*b), [(queries, refs)]) > 0
    assert seen == [IMGSZ]  # the window as training sees it, not halved as an inference input at scale 2
    assert not model.training and not any(
        never_calibrated(m) for m in model.modules() if isinstance(m, BatchNorm)
    )


def test_train_mode_forward_equals_eval_mode_forward_with_frozen_batchnorm():
    g = torch.Generator().manual_seed(3)
    query, refs = (
        torch.rand(2, 3, IMGSZ, IMGSZ, generator=g),
        torch.rand(2, 2, 3, SUPPORT, SUPPORT, generator=g),
    )
    for freeze in (True, False):
        model, _, computer = make(3, freeze_bn=freeze)
        with torch.no_grad():
            computer.train()
            train = model(query, refs)["pred_scores"]
            computer.eval()
            evaluated = model(query, refs)["pred_scores"]
        assert torch.allclose(train, evaluated, atol=1e-5) is freeze


# ---------------------------------------------------------------- weight decay


def test_weight_decay_skips_norms_biases_and_logit_parameters():
    model, stage_groups, _ = make(3)
    projector = {id(p) for p in model.projector.parameters()}
    groups = {  # a second learning-rate group, whatever the support encoder trains
        "main": [p for p in stage_groups["main"] if id(p) not in projector],
        "support": [*stage_groups["support"], *model.projector.parameters()],
    }
    parts = param_groups(model, groups, {"main": 1e-3, "support": 1e-4}, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in parts if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {names[id(p)] for g in parts if g["weight_decay"] == 0 for p in g["params"]}
    trainable = {names[id(p)] for p in (*groups["main"], *groups["support"])}
    assert decayed | undecayed == trainable and not decayed & undecayed
    assert {"head.logit_scale", "head.logit_bias", "head.cv2.0.0.bn.weight", "head.cv2.0.2.bias"} <= undecayed
    assert "head.cv2.0.2.weight" in decayed
    for name, p in model.named_parameters():
        if name in decayed:
            assert p.ndim >= 2 and not name.endswith(".bias"), name
        if name in trainable and ("norm" in name or ".bn." in name):
            assert name in undecayed, name
    lrs = {g["name"]: g["lr"] for g in parts}
    assert lrs == {"main": 1e-3, "main_no_decay": 1e-3, "support": 1e-4, "support_no_decay": 1e-4}
    assert all(g["base_lr"] == g["lr"] for g in parts)
    head = list(model.head.parameters())
    with pytest.raises(ValueError, match="repeats"):
        param_groups(model, {"main": head, "support": head[:1]}, {"main": 1.0, "support": 1.0}, 0.05)


# ---------------------------------------------------------------- WIoU momentum


def test_wiou_running_mean_keeps_five_percent_of_its_start_after_the_run():
    for run in (40, 400):
        m = wiou_momentum(run)
        assert (1 - m) ** run == pytest.approx(0.05, rel=1e-9)
        wiou = WIoULoss(momentum=m)
        pred, target = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
        for _ in range(run):
            wiou(pred, target)
        l_iou = 1 - 1 / 7
        assert wiou.iou_mean.item() == pytest.approx(l_iou + 0.05 * (1 - l_iou), rel=1e-4)
    assert wiou_momentum(10_000) < wiou_momentum(100)
    assert math.isclose(
        LossComputer(
            create_model(imgsz=IMGSZ, support_size=SUPPORT), stage_spec(1).loss_weights(0), run_batches=250
        ).detection_loss.box_loss.wiou.momentum,
        wiou_momentum(250),
    )
    with pytest.raises(ValueError, match="at least 1"):
        wiou_momentum(0)


# ---------------------------------------------------------------- mixed batches


@pytest.fixture(scope="module")
def train_set(synth_root):
    return DroneDataset(synth_root, "train", cache_size=IMGSZ)


def test_every_mixed_batch_holds_episodes_and_triplets_by_ratio(train_set):
    episodes = EpisodicDataset(
        train_set, n_way=2, k_shot=1, n_query=2, imgsz=IMGSZ, support_size=SUPPORT, episodes=7
    )
    triplets = TripletDataset(episodes, samples_per_class=2)
    data = MixedDataset(episodes, triplets)
    assert (triplets_per_batch(2, 0.5), triplets_per_batch(3, 0.25), triplets_per_batch(1, 0.1)) == (2, 1, 1)
    sampler = MixedBatchSampler(data, batch_size=3, triplet_ratio=0.5, seed=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    seen = []
    for batch in batches:
        kinds = ["detection" if i < len(episodes) else "triplet" for i in batch]
        assert kinds == ["detection"] * 3 + ["triplet"] * 3
        seen += [i for i in batch if i < len(episodes)]
    assert set(seen) == set(range(7))
    assert batches == list(MixedBatchSampler(data, batch_size=3, triplet_ratio=0.5, seed=2))
    halves = [list(MixedBatchSampler(data, 3, 0.5, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 2 and halves[0] + halves[1] != batches
    collated = MixedCollator()([data[i] for i in batches[0]])
    assert collated["detection"]["query_images"].shape[0] == 3 * 2
    assert collated["triplet"]["triplets"].shape == (3, 3)
    with pytest.raises(ValueError, match="both kinds"):
        MixedCollator()([data[i] for i in batches[0][:3]])


def test_train_loader_with_triplets_never_yields_a_batch_without_detection(synth_root):
    cfg = load_config(
        None,
        data=str(synth_root),
        stage=3,
        use_triplet=True,
        triplet_ratio=0.3,
        batch_size=1,
        n_query=1,
        k_shot=1,
        imgsz=IMGSZ,
        support_size=224,  # a multiple of 14 and of 32: valid for every support encoder
        episodes_per_epoch=4,
        samples_per_class=2,
        workers=0,
    )
    dataset = DroneDataset(synth_root, "train", cache_size=IMGSZ)
    loader = build_train_loader(cfg, dataset, epoch=0)
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert batch["batch_type"] == "mixed"
        assert batch["detection"]["query_images"].shape[0] == 1
        assert batch["triplet"]["triplets"].shape[0] == 1
        assert batch["triplet"]["query_images"].shape[1:] == batch["detection"]["query_images"].shape[1:]


def test_trainer_builds_the_recipe(synth_root, tmp_path):
    from refdet_edge.training.trainer import Trainer

    cfg = load_config(
        None,
        data=str(synth_root),
        stage=3,
        use_triplet=True,
        epochs=3,
        batch_size=1,
        n_query=1,
        k_shot=1,
        imgsz=IMGSZ,
        support_size=224,
        support_encoder="siamese",  # the recipe does not depend on the encoder: the cheapest one
        episodes_per_epoch=2,
        samples_per_class=1,
        workers=0,
        device="cpu",
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg)
    wiou = trainer.computer.detection_loss.box_loss.wiou
    assert wiou.momentum == pytest.approx(wiou_momentum(3 * trainer.steps_per_epoch))
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert (group["weight_decay"] > 0) == (p.ndim >= 2 and not names[id(p)].endswith(".bias"))
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(never_calibrated(m) for m in norms)  # random init: estimated once
    ema_state = trainer.ema.ema.state_dict()
    for name, value in trainer.model.state_dict().items():
        if name.endswith("running_var"):
            torch.testing.assert_close(ema_state[name], value)
    trainer.computer.train()
    assert not any(m.training for m in norms) and trainer.model.head.training
