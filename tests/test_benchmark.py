"""The measuring code of ``refdet bench`` and ``benchmarks/``: ratios, targets, interleaving, table, JSON, and
each pair's sides at tiny sizes. No timing is asserted."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from refdet_edge.benchmark import PAIR_KEYS, inference, measure, predict_pair, report, training_pair
from refdet_edge.benchmark.memory import side_peak_memory
from refdet_edge.benchmark.pairs import PAIRS, Target
from refdet_edge.benchmark.run import run_pair
from refdet_edge.benchmark.settings import BenchSettings
from refdet_edge.cli import cli

TINY = {"imgsz": 64, "support_size": 64, "repeats": 1, "warmup": 0}


def test_ratio_and_targets():
    assert report.ratio(3.0, 2.0) == 1.5
    assert report.ratio(None, 2.0) is None and report.ratio(1.0, 0.0) is None
    at_most, at_least = Target(1.25, True, "<= 1.25x"), Target(3.0, False, ">= 3x")
    assert at_most.met(1.25) and not at_most.met(1.26)
    assert at_least.met(3.0) and not at_least.met(2.9)
    assert at_most.met(None) is None


def test_settings_reject_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        BenchSettings(str(tmp_path), imgsz=100)
    with pytest.raises(ValueError, match="support_size must be a positive multiple of 14"):
        BenchSettings(str(tmp_path), support_size=100, support_encoder="dinov2")
    with pytest.raises(ValueError, match="backend"):
        BenchSettings(str(tmp_path), backend="tflite")
    with pytest.raises(ValueError, match="threads"):
        BenchSettings(str(tmp_path), threads=-1)


def test_interleaved_latencies_alternate_order_and_divide_by_samples():
    calls = []
    base = measure.Side(lambda: calls.append("b"))
    cand = measure.Side(lambda: calls.append("c"), samples=4)
    times = measure.interleaved_latencies(base, cand, repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["b", "c", "b", "c", "c", "b", "b", "c"]
    assert len(times.baseline) == len(times.candidate) == len(times.candidate_cpu) == 3
    assert all(t >= 0 for t in times.baseline + times.candidate + times.baseline_cpu + times.candidate_cpu)


def test_cpu_time_leaves_out_waiting_and_counts_work():
    def busy():
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    sleeper, worker = measure.Side(lambda: time.sleep(0.02)), measure.Side(busy)
    times = measure.interleaved_latencies(sleeper, worker, repeats=2, warmup=0, device=torch.device("cpu"))
    assert min(times.baseline) >= 20 and max(times.baseline_cpu) < 10  # waiting: wall time, little CPU
    assert min(times.candidate_cpu) >= 20 and times.spread(cpu=True)["min"] > 2


def test_round_ratios_and_their_spread():
    times = measure.Latencies([10.0, 10.0, 20.0, 10.0], [12.0, 11.0, 20.0, 30.0], [1.0] * 4, [2.0] * 4)
    assert times.round_ratios() == [1.2, 1.1, 1.0, 3.0] and times.round_ratios(cpu=True) == [2.0] * 4
    spread = times.spread()
    assert spread["min"] == 1.0 and spread["max"] == 3.0
    assert spread["median"] == pytest.approx(1.15)  # one disturbed round moves the median little
    assert spread["q1"] <= spread["median"] <= spread["q3"]
    one_round = measure.Latencies([5.0], [10.0], [5.0], [10.0])
    assert one_round.spread() == dict.fromkeys(("min", "q1", "median", "q3", "max"), 2.0)


def test_result_dict_table_and_json(tmp_path):
    result = report.PairResult(
        "features_vs_plain",
        "return_features=False",
        "return_features=True",
        "ms/frame",
        baseline_ms=10.0,
        candidate_ms=10.6,
        spread={"min": 0.98, "q1": 1.02, "median": 1.05, "q3": 1.07, "max": 1.31},
        cpu_spread={"min": 1.01, "q1": 1.03, "median": 1.04, "q3": 1.05, "max": 1.06},
        baseline_memory_mb=200.0,
        candidate_memory_mb=220.0,
        latency_target="latency <= 1.03x",
        latency_met=False,
        memory_target="memory <= 1.05x",
        memory_met=False,
    )
    skipped = report.PairResult(
        "predict_vs_model", "model only", "predict pipeline", "ms/frame", skipped="no CUDA"
    )
    entry = result.to_dict()
    assert entry["latency_ratio"] == 1.05 and entry["memory_ratio"] == 1.1  # the median round, not 10.6 / 10
    assert entry["latency_ratio_spread"]["max"] == 1.31 and entry["cpu_time_ratio"] == 1.04
    assert entry["baseline_median_ms"] == 10.0 and entry["latency_met"] is False
    table = report.format_table([result, skipped])
    assert "features_vs_plain" in table and "1.05x" in table and "1.100x" in table
    assert "1.02-1.07 (0.98-1.31)" in table and "1.04x" in table
    assert "latency <= 1.03x: missed; memory <= 1.05x: missed" in table
    assert "skipped: no CUDA" in table
    settings = BenchSettings(str(tmp_path), **TINY)
    support = {"encoder": "siamese", "params": 1, "gflops": 0.5, "median_ms": 3.0}
    report.write_json(tmp_path / "out.json", report.results_json([result, skipped], settings, support))
    payload = json.loads((tmp_path / "out.json").read_text())
    assert list(payload["pairs"]) == ["features_vs_plain", "predict_vs_model"]
    assert payload["pairs"]["predict_vs_model"]["skipped"] == "no CUDA"
    env = payload["environment"]
    assert env["imgsz"] == 64 and env["device"] == "cpu" and env["threads"] >= 1
    assert len(env["load_average"]) == 3 and payload["support_path"]["encoder"] == "siamese"


def test_every_pair_has_a_stable_key_and_a_target():
    assert (
        tuple(PAIRS)
        == PAIR_KEYS
        == (
            "detection_vs_yolov8n",
            "uncached_vs_cached",
            "features_vs_plain",
            "onnx_detector_vs_yolov8n",
            "train_mixed_vs_detection",
            "predict_vs_model",
        )
    )
    assert all(spec.latency_target is not None for spec in PAIRS.values())


def test_decode_yolov8_gives_xyxy_and_scores():
    pred = torch.zeros(1, 84, 2)
    pred[0, :4, 0] = torch.tensor([10.0, 20.0, 4.0, 6.0])
    pred[0, 4 + 7, 0] = 0.9
    boxes, scores = inference.decode_yolov8(pred)
    assert boxes.shape == (1, 2, 4) and scores.shape == (1, 2, 80)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([8.0, 17.0, 12.0, 23.0]))
    assert float(scores[0, 0, 7]) == pytest.approx(0.9)


def test_train_batches_are_collated_episodes_and_triplets():
    detection, mixed = training_pair.train_batches(64, 56)
    episodes, items = training_pair.train_items()
    b = episodes * training_pair.N_QUERY
    assert detection["batch_type"] == "detection" and mixed["batch_type"] == "mixed"
    assert detection["query_images"].shape == (b, 3, 64, 64)
    assert detection["support_images"].shape == (
        episodes * training_pair.N_WAY,
        training_pair.K_SHOT,
        3,
        56,
        56,
    )
    assert len(detection["targets"]) == int((~detection["is_background"]).sum()) == b - episodes
    assert torch.equal(mixed["detection"]["query_images"], detection["query_images"])
    triplet = mixed["triplet"]
    assert triplet["triplets"].shape == (items - episodes, 3)
    assert bool((triplet["query_labels"][triplet["triplets"][:, 2]] == -1).all())  # negatives: background


@pytest.mark.parametrize("key", ["detection_vs_yolov8n", "uncached_vs_cached", "features_vs_plain"])
def test_inference_pairs_run_both_sides(tmp_path, key):
    settings = BenchSettings(str(tmp_path), **TINY)
    result = run_pair(key, settings, memory=False)
    assert result.skipped is None and result.repeats == 1
    assert result.baseline_ms > 0 and result.candidate_ms > 0 and result.latency_met is not None
    assert result.baseline_memory_mb is None
    assert torch.get_num_threads() == settings.num_threads


def test_a_verify_scale_model_is_fed_its_larger_input_and_yolov8n_the_plain_size(tmp_path):
    settings = BenchSettings(str(tmp_path), imgsz=64, support_size=32, verify_topk=2, verify_scale=2)
    assert settings.input_size == 128
    assert inference.frames(settings).shape[-1] == 128
    assert inference.frames(settings, baseline=True).shape[-1] == 64
    result = run_pair("detection_vs_yolov8n", settings, memory=False)  # each side takes its own size
    assert result.skipped is None and result.baseline_ms > 0 and result.candidate_ms > 0
    with pytest.raises(ValueError, match="verify_scale"):
        BenchSettings(str(tmp_path), imgsz=64, verify_scale=2)  # a scale without a verifier


@pytest.mark.slow
def test_training_pair_counts_samples(tmp_path):
    settings = BenchSettings(str(tmp_path), **TINY)
    result = run_pair("train_mixed_vs_detection", settings, memory=False)
    episodes, items = training_pair.train_items()
    assert result.extra["baseline_samples_per_step"] == episodes
    assert result.extra["candidate_samples_per_step"] == items
    assert result.extra["step_time_ratio"] == pytest.approx(result.latency_ratio * items / episodes, rel=1e-2)


@pytest.mark.slow
def test_predict_loop_streams_chunks_writes_boxes_and_cycles_the_video(tmp_path):
    settings = BenchSettings(str(tmp_path), **TINY)
    predict_pair.prepare_predict(settings)
    shared: dict = {}
    side = predict_pair.build_predict_vs_model(settings, "candidate", shared)
    assert side.samples == predict_pair.CHUNK
    loop = side.run
    loop.rt.conf = 0.0  # random weights: every anchor is a candidate
    calls = predict_pair.VIDEO_FRAMES // predict_pair.CHUNK + 1  # past the end: the video restarts
    boxes = sum(loop() for _ in range(calls))
    assert loop.frames.next()[0] == predict_pair.CHUNK
    del loop, side
    rows = (tmp_path / "predict_torch.csv").read_text().splitlines()
    assert rows[0] == "frame,x1,y1,x2,y2,score" and len(rows) - 1 == boxes
    assert all(0 <= int(row.split(",")[0]) < predict_pair.VIDEO_FRAMES for row in rows[1:])
    assert predict_pair.build_predict_vs_model(settings, "baseline", shared).run() is None


@pytest.mark.slow
def test_memory_is_measured_in_a_fresh_process(tmp_path):
    settings = BenchSettings(str(tmp_path), **TINY)
    taken, floor = side_peak_memory("features_vs_plain", "baseline", settings)
    assert floor > 0 and taken > 0


def test_unavailable_backends_are_skipped_with_a_reason(tmp_path):
    settings = BenchSettings(str(tmp_path), **TINY, backend="trt")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_pair("predict_vs_model", settings)
    assert result.skipped and "CUDA" in result.skipped


def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--imgsz", "64", "--support-size", "64", "--repeats", "1"]
    args += ["--warmup", "0", "--pair", "features_vs_plain", "--no-memory", "--json", str(out)]
    args += ["--support-encoder", "siamese"]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    assert "features_vs_plain" in run.output and "latency <= 1.03x" in run.output
    assert "support path (siamese, 3 refs at 64)" in run.output
    payload = json.loads(out.read_text())
    assert set(payload["pairs"]) == {"features_vs_plain"} and payload["support_path"]["encoder"] == "siamese"
    assert payload["pairs"]["features_vs_plain"]["latency_ratio_spread"]["median"] > 0


def test_bench_command_rejects_bad_sizes():
    run = CliRunner().invoke(cli, ["bench", "--device", "cpu", "--imgsz", "100"])
    assert run.exit_code != 0 and "multiple of 32" in run.output
