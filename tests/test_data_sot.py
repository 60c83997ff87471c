"""Importing single-object-tracking sequences (real UAV123 clips from ../shared/data/sot when present)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from refdet_edge.data.annotations import DatasetError, load_annotations
from refdet_edge.data.dataset import DroneDataset
from refdet_edge.data.episodes import EpisodicDataset
from refdet_edge.data.sot import Sequence, donor_tier, import_sot
from refdet_edge.data.sources import find_leaks, load_sources
from refdet_edge.data.splits import load_splits, read_splits, split_kind

SOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sot"
MAX_FRAMES = 30


@pytest.mark.skipif(
    not (SOT / "boat1").is_dir() or not (SOT / "wakeboard7").is_dir(), reason="no ../shared/data/sot"
)
def test_import_two_uav123_sequences(tmp_path):
    out = import_sot(
        [SOT / "boat1", SOT / "wakeboard7"], tmp_path / "sot", refs=3, absent_ratio=0.7, max_frames=MAX_FRAMES
    )
    boxes = load_annotations(out / "annotations" / "annotations.json")
    assert sorted(boxes) == ["boat1", "wakeboard7"]
    splits = load_splits(out / "splits.json")
    for name in ("boat1", "wakeboard7"):
        sample = out / "samples" / name
        frames = sorted((sample / "frames").glob("*.jpg"))
        assert len(boxes[name]) == MAX_FRAMES - 3  # every source frame has the object; 3 became references
        assert abs(1 - len(boxes[name]) / len(frames) - 0.7) < 0.03
        assert [int(p.stem) for p in frames] == list(range(len(frames)))
        assert all(cv2.imread(str(p)).shape == (720, 1280, 3) for p in frames[:: len(frames) // 5])
        refs = sorted((sample / "object_images").glob("*.jpg"))
        assert [p.name for p in refs] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
        sides = [max(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes[name].values()]
        for ref in refs:  # the box plus half its size on each side, from frames between annotated ones
            h, w = cv2.imread(str(ref)).shape[:2]
            assert min(sides) <= max(h, w) <= 2.2 * max(sides)
        spans = [splits[s][name][0] for s in ("train", "val", "test")]
        assert spans[0][0] == 0 and spans[-1][1] == len(frames)
        for start, end in spans:
            assert any(start <= f < end for f in boxes[name]), (name, start, end)
            assert any(f not in boxes[name] for f in range(start, end))
    dataset = DroneDataset(out, "train", cache_size=320)
    assert [v.video_id for v in dataset.videos] == ["boat1", "wakeboard7"]


def sequence(folder: Path, lines: list[str], frames: int = 12) -> Path:
    (folder / "img").mkdir(parents=True)
    for i in range(frames):
        image = np.full((60, 80, 3), 20 * i, np.uint8)
        image[..., 0] = ord(folder.name[0])  # sequences differ (identical frames would make them twins)
        cv2.imwrite(str(folder / "img" / f"{i + 1:06d}.jpg"), image)
    (folder / "groundtruth_rect.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_absent_rows_and_clipping(tmp_path):
    rows = ["11,11,20,10"] * 8 + ["NaN,NaN,NaN,NaN", "5,5,0,0", "70,50,30,30", "1 1 5 5"]
    a = sequence(tmp_path / "a", rows)
    b = sequence(tmp_path / "b", ["30,30,10,10"] * 12)
    out = import_sot([a, b], tmp_path / "out", refs=2, absent_ratio=0.5)
    boxes = load_annotations(out / "annotations" / "annotations.json")["a"]
    assert (10.0, 10.0, 30.0, 20.0) in boxes.values()
    assert (69.0, 49.0, 80.0, 60.0) in boxes.values()  # clipped to the 80x60 frame
    assert len(boxes) == 10 - 2  # 8 + 2 present rows, 2 used as references; NaN and 0-size rows are absent
    frames = len(list((out / "samples" / "a" / "frames").glob("*.jpg")))
    assert abs(1 - len(boxes) / frames - 0.5) < 0.1


def test_import_errors_name_file_and_sequence(tmp_path):
    a = sequence(tmp_path / "a", ["1,1,5,5"] * 11 + ["1,1,five,5"])
    b = sequence(tmp_path / "b", ["1,1,5,5"] * 12)
    with pytest.raises(DatasetError, match=r"groundtruth_rect.txt: video 'a': field 'line 12'"):
        import_sot([a, b], tmp_path / "out")
    with pytest.raises(DatasetError, match="at least two"):
        import_sot([b], tmp_path / "out")
    short = sequence(tmp_path / "c", ["1,1,5,5"] * 3)
    with pytest.raises(DatasetError, match="3 lines for 12 frames"):
        import_sot([short, b], tmp_path / "out")


# Coded sequences: every frame is flat colour R = 20 + 30 * code (the sequence), G = 6 * index (its position in
# img/), B = 0; so any written frame or reference crop tells, from its pixels alone, where it came from.
CODES = {"t0": 0, "t1": 1, "t2": 2, "v0": 3, "v1": 4, "s0": 5, "s1": 6, "tw": 7}


def coded(folder: Path, code: int, frames: int = 28, size: tuple[int, int] = (80, 60), rows=None) -> Path:
    (folder / "img").mkdir(parents=True)
    w, h = size
    for i in range(frames):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 2], image[..., 1] = 20 + 30 * code, 6 * i  # OpenCV writes BGR
        cv2.imwrite(str(folder / "img" / f"{i + 1:06d}.jpg"), image)
    rows = rows or [f"{w // 4},{h // 4},{w // 3},{h // 3}"] * frames
    (folder / "groundtruth_rect.txt").write_text("\n".join(rows) + "\n")
    return folder


def decode(image_bgr: np.ndarray) -> tuple[int, int]:
    """(code, frame index) of a coded frame or crop, from the pixels that are not grey letterbox bars."""
    content = image_bgr[..., 0] < 57
    r, g = np.median(image_bgr[..., 2][content]), np.median(image_bgr[..., 1][content])
    return round((r - 20) / 30), round(g / 6)


def content_box(image_bgr: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image_bgr[..., 0] < 57)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def written(out: Path, video: str) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((out / "samples" / video / "frames").glob("*.jpg"))]


def references(out: Path, video: str) -> list[tuple[int, int]]:
    return [
        decode(cv2.imread(str(p))) for p in sorted((out / "samples" / video / "object_images").glob("*.jpg"))
    ]


def split_frames(out: Path) -> dict[str, dict[str, list[int]]]:
    splits = load_splits(out / "splits.json")
    return {
        name: {vid: [f for s, e in spans for f in range(s, e)] for vid, spans in ranges.items()}
        for name, ranges in splits.items()
    }


SIZES = {
    "t0": (80, 60),
    "t1": (96, 54),
    "t2": (64, 64),
    "v0": (80, 60),
    "v1": (96, 54),
    "s0": (64, 48),
    "s1": (96, 54),
}


@pytest.fixture(scope="module")
def object_import(tmp_path_factory):
    """Seven coded sequences of four frame sizes, imported with an object split and thinned to stride 2."""
    root = tmp_path_factory.mktemp("object_split")
    seqs = [coded(root / "src" / name, CODES[name], 40, SIZES[name]) for name in SIZES]
    out = import_sot(
        seqs,
        root / "out",
        refs=2,
        absent_ratio=0.6,
        thin_to=20,
        gap=2,
        seen_fraction=0.25,
        val_objects=["v0", "v1"],
        test_objects=["s0", "s1"],
    )
    return out


def test_object_split_never_shows_a_held_out_object_to_training(object_import):
    out = object_import
    frames = split_frames(out)
    assert sorted(frames["train"]) == sorted(frames["seen"]) == ["t0", "t1", "t2"]
    assert sorted(frames["val"]) == ["v0", "v1"] and sorted(frames["test"]) == ["s0", "s1"]
    codes = {split: {CODES[v] for v in frames[split]} for split in ("train", "val", "test")}
    codes["seen"] = codes["train"]
    seen_by_split: dict[str, set[tuple[int, int]]] = {name: set() for name in frames}
    sources = json.loads((out / "sources.json").read_text())["videos"]
    for split, videos in frames.items():
        for video, indices in videos.items():
            images = written(out, video)
            for f in indices:
                code, index = decode(images[f])
                assert code in codes[split], (split, video, f)  # queries and absent frames alike
                seen_by_split[split].add((code, index))
                name = next(n for n, c in CODES.items() if c == code)
                assert sources[video]["frames"][f] == [name, index]  # provenance tells the truth
    trained = seen_by_split["train"] | {r for v in frames["train"] for r in references(out, v)}
    for held_out in ("val", "test", "seen"):
        assert not trained & seen_by_split[held_out], held_out
    for video in frames["train"]:  # references of a training object are its own frames
        assert {code for code, _ in references(out, video)} == {CODES[video]}
    spliced = sum(decode(img)[0] != CODES[v] for v in frames["test"] for img in written(out, v))
    assert spliced > 0  # test videos do hold absent frames, all from the other test object
    assert find_leaks(load_sources(out), *read_splits(out / "splits.json")) == []
    assert split_kind(out, "test") == "unseen objects" and split_kind(out, "seen") == "later frames"


def test_no_evaluated_frame_is_a_reference_frame_or_near_one(object_import, tmp_path):
    seqs = [coded(tmp_path / name, CODES[name], 40) for name in ("t0", "t1", "t2")]
    timed = import_sot(seqs, tmp_path / "time", refs=3, absent_ratio=0.5, thin_to=20, gap=2)
    reach = 2 * 2  # gap 2 imported frames at stride 2
    for out in (object_import, timed):
        frames = split_frames(out)
        refs = {ref for video in frames["train"] | frames.get("val", {}) for ref in references(out, video)}
        refs |= {ref for video in frames.get("test", {}) for ref in references(out, video)}
        for split in ("val", "test", "seen"):
            for video, indices in frames.get(split, {}).items():
                images = written(out, video)
                for f in indices:
                    code, index = decode(images[f])
                    near = [r for c, r in refs if c == code and abs(r - index) <= reach]
                    assert not near, (out.name, split, video, f, index, near)
    # time split: references lie in the train part, before its last gap frames (the third used to be in val)
    for video, indices in split_frames(timed)["val"].items():
        images = written(timed, video)
        first_val = min(index for code, index in (decode(images[f]) for f in indices) if code == CODES[video])
        assert all(r < first_val - reach for _, r in references(timed, video)), video


def test_every_video_has_one_frame_size_and_donors_are_letterboxed(object_import):
    out = object_import
    letterboxed = 0
    for video, (w, h) in SIZES.items():
        images = written(out, video)
        assert {img.shape for img in images} == {(h, w, 3)}, video
        for img in images:
            code, _ = decode(img)
            if code == CODES[video]:
                assert content_box(img) == (0, 0, w, h)
                continue
            dw, dh = SIZES[next(n for n, c in CODES.items() if c == code)]
            x1, y1, x2, y2 = content_box(img)
            assert abs((x2 - x1) / (y2 - y1) - dw / dh) < 0.1 * dw / dh, (video, code)  # aspect kept
            assert x1 == 0 or y1 == 0  # scaled to fit, not shrunk
            assert abs(x1 - (w - x2)) <= 2 and abs(y1 - (h - y2)) <= 2  # centred between the bars
            bars = np.ones((h, w), bool)
            bars[max(y1 - 4, 0) : y2 + 4, max(x1 - 4, 0) : x2 + 4] = False  # JPEG rings at the edge
            if bars.any():
                assert np.abs(img[bars].astype(int) - 114).max() <= 6  # grey PAD_VALUE bars
                letterboxed += 1
    assert letterboxed > 20  # the donors of these sequences have other aspect ratios


def test_donors_that_fit_without_bars_or_upscaling_come_first():
    def seq(w, h):
        return SimpleNamespace(width=w, height=h)

    assert donor_tier(seq(640, 360), seq(1280, 720)) == 0  # downscaled, no bars
    assert donor_tier(seq(1280, 720), seq(640, 360)) == 1  # upscaled: blurrier than the video's own frames
    assert donor_tier(seq(640, 338), seq(640, 360)) == 2  # thin side bars
    assert donor_tier(seq(320, 240), seq(640, 360)) == 3  # 4:3 video, 16:9 donor


def test_nan_rows_become_absent_frames_of_their_video(tmp_path):
    rows = ["5,5,20,20"] * 24
    rows[18:21] = ["NaN,NaN,NaN,NaN"] * 3
    a = coded(tmp_path / "a", 0, 24, rows=rows)
    b = coded(tmp_path / "b", 1, 24)
    out = import_sot([a, b], tmp_path / "out", refs=2, absent_ratio=0.5, gap=1)
    boxes = load_annotations(out / "annotations" / "annotations.json")["a"]
    own = {decode(img)[1]: f for f, img in enumerate(written(out, "a")) if decode(img)[0] == 0}
    assert {18, 19, 20} <= set(own)
    assert all(own[i] not in boxes for i in (18, 19, 20))
    assert all(own[i] in boxes for i in own if i not in (18, 19, 20))


def test_thin_to_keeps_every_kth_frame(tmp_path):
    a, b = coded(tmp_path / "a", 0, 35), coded(tmp_path / "b", 1, 35)
    out = import_sot([a, b], tmp_path / "out", refs=1, absent_ratio=0.0, thin_to=12, gap=1)
    own = sorted(decode(img)[1] for img in written(out, "a")) + [r for _, r in references(out, "a")]
    assert sorted(own) == list(range(0, 35, 3))  # stride ceil(35 / 12) = 3, 12 frames


def test_uav123_segments_stand_in_for_groundtruth(tmp_path):
    a = coded(tmp_path / "seg", 0, 12)
    lines = [f"{i + 1},2,10,10" for i in range(12)]
    (a / "groundtruth_rect.txt").unlink()
    (a / "seg_1.txt").write_text("\n".join(lines[:7]))
    (a / "seg_2.txt").write_text("\n".join(lines[6:]) + "\n")  # frame 7 ends one segment and starts the next
    seq = Sequence(a)
    assert [box[0] for box in seq.boxes] == [float(i) for i in range(12)]
    (a / "seg_3.txt").write_text("1,1,5,5\n1,1,5,5\n")
    with pytest.raises(DatasetError, match="3 segment files hold 15 lines for 12 frames"):
        Sequence(a)


def test_twins_never_donate_to_each_other_and_share_a_split(tmp_path):
    one = coded(tmp_path / "one", 7, 24)
    two = tmp_path / "two"
    shutil.copytree(one, two)  # the same frames, another object labelled
    (two / "groundtruth_rect.txt").write_text("\n".join(["40,30,10,10"] * 24) + "\n")
    other = coded(tmp_path / "other", 0, 24)
    out = import_sot([one, two, other], tmp_path / "out", refs=2, absent_ratio=0.6, gap=1)
    for video in ("one", "two"):
        images = written(out, video)
        assert sum(decode(img)[0] == 0 for img in images) > 0  # spliced frames come from "other" only
        assert len(images) == sum(decode(img)[0] in (0, 7) for img in images)
    dataset = DroneDataset(out, "train", cache_size=64)
    assert dataset.twins == {0: frozenset({2}), 2: frozenset({0})}  # "one" and "two" (after "other")
    with pytest.raises(DatasetError, match="same split"):
        import_sot([one, two, other], tmp_path / "bad", refs=2, gap=1, test_objects=["two", "other"])


def test_episodes_never_show_a_spliced_frame_to_its_donors_references(tmp_path):
    seqs = [coded(tmp_path / name, CODES[name], 30) for name in ("t0", "t1", "t2")]
    out = import_sot(seqs, tmp_path / "out", refs=2, absent_ratio=0.7, gap=1)
    dataset = DroneDataset(out, "train", cache_size=64)
    episodes = EpisodicDataset(dataset, n_way=2, n_query=6, imgsz=64, support_size=28, background_prob=0.6)
    donor_backgrounds = 0
    for i in range(150):
        rng = np.random.default_rng(i)
        chosen = episodes.choose_targets(rng)
        support = {v.label for v in chosen}
        for video, frame, label in episodes.queries(chosen, rng):
            shown = video.shows.get(frame, frozenset())
            assert not shown & support, (i, video.video_id, frame, shown, support)
            donor_backgrounds += label == -1 and bool(shown)
    assert donor_backgrounds > 50  # spliced frames do serve as backgrounds, to the other targets
    assert all(v.shows for v in dataset.videos)


SOT_MORE = SOT.parent / "sot_more"


@pytest.mark.skipif(not (SOT_MORE / "Dog1").is_dir() or not (SOT / "truck4").is_dir(), reason="no ../shared")
def test_import_sot_and_sot_more_together(tmp_path):
    names = {
        SOT: ["boat1", "truck4"],
        SOT_MORE: ["Dog1", "Woman", "S0601", "person9", "Gym", "Jogging-1", "Jogging-2"],
    }
    seqs = [root / n for root, ns in names.items() for n in ns]
    out = import_sot(
        seqs, tmp_path / "mix", refs=2, absent_ratio=0.6, thin_to=24, gap=1, test_objects=["boat1", "Dog1"]
    )
    for seq in seqs:
        size = Sequence(seq).sizes[0]
        assert {Image.open(p).size for p in (out / "samples" / seq.name / "frames").glob("*.jpg")} == {size}
    sources = load_sources(out)
    assert sources.twins == {"Jogging-1": frozenset({"Jogging-2"}), "Jogging-2": frozenset({"Jogging-1"})}
    assert find_leaks(sources, *read_splits(out / "splits.json")) == []
    person9 = Sequence(SOT_MORE / "person9", thin_to=24)
    out_of_view = {person9.indices[p] for p, box in enumerate(person9.boxes) if box is None}
    frames = {index: f for f, (seq, index) in enumerate(sources.frames["person9"]) if seq == "person9"}
    boxes = load_annotations(out / "annotations" / "annotations.json")["person9"]
    assert out_of_view and out_of_view <= set(frames)  # NaN rows are kept, as frames without a box
    assert not any(frames[i] in boxes for i in out_of_view)
    # truck4 imports from groundtruth_rect.txt; its UAV123 segments alone give the same boxes
    segments = tmp_path / "truck4"
    segments.mkdir()
    (segments / "img").symlink_to(SOT / "truck4" / "img")
    for name in ("truck4_1.txt", "truck4_2.txt"):
        shutil.copy(SOT / "truck4" / name, segments / name)
    truck4 = Sequence(SOT / "truck4")
    assert len(truck4.frames) == 421 and None not in truck4.boxes
    assert Sequence(segments).boxes == truck4.boxes
