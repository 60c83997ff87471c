"""Temporal post-processing on synthetic detection streams: the four faults of the old filter (lock-on,
dropped starts, lagging box, stride), perfect detectors, flicker removal, gaps, the online delay, the offline
per-video threshold, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from refdet_edge.evaluation.metrics import evaluate, paired_iou, st_iou
from refdet_edge.evaluation.temporal import (
    MODES,
    OnlineTracker,
    TemporalConfig,
    apply_temporal,
    offline_threshold,
)
from refdet_edge.evaluation.video_threshold import otsu_split, score_split, video_threshold

TRACKING = ("online", "offline")
SIZE = (1280, 720)


def target_box(frame):
    """A 30x20 px target moving 3 px right and 1 px down per frame."""
    x, y = 100 + 3 * frame, 200 + frame
    return (x, y, x + 30.0, y + 20.0)


def detection(frame, score=0.9):
    return (*target_box(frame), score)


def iou(box, frame):
    return float(paired_iou([box[:4]], [target_box(frame)])[0])


SPURIOUS = (600.0, 50.0, 640.0, 90.0, 0.95)


@pytest.mark.parametrize("mode", TRACKING)
def test_a_stronger_detection_outside_the_gate_takes_over(mode):
    """Lock-on: a weak false track must not keep a strong true detection elsewhere out."""
    dets = {f: [(400.0, 300.0, 430.0, 320.0, 0.30)] for f in range(60)}
    for f in range(10, 60):
        dets[f].append(detection(f, 0.95))
    out = apply_temporal(dets, mode)
    assert all(iou(out[f], f) > 0.99 for f in range(10, 60))


@pytest.mark.parametrize("mode", TRACKING)
def test_a_lone_detection_elsewhere_while_the_target_is_in_view_is_kept(mode):
    """While a confirmed track says the target is in view, a frame whose only detection lies elsewhere (the
    detector picked the target, or a look-alike, somewhere else) is reported as raw reports it: such a frame
    holds the target, so the box costs nothing if wrong and scores if right."""
    dets = {f: [detection(f)] for f in range(20)}
    dets[10] = [SPURIOUS]
    out = apply_temporal(dets, mode)
    assert out[10][:4] == SPURIOUS[:4]
    assert sorted(out) == list(range(20))


@pytest.mark.parametrize("mode", TRACKING)
def test_a_confirmed_track_reports_its_first_frames(mode):
    """Dropped starts: the frames before confirmation are filled in once the track confirms."""
    out = apply_temporal({f: [detection(f)] for f in range(20)}, mode)
    assert sorted(out) == list(range(20))


@pytest.mark.parametrize("mode", TRACKING)
def test_the_box_follows_the_detector_after_a_wrong_start(mode):
    """Lagging box: the first detection is twice as wide, every later one is exact."""
    dets = {f: [detection(f)] for f in range(60)}
    x1, y1, x2, y2 = target_box(0)
    dets[0] = [(x1 - 15, y1, x2 + 15, y2, 0.9)]
    out = apply_temporal(dets, mode)
    smooth = TemporalConfig().smooth_frames
    assert all(iou(out[f], f) > 0.999 for f in range(smooth + 1, 60))


def perfect_stream(stride):
    """Two visits of the target among background frames, scored every ``stride``-th frame."""
    gt = {f: target_box(f) for f in [*range(30, 90), *range(150, 230)]}
    frames = list(range(0, 300, stride))
    dets = {f: [(*gt[f], 0.8)] if f in gt else [] for f in frames}
    return gt, dets, frames


@pytest.mark.parametrize("stride", [1, 5])
@pytest.mark.parametrize("mode", TRACKING)
def test_a_perfect_detector_keeps_st_iou_one(mode, stride):
    gt, dets, frames = perfect_stream(stride)
    out = apply_temporal(dets, mode, image_size=SIZE, frames=frames)
    position = {f: i for i, f in enumerate(frames)}
    score = st_iou(
        {position[f]: b for f, b in gt.items() if f in position},
        {position[f]: b for f, b in out.items()},
        len(frames),
    )
    assert score == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("mode", TRACKING)
def test_settings_count_frames_of_the_video_at_any_stride(mode):
    """At stride 5 the track survives between scored frames, bridges one missed scored frame (a gap of at
    least 1 frame of the video) and ends at two (at least 6 frames > max_gap 5)."""
    frames = list(range(0, 200, 5))
    dets = {f: [detection(f)] for f in frames}
    dets[50] = []
    dets[120] = dets[125] = []
    out = apply_temporal(dets, mode, frames=frames)
    assert 50 in out and iou(out[50], 50) > 0.999
    assert 120 not in out and 125 not in out
    assert 130 in out  # a new track from frame 130, confirmed at 135 and filled in back to 130


@pytest.mark.parametrize("mode", TRACKING)
def test_one_frame_false_positives_among_background_frames_are_removed(mode):
    num_frames = 200
    gt = {f: target_box(f) for f in range(50, 150)}
    rng = np.random.default_rng(2)
    raw = {f: [detection(f)] for f in gt if rng.random() > 0.15}  # 15% of target frames missed
    for f in [*range(0, 43, 7), *range(156, 200, 7)]:  # one frame each, more than max_gap apart
        x, y = rng.uniform(0, 600, 2)
        raw[f] = [(x, y, x + 40, y + 40, 0.95)]
    plain = evaluate({"v": gt}, {"v": apply_temporal(raw, "off")}, {"v": num_frames})
    smoothed = evaluate({"v": gt}, {"v": apply_temporal(raw, mode)}, {"v": num_frames})
    assert plain["overall"]["background_false_positives"] == 14
    assert smoothed["overall"]["background_false_positives"] == 0
    assert smoothed["overall"]["st_iou"] > plain["overall"]["st_iou"]


@pytest.mark.parametrize("mode", TRACKING)
def test_gaps_up_to_max_gap_are_bridged_by_interpolation(mode):
    dets = {f: [detection(f)] for f in [*range(10), *range(15, 30)]}  # frames 10-14 missed: a 5-frame gap
    out = apply_temporal(dets, mode, TemporalConfig(max_gap=5), frames=range(30))
    assert sorted(out) == list(range(30))
    assert all(iou(out[f], f) > 0.99 for f in range(10, 15))  # linear motion: interpolation is exact
    assert out[12][4] == pytest.approx(0.9)
    shorter = apply_temporal(dets, mode, TemporalConfig(max_gap=4), frames=range(30))
    assert sorted(shorter) == [*range(10), *range(15, 30)]


@pytest.mark.parametrize("mode", TRACKING)
def test_weak_detections_carry_a_track_between_strong_ones_but_never_start_or_extend_it(mode):
    """0.22 is under the 0.25 threshold, by less than what continuing the target earns at continuity 0.25 (a
    logit deficit of 0.17). Before a run's first strong detection and after its last, weak boxes that
    continue it (the target leaving, a look-alike where it was) are left out unless ``weak_ends``."""
    carry = TemporalConfig(continuity=0.25, weak_ends=False, split_weight=0.0)
    bridged = {f: [detection(f, 0.22 if 5 <= f < 10 else 0.9)] for f in range(20)}
    out = apply_temporal(bridged, mode, carry)
    assert sorted(out) == list(range(20))
    assert all(box[4] == pytest.approx(0.9) for box in out.values())  # the run's score
    assert apply_temporal({f: [detection(f, 0.22)] for f in range(20)}, mode, carry) == {}
    strong_then_weak = {f: [detection(f, 0.9 if f < 5 else 0.22)] for f in range(20)}
    assert sorted(apply_temporal(strong_then_weak, mode, carry)) == list(range(5))
    ends = replace(carry, weak_ends=True)
    assert sorted(apply_temporal(strong_then_weak, mode, ends)) == list(range(20))
    weak_then_strong = {f: [detection(f, 0.22 if f < 10 else 0.9)] for f in range(20)}
    assert sorted(apply_temporal(weak_then_strong, mode, carry)) == list(range(10, 20))
    long_bridge = {f: [detection(f, 0.22 if 5 <= f < 15 else 0.9)] for f in range(20)}
    both_ends = [*range(5), *range(15, 20)]
    assert sorted(apply_temporal(long_bridge, mode, replace(carry, keep_fraction=0.9))) == both_ends
    assert sorted(apply_temporal(long_bridge, mode, replace(carry, continuity=0.0))) == both_ends
    # online, a weak box is final `delay` frames later: kept if a strong detection has come by then
    expected = range(20) if mode == "offline" else [*range(5), *range(15 - carry.delay, 20)]
    assert sorted(apply_temporal(long_bridge, mode, carry)) == list(expected)


@pytest.mark.parametrize("mode", TRACKING)
def test_without_continuity_a_weak_box_is_kept_only_where_it_saves_switches(mode):
    """The defaults (continuity 0, switch cost 0.25): a weak box earns nothing for continuing the target, so
    the path takes it only where leaving and coming back would cost more (two switches, 0.5 logits) than its
    deficit under the threshold; otherwise the frame is bridged by interpolation (offline at the operating
    point itself: the strong target would raise this video's threshold)."""
    x1, y1, x2, y2 = target_box(10)
    off_track = (x1 + 4, y1, x2 + 4, y2)  # the detector's box, 4 px off the linear motion

    def stream(score):
        return {f: [(*off_track, score)] if f == 10 else [detection(f)] for f in range(20)}

    config = TemporalConfig(split_weight=0.0)
    kept = apply_temporal(stream(0.22), mode, config)  # a deficit of 0.17 logits: cheaper than two switches
    assert kept[10][:4] == pytest.approx(off_track)
    bridged = apply_temporal(stream(0.15), mode, config)  # 0.64 logits
    assert sorted(bridged) == list(range(20))
    assert bridged[10][:4] == pytest.approx(target_box(10))
    rewarded = apply_temporal(stream(0.15), mode, replace(config, continuity=0.5))  # 2 x 0.5 x IoU 0.76
    assert rewarded[10][:4] == pytest.approx(off_track)


@pytest.mark.parametrize("mode", TRACKING)
def test_a_weak_segment_inside_a_confirmed_run_is_reported_with_the_runs_score(mode):
    """Two weak boxes elsewhere (0.22, under the 0.25 threshold, cheaper than two switches) while the target
    is in view form a segment of their own in the target's presence run: they are reported with the run's
    score, so a file of the final boxes scores the same with the threshold as without it (offline at the
    operating point itself)."""
    elsewhere = (600.0, 300.0, 630.0, 320.0, 0.22)
    dets = {f: [elsewhere] if f in (10, 11) else [detection(f)] for f in range(20)}
    out = apply_temporal(dets, mode, TemporalConfig(split_weight=0.0))
    assert out[10][:4] == elsewhere[:4] and out[11][:4] == elsewhere[:4]
    assert all(box[4] == pytest.approx(0.9) for box in out.values())
    gt = {f: target_box(f) for f in range(20)}
    threshold = TemporalConfig().score_threshold
    assert st_iou(gt, out, 20, threshold) == pytest.approx(st_iou(gt, out, 20, 0.0))
    assert st_iou(gt, out, 20, threshold) == pytest.approx(18 / 20)


def test_otsu_split_is_the_midpoint_between_the_two_groups():
    assert otsu_split([0.1] * 5 + [0.9] * 3) == pytest.approx(0.5)
    assert otsu_split([0.0, 0.05, 0.05, 0.27, 0.27, 0.9, 0.9, 0.9]) == pytest.approx(0.585)
    assert otsu_split([0.4, 0.4]) is None and otsu_split([]) is None


def test_the_score_split_stays_in_the_valley_when_one_group_is_broad():
    """A narrow background group (0.68 +- 0.01) and a broad target group (0.78 +- 0.04): Otsu's split, made
    for equal spreads, cuts into the target group; the mixture's lies between the two groups."""
    rng = np.random.default_rng(0)
    background, target = rng.normal(0.68, 0.01, 40), rng.normal(0.78, 0.04, 26)
    scores = np.concatenate([background, target])
    assert (target < otsu_split(scores)).sum() >= 5
    assert background.max() < score_split(scores) < target.min()
    assert score_split([0.05] * 10 + [0.85] * 10) == pytest.approx(0.45, abs=0.01)
    assert score_split([0.1, 0.1, 0.9]) == otsu_split([0.1, 0.1, 0.9])  # a group of one: Otsu's
    assert score_split([0.3]) is None


def test_the_offline_threshold_rises_toward_the_videos_split_and_never_falls():
    config = TemporalConfig()  # threshold 0.25, split_weight 0.5
    assert video_threshold([0.05] * 10 + [0.85] * 10, config) == pytest.approx(0.25 + 0.5 * 0.2, abs=0.01)
    assert video_threshold([0.05] * 10 + [0.15] * 10, config) == 0.25  # the split is under the threshold
    assert video_threshold([0.05] * 10 + [0.85] * 10, replace(config, split_weight=0.0)) == 0.25


@pytest.mark.parametrize("mode", TRACKING)
def test_offline_drops_a_look_alike_just_over_the_threshold_where_the_target_stands_out(mode):
    """The target scores 0.9 on frames 0-29; a look-alike elsewhere scores 0.27, just over the 0.25 operating
    point, on the background frames 40-69; clutter scores 0.05 on 70-99. Online (each frame decided with 5
    frames of the future) reports the look-alike; offline, with the whole video's scores known, raises this
    video's threshold half the way to where they split (0.89, to 0.57) and drops it."""
    look_alike = (600.0, 300.0, 630.0, 320.0, 0.27)
    clutter = (50.0, 600.0, 60.0, 610.0, 0.05)
    dets = {f: [detection(f)] if f < 30 else [look_alike] if 40 <= f < 70 else [clutter] for f in range(100)}
    dets.update({f: [] for f in range(30, 40)})
    gt = {f: target_box(f) for f in range(30)}
    with_look_alike = [*range(30), *range(40, 70)]
    out = apply_temporal(dets, mode)
    if mode == "offline":
        assert sorted(out) == list(range(30))
        assert st_iou(gt, out, 100, 0.25) == pytest.approx(1.0)
        assert offline_threshold(dets) == pytest.approx(0.57, abs=0.005)  # the empty frames count as 0
        assert sorted(apply_temporal(dets, mode, TemporalConfig(split_weight=0.0))) == with_look_alike
    else:
        assert sorted(out) == with_look_alike


def test_online_output_is_final_after_the_stated_delay_and_matches_the_batch_form():
    config = TemporalConfig()
    dets = {f: [detection(f)] if 20 <= f < 60 else [] for f in range(100)}
    dets[80] = [SPURIOUS]
    tracker = OnlineTracker(config, SIZE)
    streamed = {}
    for frame, frame_dets in dets.items():
        released = tracker.update(frame, frame_dets)
        assert all(f <= frame - tracker.delay for f, _ in released)
        streamed.update(released)
    assert max(streamed) == 59 - 0 and 20 in streamed  # every final box was out by frame 59 + delay
    streamed.update(tracker.finish())
    assert streamed == apply_temporal(dets, "online", config, SIZE)
    assert tracker.delay == config.delay == 5


def jittery_stream(seed, num_frames=300):
    """A target seen in 70% of its frames with jittered boxes and varying scores, clutter, flickers."""
    rng = np.random.default_rng(seed)
    gt, dets = {}, {f: [] for f in range(num_frames)}
    pos, vel = np.array([300.0, 300.0]), np.zeros(2)
    for f in range(60, 220):
        vel += rng.normal(0, 0.3, 2)
        pos = np.clip(pos + vel, 80, 600)
        gt[f] = (pos[0] - 15, pos[1] - 10, pos[0] + 15, pos[1] + 10)
    quality = 0.0
    for f in range(num_frames):
        quality = 0.8 * quality + rng.normal(0, 0.5)
        if f in gt and rng.random() < 0.7:
            box = np.array(gt[f]) + rng.normal(0, 0.06, 4) * [30, 20, 30, 20]
            dets[f].append((*box, float(np.clip(0.45 + 0.2 * quality + rng.normal(0, 0.1), 0.02, 0.99))))
        for _ in range(rng.poisson(2)):
            x, y = rng.uniform(0, 1200, 2) * [1, 0.55]
            dets[f].append((x, y, x + 30, y + 30, float(rng.uniform(0.01, 0.18))))
        if rng.random() < 0.03:
            x, y = rng.uniform(0, 1200, 2) * [1, 0.55]
            dets[f].append((x, y, x + 30, y + 30, float(rng.uniform(0.25, 0.7))))
    return gt, dets, num_frames


@pytest.mark.parametrize("seed", range(4))
def test_tracking_raises_st_iou_over_each_frames_best_detection(seed):
    gt, dets, num_frames = jittery_stream(seed)
    raw = st_iou(gt, apply_temporal(dets, "off"), num_frames)
    for mode in TRACKING:
        assert st_iou(gt, apply_temporal(dets, mode, image_size=SIZE), num_frames) > raw + 0.05, mode


def test_smoothing_reduces_jitter():
    rng = np.random.default_rng(1)
    truth = np.array([target_box(f) for f in range(60)])
    noisy = truth + rng.normal(0, 2.0, size=truth.shape)
    out = apply_temporal(
        {f: [(*noisy[f], 0.9)] for f in range(60)}, "offline", TemporalConfig(smooth_frames=1)
    )
    smoothed = np.array([out[f][:4] for f in range(60)])
    assert np.abs(smoothed - truth).mean() < 0.7 * np.abs(noisy - truth).mean()


def test_off_returns_the_best_detection_of_each_frame_over_the_threshold():
    dets = {0: [(1.0, 2.0, 3.0, 4.0, 0.2), (5.0, 6.0, 7.0, 8.0, 0.3)], 1: [], 2: [(1.0, 1.0, 2.0, 2.0, 0.1)]}
    dets[7] = [SPURIOUS]
    assert apply_temporal(dets, "off") == {0: (5.0, 6.0, 7.0, 8.0, 0.3), 7: SPURIOUS}
    as_list = [dets[0], [], dets[2], [], [], [], [], dets[7]]
    assert apply_temporal(as_list, "off") == {0: (5.0, 6.0, 7.0, 8.0, 0.3), 7: SPURIOUS}


@pytest.mark.parametrize("mode", TRACKING)
def test_boxes_are_clipped_to_the_frame(mode):
    edge = {f: [(0.0, 0.0, 10.0, 10.0, 0.9)] for f in range(5)}
    out = apply_temporal(edge, mode, image_size=(8, 8))
    assert sorted(out) == list(range(5))
    for box in out.values():
        assert 0.0 <= box[0] < box[2] <= 8.0 and 0.0 <= box[1] < box[3] <= 8.0


def test_bad_input_is_refused():
    tracker = OnlineTracker()
    tracker.update(5, [])
    with pytest.raises(ValueError, match="increasing order"):
        tracker.update(3, [])
    with pytest.raises(ValueError, match="frame 2"):
        apply_temporal({2: [(5.0, 5.0, 1.0, 9.0, 0.9)]})
    with pytest.raises(ValueError, match="frame 4: has detections but is not one of the observed"):
        apply_temporal({4: [detection(4)]}, frames=[0, 5])
    with pytest.raises(ValueError, match="online, offline, off"):
        apply_temporal({}, "smooth")
    with pytest.raises(ValueError, match="confirm_frames"):
        TemporalConfig(confirm_frames=0)
    with pytest.raises(ValueError, match="keep_fraction"):
        TemporalConfig(keep_fraction=1.5)
    with pytest.raises(ValueError, match="weak_ends"):
        TemporalConfig(weak_ends="no")
    for weight in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="split_weight"):
            TemporalConfig(split_weight=weight)
    assert MODES == ("online", "offline", "off")


def test_without_path_weights_segments_or_gaps_the_output_is_the_raw_one():
    gt, dets, num_frames = jittery_stream(0)
    bare = TemporalConfig(continuity=0.0, switch_cost=0.0, confirm_frames=1, max_gap=0, split_weight=0.0)
    raw = {f: box[:4] for f, box in apply_temporal(dets, "off", bare).items()}
    for mode in TRACKING:  # the same boxes (a reported box's score is its run's highest)
        assert {f: box[:4] for f, box in apply_temporal(dets, mode, bare).items()} == raw, mode


@pytest.mark.parametrize("mode", TRACKING)
def test_with_continuity_the_path_stays_on_the_target_when_a_look_alike_outscores_it_for_a_frame(mode):
    dets = {f: [detection(f, 0.6)] for f in range(30)}
    look_alike = (700.0, 400.0, 730.0, 420.0, 0.62)
    dets[15] = [look_alike, detection(15, 0.55)]
    assert apply_temporal(dets, "off")[15] == look_alike
    assert iou(apply_temporal(dets, mode, TemporalConfig(continuity=0.25))[15], 15) > 0.999
    assert apply_temporal(dets, mode)[15][:4] == look_alike[:4]  # continuity 0 (the default): as raw
