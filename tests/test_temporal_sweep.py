"""benchmarks/temporal_sweep.py: the rule that chose the temporal defaults, and the script on a tiny split."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import load_benchmark

from refdet_edge.evaluation.settings import TemporalConfig

sweep = load_benchmark("temporal_sweep")
DEFAULT = {"continuity": TemporalConfig().continuity, "max_gap": TemporalConfig().max_gap}
OTHER = {"continuity": 0.5, "max_gap": 10}


def test_fewer_videos_below_raw_outrank_a_larger_gain():
    scored = [(OTHER, [0.2, 0.1], [0.2, 0.1], 1), (DEFAULT, [0.01, 0.01], [0.01, 0.01], 0)]
    chosen, below, gain = sweep.choose(scored, TemporalConfig())
    assert (chosen, below, gain) == (DEFAULT, 0, pytest.approx(0.01))


def test_among_equally_many_below_the_best_mean_gain_wins_and_a_tie_keeps_the_default():
    scored = [(DEFAULT, [0.05, 0.05], [0.05, 0.05], 2), (OTHER, [0.0, 0.12], [0.0, 0.12], 2)]
    assert sweep.choose(scored, TemporalConfig())[0] == OTHER
    for order in (
        [(OTHER, [0.06], [0.07], 0), (DEFAULT, [0.06 + 1e-9], [0.07], 0)],
        [(DEFAULT, [0.06], [0.07], 0), (OTHER, [0.06 + 1e-9], [0.07 + 1e-9], 0)],
    ):
        assert sweep.choose(order, TemporalConfig())[0] == DEFAULT


def test_among_equal_smaller_gains_the_best_offline_gain_wins():
    """A setting of the offline mode alone (``split_weight``) leaves the online gain, often the smaller one,
    as it was: the offline gain breaks that tie."""
    scored = [(DEFAULT, [0.03, 0.03], [0.04, 0.04], 0), (OTHER, [0.03, 0.03], [0.05, 0.06], 0)]
    assert sweep.choose(scored, TemporalConfig()) == (OTHER, 0, pytest.approx(0.03))


def test_the_script_scores_every_combination_and_chooses_by_the_rule(tiny_split, monkeypatch):
    root, predictions = tiny_split
    monkeypatch.setattr(sweep, "GRID", {"confirm_frames": [1, 3], "max_gap": [0, 5], "split_weight": [0.0]})
    args = ["--data", str(root), "--set", str(predictions), "val", "0.5", "--workers", "1"]
    result = CliRunner().invoke(sweep.main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("{'confirm_frames'") for line in lines) == 4
    bare = next(line for line in lines if line.startswith("{'confirm_frames': 1, 'max_gap': 0,"))
    raw = float(bare.split(": ")[-1].split()[0])
    assert bare.split(": ")[-1].split()[:3] == [f"{raw:.3f}"] * 3  # nothing to add: the raw output
    assert lines[-1].startswith(
        "chosen: {'confirm_frames': 3, 'max_gap': 5, 'split_weight': 0.0} (0 video(s) below"
    )
    gain = float(lines[-1].split("mean smaller gain ")[1].rstrip(")"))
    assert gain > 0.1, result.output
