"""Metrics against hand-computed values and against faster-coco-eval run directly on the same boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster

from refdet_edge.data.annotations import DatasetError, save_annotations
from refdet_edge.evaluation.metrics import (
    evaluate,
    load_predictions,
    paired_iou,
    save_predictions,
    st_iou,
)

BOX = (100.0, 100.0, 140.0, 140.0)
SHIFTED = (110.0, 100.0, 150.0, 140.0)  # 30x40 overlap with BOX: IoU = 1200 / (1600 + 1600 - 1200) = 0.6
FAR = (500.0, 300.0, 540.0, 340.0)


def track(frames, box=BOX):
    return {f: box for f in frames}


# ---- ST-IoU ----


def test_paired_iou_by_hand():
    ious = paired_iou([BOX, (0, 0, 10, 10), BOX, BOX], [SHIFTED, (5, 0, 15, 10), FAR, BOX])
    assert ious == pytest.approx([0.6, 50 / 150, 0.0, 1.0])


def test_st_iou_empty_prediction_is_zero():
    assert st_iou(track(range(10)), {}, num_frames=100) == 0.0


def test_st_iou_background_only_prediction_is_zero_and_counts_in_denominator():
    gt = track(range(4))
    assert st_iou(gt, track(range(50, 53)), num_frames=100) == 0.0
    # a perfect prediction plus two background frames: 4 / (4 + 2)
    assert st_iou(gt, {**gt, 60: FAR, 61: FAR}, num_frames=100) == pytest.approx(4 / 6)


def test_st_iou_partial_overlap_and_missed_frame():
    gt = track(range(3))
    pred = {0: SHIFTED, 1: SHIFTED}  # frame 2 missed
    assert st_iou(gt, pred, num_frames=10) == pytest.approx((0.6 + 0.6) / 3)


def test_st_iou_several_intervals():
    gt = {**track(range(0, 3)), **track(range(10, 13))}
    pred = {**track(range(0, 3)), **track(range(10, 12)), 20: FAR}  # frame 12 missed, frame 20 spurious
    assert st_iou(gt, pred, num_frames=30) == pytest.approx(5 / 7)


def test_st_iou_perfect_is_one_and_nothing_to_find_is_one():
    gt = {**track(range(5)), **track(range(20, 30), SHIFTED)}
    assert st_iou(gt, gt, num_frames=40) == 1.0
    assert st_iou({}, {}, num_frames=40) == 1.0


def test_st_iou_uses_highest_scoring_box_above_threshold():
    gt = track(range(2))
    pred = {0: [(*FAR, 0.4), (*BOX, 0.9)], 1: [(*BOX, 0.3)]}  # frame 1 below the threshold: no prediction
    assert st_iou(gt, pred, num_frames=5, score_threshold=0.5) == pytest.approx(1 / 2)
    assert st_iou(gt, pred, num_frames=5, score_threshold=0.2) == pytest.approx(1.0)


def test_st_iou_mean_over_videos():
    gt = {"a": track(range(10)), "b": track(range(4)), "c": {}}
    pred = {"a": track(range(10)), "b": {0: SHIFTED, 1: SHIFTED}, "c": {}}
    result = evaluate(gt, pred, {"a": 20, "b": 20, "c": 20})
    per_video = {v: m["st_iou"] for v, m in result["per_video"].items()}
    assert per_video == pytest.approx({"a": 1.0, "b": 1.2 / 4, "c": 1.0})
    assert result["overall"]["st_iou"] == pytest.approx((1.0 + 0.3 + 1.0) / 3)


# ---- mAP ----


def coco_map_directly(gt_by_video, pred_by_video, num_frames_by_video):
    """The library on every frame of every video (background frames included), one image per frame."""
    images, anns, dets = [], [], []
    for video_id, num_frames in num_frames_by_video.items():
        for frame in range(num_frames):
            image_id = len(images) + 1
            images.append({"id": image_id})
            if frame in gt_by_video[video_id]:
                x1, y1, x2, y2 = gt_by_video[video_id][frame]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
            for x1, y1, x2, y2, score in pred_by_video[video_id].get(frame, []):
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
    coco_gt = COCO({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "t"}]})
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), iouType="bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def random_scenario(seed=0):
    rng = np.random.default_rng(seed)
    gt, pred, num_frames = {}, {}, {}
    for v in range(3):
        video_id = f"vid_{v}"
        n = 60
        num_frames[video_id] = n
        gt[video_id], pred[video_id] = {}, {}
        for frame in range(10 * v, 10 * v + 25):
            x, y = rng.uniform(0, 600), rng.uniform(0, 300)
            w, h = rng.uniform(8, 80, size=2)
            gt[video_id][frame] = (x, y, x + w, y + h)
            if rng.random() < 0.8:  # jittered detection, sometimes poor
                j = rng.normal(0, 0.25, size=4) * [w, h, w, h]
                box = (max(x + j[0], 0), max(y + j[1], 0), x + w + abs(j[2]) + 1, y + h + abs(j[3]) + 1)
                pred[video_id][frame] = [(*box, float(rng.uniform(0.2, 1.0)))]
        for frame in rng.choice(n, size=8, replace=False):  # false positives, often on background frames
            pred[video_id].setdefault(int(frame), []).append(
                (10.0, 10.0, 50.0, 40.0, float(rng.uniform(0, 1)))
            )
    return gt, pred, num_frames


def test_map_equals_faster_coco_eval_on_same_boxes():
    gt, pred, num_frames = random_scenario()
    result = evaluate(gt, pred, num_frames)
    map50, map50_95 = coco_map_directly(gt, pred, num_frames)
    assert 0.0 < map50_95 < map50 < 1.0
    assert result["overall"]["map50"] == pytest.approx(map50)
    assert result["overall"]["map50_95"] == pytest.approx(map50_95)
    one = {"vid_1": num_frames["vid_1"]}
    assert result["per_video"]["vid_1"]["map50"] == pytest.approx(coco_map_directly(gt, pred, one)[0])


def test_map_perfect_is_one_and_background_false_positive_lowers_it():
    gt = {"a": track(range(5, 15))}
    perfect = {"a": {f: [(*b, 0.8)] for f, b in gt["a"].items()}}
    assert evaluate(gt, perfect, {"a": 30})["overall"]["map50"] == pytest.approx(1.0)
    assert evaluate(gt, perfect, {"a": 30})["overall"]["map50_95"] == pytest.approx(1.0)
    with_fp = {"a": {**perfect["a"], 25: [(*BOX, 0.99)]}}  # same place, but frame 25 has no target
    result = evaluate(gt, with_fp, {"a": 30})["overall"]
    assert result["map50"] < 0.99
    assert result["map50"] == pytest.approx(coco_map_directly(gt, with_fp, {"a": 30})[0])


def test_map_undefined_without_ground_truth():
    result = evaluate({"a": {}}, {"a": {3: BOX}}, {"a": 10})
    assert result["overall"]["map50"] is None
    assert result["overall"]["st_iou"] == 0.0


# ---- operating-point figures ----


def test_false_positives_per_background_frame_and_per_minute_by_hand():
    gt = {"a": track(range(100))}
    pred = {
        "a": {
            **track(range(100)),
            50: [(*FAR, 0.9), (*BOX, 0.8)],  # the extra box on a target frame: mislocalised, not background
            200: FAR,
            201: [(*FAR, 0.7), (*SHIFTED, 0.6)],
            300: [(*FAR, 0.1)],  # below the threshold: ignored
        }
    }
    result = evaluate(gt, pred, {"a": 1500}, fps=25)["overall"]  # 1500 frames at 25 fps: one minute
    assert result["background_frames"] == 1400
    assert result["background_false_positives"] == 3
    assert result["false_positives"] == 4
    assert result["fp_per_background_frame"] == pytest.approx(3 / 1400)
    assert result["fp_per_minute"] == pytest.approx(4.0)
    assert result["precision"] == pytest.approx(100 / 104)
    assert result["recall"] == 1.0
    assert result["f1"] == pytest.approx(200 / 204)
    slower = evaluate(gt, pred, {"a": 1500}, fps={"a": 30})["overall"]
    assert slower["minutes"] == pytest.approx(1500 / 30 / 60)
    assert slower["fp_per_minute"] == pytest.approx(4 / (1500 / 30 / 60))


def test_precision_recall_with_mislocalised_and_missed_frames():
    gt = {"a": track(range(10))}
    # TP on frames 0-5 and 7 (IoU 0.6 >= 0.5); frame 6 mislocalised: one FP and one FN; 8, 9 missed: FN
    pred = {"a": {**track(range(6)), 6: FAR, 7: SHIFTED}}
    result = evaluate(gt, pred, {"a": 20})["overall"]
    assert (result["true_positives"], result["false_positives"], result["false_negatives"]) == (7, 1, 3)
    assert result["precision"] == pytest.approx(7 / 8)
    assert result["recall"] == pytest.approx(7 / 10)
    assert result["f1"] == pytest.approx(14 / 18)
    assert result["background_false_positives"] == 0


def test_small_object_recall():
    small, large = (10.0, 10.0, 30.0, 31.0), (10.0, 10.0, 60.0, 50.0)  # longer sides 21 and 50 px
    edge = (0.0, 0.0, 32.0, 8.0)  # longer side exactly 32: not small
    gt = {"a": {**track(range(4), small), **track(range(4, 8), large), 8: edge}}
    pred = {"a": {0: small, 1: small, **track(range(4, 8), large), 8: edge}}
    result = evaluate(gt, pred, {"a": 10})["overall"]
    assert result["small_objects"] == 4
    assert result["small_object_recall"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(7 / 9)
    assert evaluate({"a": track(range(3), large)}, {}, {"a": 5})["overall"]["small_object_recall"] is None


def test_evaluate_result_is_json_and_complete():
    gt, pred, num_frames = random_scenario(1)
    result = json.loads(json.dumps(evaluate(gt, pred, num_frames, score_threshold=0.3)))
    assert set(result) == {
        "score_threshold",
        "match_iou",
        "small_object_max_side",
        "num_videos",
        "overall",
        "per_video",
        "pr_curve",
    }
    assert set(result["per_video"]) == set(num_frames)
    assert len(result["pr_curve"]["recall"]) == len(result["pr_curve"]["precision"]) == 101
    for key in ("st_iou", "map50", "map50_95", "precision", "recall", "f1", "fp_per_background_frame"):
        assert 0.0 <= result["overall"][key] <= 1.0
    assert result["overall"]["frames"] == sum(num_frames.values())


# ---- bad input ----


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        ({"clip_7": {12: BOX}}, {}, r"video 'clip_7'.*frame 12.*outside the video's 10 frames"),
        (
            {"clip_7": {}},
            {"clip_7": {3: (50, 50, 40, 60)}},
            r"predictions: video 'clip_7'.*frame 3.*inverted",
        ),
        ({"clip_7": {}}, {"clip_7": {3: (1, 2, 3)}}, r"predictions: video 'clip_7'.*frame 3"),
        ({"clip_7": {}}, {"other": {}}, r"predictions: video 'other'.*not one of the videos"),
        ({"clip_7": {"4": BOX}}, {}, r"ground truth: video 'clip_7'.*integer"),
        ({"clip_7": {4: (1, 2, float("nan"), 9)}}, {}, r"ground truth: video 'clip_7'.*frame 4.*finite"),
        ({"clip_7": {}}, {"clip_7": {5: [(1, 2, 3, 4, float("inf"))]}}, r"video 'clip_7'.*frame 5.*finite"),
    ],
)
def test_malformed_input_names_video_and_field(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        evaluate(gt, pred, {"clip_7": 10})


# ---- prediction files ----


def test_prediction_file_round_trip_scores_one_against_itself(tmp_path):
    gt = {"a": {**track(range(3, 9)), **track(range(20, 24), SHIFTED)}, "b": {}}
    pred = {"a": {f: [(*b, 0.9), (*FAR, 0.2)] for f, b in gt["a"].items()}, "b": {}}
    path = save_predictions(tmp_path / "predictions.json", pred)
    data = json.loads(path.read_text())
    assert data[1] == {"video_id": "b", "detections": []}
    assert data[0]["detections"][0]["bboxes"][0] == {
        "frame": 3,
        "x1": 100,
        "y1": 100,
        "x2": 140,
        "y2": 140,
        "score": 0.9,
    }
    loaded = load_predictions(path, ["a", "b"])
    assert loaded.scored and loaded.boxes["a"][3] == [(*BOX, 0.9)]  # the best box of each frame
    result = evaluate(gt, loaded.boxes, {"a": 30, "b": 30})
    assert result["overall"]["st_iou"] == 1.0
    assert result["overall"]["map50"] == pytest.approx(1.0)


def test_raw_prediction_file_keeps_every_box_and_its_score(tmp_path):
    gt = {"a": track(range(3, 9))}
    pred = {"a": {f: [(*FAR, 0.2), (*BOX, 0.9)] for f in gt["a"]}}
    path = save_predictions(tmp_path / "raw.json", pred, every_box=True)
    loaded = load_predictions(path, ["a"])
    assert loaded.boxes["a"][3] == [(*BOX, 0.9), (*FAR, 0.2)]  # best first
    assert evaluate(gt, loaded.boxes, {"a": 30}) == evaluate(gt, pred, {"a": 30})


def test_prediction_file_with_unknown_or_missing_video_names_file_and_video(tmp_path):
    path = save_annotations(tmp_path / "p.json", {"a": {}, "stranger": {}}, key="detections")
    with pytest.raises(
        DatasetError, match=r"p\.json: video 'stranger'.*not a video of the split being scored"
    ):
        load_predictions(path, ["a"])
    with pytest.raises(DatasetError, match=r"p\.json: video 'c'.*missing"):
        load_predictions(path, ["a", "stranger", "c"])
    path.write_text('[{"video_id": "a", "annotations": []}]')
    with pytest.raises(DatasetError, match=r"p\.json: video 'a': field 'detections'"):
        load_predictions(path, ["a"])


# ---- figures ----


def test_plots_write_pngs_from_evaluate_output(tmp_path):
    from matplotlib.image import imread

    from refdet_edge.evaluation.plots import plot_pr_curve, plot_st_iou_per_video, plot_timeline

    gt, pred, num_frames = random_scenario(2)
    result = evaluate(gt, pred, num_frames)
    overall = result["overall"]
    per_video = {v: m["st_iou"] for v, m in result["per_video"].items()}
    paths = [
        plot_pr_curve(
            result["pr_curve"], tmp_path / "pr.png", operating_point=(overall["recall"], overall["precision"])
        ),
        plot_st_iou_per_video({"raw": per_video, "offline": per_video}, tmp_path / "st.png"),
        plot_timeline(
            gt["vid_0"],
            {f: max(d, key=lambda b: b[4]) for f, d in pred["vid_0"].items()},
            range(60),
            tmp_path / "t/0.png",
        ),
        plot_timeline({}, {}, [], tmp_path / "empty.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(path).shape[0] > 100


def texts(fig):
    ax = fig.axes[0]
    return [t.get_text() for t in ax.texts]


def test_st_iou_bars_carry_their_values_and_zero_stays_visible():
    from refdet_edge.evaluation.plots import st_iou_figure

    fig = st_iou_figure({"raw": {"a": 0.5, "b": 0.0}, "online": {"a": 0.625, "b": 0.25}})
    assert texts(fig) == ["0.50", "0.00", "0.62", "0.25"]
    zero_bar = fig.axes[0].patches[1]
    assert zero_bar.get_height() == 0.0 and zero_bar.get_linewidth() > 0  # an outline on the axis
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "raw (mean 0.250)",
        "online (mean 0.438)",
    ]


def test_pr_curve_names_its_ap_and_says_when_there_is_nothing_to_draw():
    from refdet_edge.evaluation.plots import pr_curve_figure

    gt, pred, num_frames = random_scenario(2)
    result = evaluate(gt, pred, num_frames)
    ap = result["overall"]["map50"]
    fig = pr_curve_figure(result["pr_curve"], ap=ap, detections=10)
    assert f"AP50 {ap:.3f}" in fig.axes[0].get_title()
    assert f"AP50 {ap:.3f}" in fig.axes[0].get_legend().get_texts()[0].get_text()
    assert texts(fig) == []
    empty = evaluate({"a": track(range(5))}, {"a": {}}, {"a": 10})
    assert texts(pr_curve_figure(empty["pr_curve"], ap=0.0, detections=0)) == ["no detections"]
    wrong = evaluate({"a": track(range(5))}, {"a": {1: [(*FAR, 0.9)]}}, {"a": 10})
    assert texts(pr_curve_figure(wrong["pr_curve"], detections=1)) == ["no correct detection at IoU 0.5"]


def test_timeline_runs_in_the_videos_own_frame_numbers():
    from refdet_edge.evaluation.plots import timeline_figure

    frames = range(850, 1000)
    fig = timeline_figure(track(range(900, 920)), {f: (*BOX, 0.9) for f in range(905, 930)}, frames)
    ax = fig.axes[0]
    assert ax.get_xlim() == (850, 1000)
    starts = sorted(path.vertices[:, 0].min() for c in ax.collections for path in c.get_paths())
    assert starts == [900, 905, 920]  # ground truth from 900; hits from 905, false positives from 920
    assert texts(timeline_figure(track(range(900, 920)), {}, frames)) == ["no detections"]
