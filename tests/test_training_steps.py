"""Training steps on hand-made batches: what each stage freezes, where gradients go, how terms combine."""

from __future__ import annotations

import pytest
import torch

from refdet_edge.data.collate import RefDetCollator, TripletCollator
from refdet_edge.losses import combine
from refdet_edge.models import create_model
from refdet_edge.training.prepare import LossComputer, query_class_index
from refdet_edge.training.stages import STAGES, stage_spec
from refdet_edge.training.trainer import grad_norms, lr_factor

IMGSZ, SUPPORT = 64, 64


def item(kind: str, support_labels: list[int], query_labels: list[int], boxes: list, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "kind": kind,
        "query_images": torch.rand(len(query_labels), 3, IMGSZ, IMGSZ, generator=g),
        "query_boxes": torch.tensor(boxes, dtype=torch.float32),
        "query_labels": torch.tensor(query_labels),
        "support_images": torch.rand(len(support_labels), 2, 3, SUPPORT, SUPPORT, generator=g),
        "support_labels": torch.tensor(support_labels),
    }


def detection_batch(seed: int = 0) -> dict:
    boxes = [[10, 12, 30, 40], [30, 30, 50, 60], [0, 0, 0, 0]]
    return RefDetCollator()([item("detection", [4, 7], [4, 7, -1], boxes, seed)])


def triplet_batch(seed: int = 1) -> dict:
    """Two triplets: target 4 against a background frame, target 7 against a frame of target 4."""
    return TripletCollator()(
        [
            item("triplet", [4], [4, -1], [[10, 12, 34, 40], [0, 0, 0, 0]], seed),
            item("triplet", [7], [7, 4], [[24, 20, 56, 52], [8, 8, 40, 36]], seed + 1),
        ]
    )


def make(stage: int, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(imgsz=IMGSZ, support_size=SUPPORT).train()
    groups = stage_spec(stage).apply(model)
    computer = LossComputer(model, stage_spec(stage).loss_weights(0.5)).train()
    return model, groups, computer


def test_query_class_index_marks_absent_targets():
    idx = query_class_index(torch.tensor([7, 4, -1, 9]), torch.tensor([4, 7]))
    assert idx.tolist() == [1, 0, -1, -1]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_step_changes_trainable_and_keeps_frozen_parameters(stage):
    model, groups, computer = make(stage)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW([*groups["main"], *groups["support"]], lr=1e-3)
    batch = {"batch_type": "mixed", "detection": detection_batch(), "triplet": triplet_batch()}
    combine(computer(batch), computer.weights).backward()
    optimizer.step()
    trainable = {id(p) for p in (*groups["main"], *groups["support"])}
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    frozen = {name for name, p in model.named_parameters() if id(p) not in trainable}
    assert not changed & frozen, sorted(changed & frozen)[:5]
    for module in stage_spec(stage).modules:
        assert any(n.startswith(module + ".") for n in changed), module
    support_changed = any(n.startswith("support.") for n in changed)
    assert support_changed == bool(groups["support"])  # the siamese encoder trains with the backbone
    assert ("projector.levels.0.weight" in changed) == (stage >= 2)


def test_triplet_only_step_trains_the_head_space_and_the_reference_path():
    model, _, computer = make(3)
    terms = computer(triplet_batch())
    assert set(terms) == {"triplet"} and terms["triplet"] > 0
    terms["triplet"].backward()
    norms = grad_norms(model)
    for group in ("projector", "backbone", "fusion", "head"):
        assert norms[group] > 0, group
    assert norms["support"] is None or norms["support"] > 0  # None: the siamese encoder is the backbone


def test_mixed_step_loss_is_weighted_sum_of_its_parts():
    _, _, computer = make(3)
    computer.eval()
    with torch.no_grad():
        mixed = computer({"batch_type": "mixed", "detection": detection_batch(), "triplet": triplet_batch()})
    assert set(mixed) == {"box", "dfl", "cls", "cpe", "supcon", "triplet"}
    weights = stage_spec(3).loss_weights(0.5)
    expected = sum(getattr(weights, name) * float(value) for name, value in mixed.items())
    assert float(combine(mixed, weights)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="both"):
        computer({"batch_type": "mixed", "detection": detection_batch(), "triplet": None})


def test_stage_one_uses_detection_terms_only():
    _, _, computer = make(1)
    assert set(computer(detection_batch())) == {"box", "dfl", "cls"}


def test_unknown_batch_type_fails_loudly():
    _, _, computer = make(1)
    with pytest.raises(ValueError, match="unknown batch_type 'episode'"):
        computer({"batch_type": "episode"})


def test_learning_rate_warms_up_then_decays():
    factors = [lr_factor(s, warmup=10, total=100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] == pytest.approx(0.01, abs=0.01)


def test_stage_loss_weights():
    stage_1, stage_2, stage_3 = (stage_spec(s).loss_weights(0.2) for s in (1, 2, 3))
    assert (stage_1.box, stage_1.dfl, stage_1.cls) == (7.5, 1.5, 0.5)
    assert stage_1.supcon == stage_1.cpe == stage_1.triplet == 0.0
    assert stage_2.supcon > 0 and stage_2.cpe > 0 and stage_2.triplet == 0.2
    assert stage_3.triplet == 0.2 and stage_spec(3).loss_weights(0.0).triplet == 0.0
    assert stage_spec(3).lr < stage_spec(2).lr
    with pytest.raises(ValueError, match="stage"):
        stage_spec(4)


def test_training_crops_keep_the_target_at_frame_scale(tmp_path):
    from refdet_edge.data.dataset import DroneDataset
    from refdet_edge.data.episodes import EpisodicDataset
    from refdet_edge.data.synth import generate_synthetic

    root = generate_synthetic(tmp_path / "synth", videos=2, frames=20, seed=1, workers=1)
    data = DroneDataset(root, "train", cache_size=320)
    full = EpisodicDataset(data, n_way=1, n_query=6, imgsz=320, support_size=56, augment=False, seed=4)
    cropped = EpisodicDataset(
        data, n_way=1, n_query=6, imgsz=320, support_size=56, augment=False, seed=4, crop=96
    )
    a, b = full[0], cropped[0]
    assert b["query_images"].shape == (6, 3, 96, 96)
    assert torch.equal(a["query_labels"], b["query_labels"])
    for box_full, box_crop, label in zip(a["query_boxes"], b["query_boxes"], a["query_labels"], strict=True):
        if label >= 0:
            size_full = box_full[2:] - box_full[:2]
            size_crop = box_crop[2:] - box_crop[:2]
            torch.testing.assert_close(size_crop, size_full)
            assert (box_crop >= 0).all() and (box_crop <= 96).all()
