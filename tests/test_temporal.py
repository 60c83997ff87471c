"""Temporal post-processing: hysteresis, gap bridging, one box per frame, smoothing, off-switch."""

from __future__ import annotations

import numpy as np
import pytest

from refdet_edge.evaluation.metrics import evaluate, paired_iou
from refdet_edge.evaluation.temporal import SingleTargetTracker, TemporalConfig, apply_temporal


def target_box(frame):
    """A 30x20 px target moving 3 px right and 1 px down per frame."""
    x, y = 100 + 3 * frame, 200 + frame
    return (x, y, x + 30.0, y + 20.0)


def detection(frame, score=0.9):
    return (*target_box(frame), score)


SPURIOUS = (600.0, 50.0, 640.0, 90.0, 0.95)


def test_single_spurious_detection_is_suppressed():
    dets = {f: [detection(f)] for f in range(20)}
    dets[40] = [SPURIOUS]
    dets[10] = [detection(10), SPURIOUS]  # a confident distractor inside the track
    out = apply_temporal(dets, TemporalConfig(min_hits=3))
    assert 40 not in out
    assert sorted(out) == list(range(2, 20))  # reported from the third consecutive hit on
    assert paired_iou([out[10][:4]], [target_box(10)])[0] > 0.8


def test_two_frame_gap_inside_a_track_is_bridged():
    dets = {f: [detection(f)] for f in [*range(10), *range(12, 25)]}
    out = apply_temporal(dets, TemporalConfig(min_hits=3, max_gap=2))
    assert sorted(out) == list(range(2, 25))
    for frame in (10, 11):
        assert paired_iou([out[frame][:4]], [target_box(frame)])[0] > 0.7
        assert out[frame][4] == pytest.approx(0.9)  # score of the last matched detection
    too_short = apply_temporal(dets, TemporalConfig(min_hits=3, max_gap=1))
    assert 10 not in too_short and 11 not in too_short
    assert sorted(too_short) == [*range(2, 10), *range(14, 25)]  # the track restarts and re-confirms


def test_gap_at_the_end_of_a_track_is_not_reported():
    out = apply_temporal({f: [detection(f)] for f in range(10)}, TemporalConfig(max_gap=5))
    assert max(out) == 9


def test_at_most_one_box_per_frame_following_the_target():
    rng = np.random.default_rng(0)
    dets = {}
    for f in range(30):
        corners = rng.uniform(0, 600, size=(3, 2))
        clutter = [(x, y, x + 25.0, y + 25.0, 0.6) for x, y in corners]
        dets[f] = [detection(f, 0.8), *clutter]
    out = apply_temporal(dets)
    assert out
    for frame, box in out.items():
        assert len(box) == 5
        assert paired_iou([box[:4]], [target_box(frame)])[0] > 0.7


def test_smoothing_reduces_jitter():
    rng = np.random.default_rng(1)
    truth = np.array([target_box(f) for f in range(60)])
    noisy = truth + rng.normal(0, 2.0, size=truth.shape)
    out = apply_temporal({f: [(*noisy[f], 0.9)] for f in range(60)}, TemporalConfig(min_hits=1))
    frames = list(range(10, 60))  # after the filter's velocity estimate settles
    smoothed = np.array([out[f][:4] for f in frames])
    assert np.abs(smoothed - truth[frames]).mean() < np.abs(noisy[frames] - truth[frames]).mean()


def test_off_switch_returns_highest_scoring_box_per_frame_unchanged():
    dets = {0: [(1.0, 2.0, 3.0, 4.0, 0.2), (5.0, 6.0, 7.0, 8.0, 0.3)], 1: [], 7: [SPURIOUS]}
    assert apply_temporal(dets, TemporalConfig(enabled=False)) == {0: (5.0, 6.0, 7.0, 8.0, 0.3), 7: SPURIOUS}
    as_list = [dets[0], [], [], [], [], [], [], dets[7]]
    assert apply_temporal(as_list, TemporalConfig(enabled=False)) == {
        0: (5.0, 6.0, 7.0, 8.0, 0.3),
        7: SPURIOUS,
    }


def test_low_scores_do_not_start_tracks_and_boxes_are_clipped():
    dets = {f: [detection(f, 0.3)] for f in range(10)}
    assert apply_temporal(dets, TemporalConfig(score_threshold=0.5)) == {}
    edge = {f: [(0.0, 0.0, 10.0, 10.0, 0.9)] for f in range(5)}
    for box in apply_temporal(edge, TemporalConfig(min_hits=1), image_size=(8, 8)).values():
        assert 0.0 <= box[0] < box[2] <= 8.0 and 0.0 <= box[1] < box[3] <= 8.0


def test_streaming_tracker_matches_batch_and_rejects_bad_input():
    dets = {f: [detection(f)] for f in [*range(8), *range(10, 16)]}
    tracker = SingleTargetTracker(TemporalConfig(max_gap=2))
    streamed = {}
    for frame, frame_dets in dets.items():  # frames 8 and 9 are skipped: treated as empty
        streamed.update(tracker.update(frame, frame_dets))
    assert streamed == apply_temporal(dets, TemporalConfig(max_gap=2))
    with pytest.raises(ValueError, match="increasing order"):
        tracker.update(3, [])
    with pytest.raises(ValueError, match="frame 2"):
        apply_temporal({2: [(5.0, 5.0, 1.0, 9.0, 0.9)]})
    with pytest.raises(ValueError, match="min_hits"):
        TemporalConfig(min_hits=0)


def test_temporal_post_processing_raises_st_iou_on_flickering_detections():
    num_frames = 200
    gt = {f: target_box(f) for f in range(50, 150)}
    rng = np.random.default_rng(2)
    raw = {f: [detection(f)] for f in gt if rng.random() > 0.15}  # 15% of target frames missed
    for f in rng.choice([f for f in range(num_frames) if f not in gt], size=15, replace=False):
        raw[int(f)] = [SPURIOUS]  # isolated one-frame false positives on background frames
    plain = evaluate({"v": gt}, {"v": apply_temporal(raw, TemporalConfig(enabled=False))}, {"v": num_frames})
    smoothed = evaluate({"v": gt}, {"v": apply_temporal(raw)}, {"v": num_frames})
    assert smoothed["overall"]["background_false_positives"] == 0
    assert smoothed["overall"]["st_iou"] > plain["overall"]["st_iou"]
