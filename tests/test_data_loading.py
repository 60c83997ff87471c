"""Episodes, triplets, mixing and the batch contract the model and trainer consume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refdet_edge.data.collate import MixedCollator, RefDetCollator, TripletCollator
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.mixed import MixedBatchSampler, MixedDataset
from refdet_edge.data.triplet import TripletDataset

IMGSZ, SUPPORT = 320, 112


@pytest.fixture(scope="module")
def train_set(synth_root):
    return DroneDataset(synth_root, "train", cache_size=IMGSZ)


def test_splits_partition_frames_and_labels_are_global(synth_root, train_set):
    val = DroneDataset(synth_root, "val", cache_size=IMGSZ)
    everything = DroneDataset(synth_root, None, cache_size=IMGSZ)
    assert [v.label for v in everything.videos] == [0, 1, 2]
    assert [v.label for v in train_set.videos] == [v.label for v in val.videos] == [0, 1, 2]
    for t, v in zip(train_set.videos, val.videos, strict=True):
        assert not set(t.frames) & set(v.frames)
        assert t.positive_frames and v.positive_frames and t.background_frames
    image, box = train_set.load_frame(train_set.videos[0], train_set.videos[0].positive_frames[0])
    assert image.shape == (180, 320, 3) and image.dtype == np.uint8
    x1, y1, x2, y2 = train_set.videos[0].boxes[train_set.videos[0].positive_frames[0]]
    np.testing.assert_allclose(box, np.array([x1, y1, x2, y2]) * 0.25, rtol=1e-6)


def test_no_splits_file_means_every_frame_with_a_warning(synth_root, tmp_path, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".cache", "splits.json"))
    with caplog.at_level("WARNING"):
        dataset = DroneDataset(root, "val", cache_size=IMGSZ)
    assert dataset.num_frames == 3 * 40
    assert "no splits.json" in caplog.text


def test_episodes_hold_background_and_mismatched_queries(train_set):
    episodes = EpisodicDataset(train_set, n_way=1, k_shot=2, n_query=6, imgsz=IMGSZ, support_size=SUPPORT)
    kinds = {"positive": 0, "background": 0, "mismatched": 0}
    for i in range(12):
        item = episodes[i]
        assert item["query_images"].shape == (6, 3, IMGSZ, IMGSZ)
        assert item["support_images"].shape == (1, 2, 3, SUPPORT, SUPPORT)
        support = int(item["support_labels"][0])
        assert int(item["query_labels"][0]) == support  # the first query is always positive
        for label in item["query_labels"].tolist():
            kinds["background" if label == -1 else "positive" if label == support else "mismatched"] += 1
    assert all(count > 0 for count in kinds.values()), kinds


def test_episodes_are_deterministic_and_change_with_epoch(train_set):
    episodes = EpisodicDataset(
        train_set, n_way=2, k_shot=1, n_query=2, imgsz=IMGSZ, support_size=SUPPORT, seed=3
    )
    first = episodes[5]
    again = episodes[5]
    torch.testing.assert_close(first["query_images"], again["query_images"])
    episodes.set_epoch(1)
    other = episodes[5]
    assert not torch.equal(first["query_images"], other["query_images"])


def test_detection_batch_contract(train_set):
    episodes = EpisodicDataset(train_set, n_way=2, k_shot=3, n_query=4, imgsz=IMGSZ, support_size=SUPPORT)
    items = [episodes[i] for i in range(3)]
    batch = RefDetCollator()(items)
    assert batch["batch_type"] == "detection"
    assert (
        batch["query_images"].shape == (12, 3, IMGSZ, IMGSZ) and batch["query_images"].dtype == torch.float32
    )
    assert 0.0 <= float(batch["query_images"].min()) and float(batch["query_images"].max()) <= 1.0
    n = batch["support_images"].shape[0]
    assert batch["support_images"].shape == (n, 3, 3, SUPPORT, SUPPORT)
    labels = batch["support_labels"].tolist()
    assert len(set(labels)) == n == len({lab for it in items for lab in it["support_labels"].tolist()})
    targets = batch["targets"]
    assert targets.dtype == torch.float32 and targets.shape[1] == 6
    assert batch["query_labels"].dtype == torch.int64 and batch["is_background"].dtype == torch.bool
    rows = {int(r[0]): r for r in targets}
    for b, label in enumerate(batch["query_labels"].tolist()):
        has_row = label in labels
        assert bool(batch["is_background"][b]) is (not has_row)
        assert (b in rows) is has_row
        if has_row:
            row = rows[b]
            assert labels[int(row[1])] == label
            assert 0 <= row[2] < row[4] <= IMGSZ and 0 <= row[3] < row[5] <= IMGSZ
    assert batch["is_background"].any() and (~batch["is_background"]).any()


def test_collator_merges_a_target_shared_by_two_episodes():
    def episode(support_labels, query_labels):
        q = len(query_labels)
        return {
            "query_images": torch.zeros(q, 3, 8, 8),
            "query_boxes": torch.tensor([[1.0, 1.0, 4.0, 4.0]] * q),
            "query_labels": torch.tensor(query_labels),
            "support_images": torch.zeros(len(support_labels), 1, 3, 4, 4),
            "support_labels": torch.tensor(support_labels),
        }

    batch = RefDetCollator()([episode([0, 1], [0, 2]), episode([1, 3], [2, -1])])
    assert batch["support_labels"].tolist() == [0, 1, 3]
    assert batch["targets"][:, :2].tolist() == [[0.0, 0.0]]  # label 2 is in no support set; -1 is background
    assert batch["is_background"].tolist() == [False, True, True, True]
    merged = RefDetCollator()([episode([0, 1], [3]), episode([1, 3], [1])])
    assert merged["targets"][:, :2].tolist() == [
        [0.0, 2.0],
        [1.0, 1.0],
    ]  # mismatched in ep. 0, not in the batch


@pytest.mark.parametrize("strategy", ["background", "cross_class", "mixed"])
def test_triplet_negatives_never_carry_the_anchor_label(train_set, strategy):
    episodes = EpisodicDataset(train_set, n_way=1, k_shot=2, n_query=1, imgsz=IMGSZ, support_size=SUPPORT)
    triplets = TripletDataset(episodes, samples_per_class=6, negative_strategy=strategy)
    assert len(triplets) == 18
    batch = TripletCollator()([triplets[i] for i in range(len(triplets))])
    assert batch["batch_type"] == "triplet"
    assert batch["query_images"].shape == (36, 3, IMGSZ, IMGSZ)  # detection-style frames: positive, negative
    assert batch["support_images"].shape == (3, 2, 3, SUPPORT, SUPPORT)
    cls, pos, neg = batch["triplets"].T
    anchors = batch["support_labels"][cls]
    assert torch.equal(anchors, torch.arange(3).repeat_interleave(6))
    assert torch.equal(batch["query_labels"][pos], anchors)
    negatives = batch["query_labels"][neg]
    assert not (negatives == anchors).any()
    boxes = batch["query_boxes"]
    assert ((boxes[pos, 2:] > boxes[pos, :2]).all(1)).all()  # every positive frame has its target's box
    assert (boxes[neg][negatives < 0] == 0).all() and ((boxes[neg][negatives >= 0, 2:] > 0).all(1)).all()
    kinds = set(negatives.clamp(max=0).tolist())
    if strategy == "background":
        assert kinds == {-1}
    elif strategy == "cross_class":
        assert kinds == {0}
    else:
        assert kinds == {-1, 0}


def test_mixed_batches_collate_by_kind(train_set):
    detection = EpisodicDataset(train_set, n_way=2, k_shot=1, n_query=2, imgsz=IMGSZ, support_size=SUPPORT)
    mixed = MixedDataset(detection, TripletDataset(detection, samples_per_class=4))
    indices = next(iter(MixedBatchSampler(mixed, batch_size=3, triplet_ratio=0.4, seed=1)))
    batch = MixedCollator()([mixed[i] for i in indices])
    assert batch["batch_type"] == "mixed"
    assert batch["detection"]["query_images"].shape[0] == 3 * 2
    assert batch["triplet"]["triplets"].shape == (2, 3)  # round(3 * 0.4 / 0.6) triplets beside 3 episodes
    assert batch["triplet"]["query_images"].shape[1:] == batch["detection"]["query_images"].shape[1:]


def test_dataloader_workers_give_the_same_batches(train_set):
    episodes = EpisodicDataset(
        train_set, n_way=2, k_shot=1, n_query=2, imgsz=IMGSZ, support_size=SUPPORT, episodes=4
    )

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            episodes, batch_size=2, num_workers=workers, collate_fn=RefDetCollator()
        )
        return list(loader)

    for a, b in zip(batches(0), batches(2), strict=True):
        torch.testing.assert_close(a["query_images"], b["query_images"])
        torch.testing.assert_close(a["targets"], b["targets"])


def test_crop_windows_hold_letterbox_bars_alike_for_positives_and_backgrounds(train_set):
    """Windows are cut from the letterboxed frame: the grey bars of a 16:9 frame appear in training as at
    inference, and as often around a target as elsewhere (grey must never mean "target here")."""
    episodes = EpisodicDataset(train_set, imgsz=IMGSZ, support_size=SUPPORT, crop=128, augment=False)

    def has_bar(image: torch.Tensor) -> bool:  # a whole row or column of grey PAD_VALUE
        grey = ((image * 255).round() == 114).all(dim=0)
        return bool(grey.all(dim=1).any() or grey.all(dim=0).any())

    share = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensor ops on a busy 2-core machine cost 100x more with 2 threads
    try:
        for kind in ("positive_frames", "background_frames"):
            rng = np.random.default_rng(0)
            hits = []
            for i in range(300):
                video = train_set.videos[i % len(train_set.videos)]
                image, box = episodes.query(video, int(rng.choice(getattr(video, kind))), rng)
                assert image.shape == (3, 128, 128)
                if kind == "positive_frames":
                    assert 0 <= box[0] < box[2] <= 128 and 0 <= box[1] < box[3] <= 128
                hits.append(has_bar(image))
            share[kind] = float(np.mean(hits))
    finally:
        torch.set_num_threads(threads)
    assert 0.3 < share["positive_frames"] < 0.95 and 0.3 < share["background_frames"] < 0.95, share
    assert abs(share["positive_frames"] - share["background_frames"]) < 0.12, share
