"""Start-up of the command line: ``refdet --help`` and each subcommand's ``--help`` in a fresh process (the
target of issue 13: under 1 s each). Figures: ``extra_info["seconds"]`` (median of the rounds) per command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from refdet_edge.cli import LAZY_COMMANDS

ROUNDS = 3
TARGET_S = 1.0


def _help_seconds(args: list[str]) -> float:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "refdet_edge.cli", *args, "--help"], check=True, capture_output=True, env=env
    )
    return time.perf_counter() - start


@pytest.mark.parametrize("command", ["", "info", *LAZY_COMMANDS])
def test_help_start_up(benchmark, command):
    args = command.split()
    benchmark.group = "cli --help"
    benchmark.pedantic(_help_seconds, args=(args,), rounds=ROUNDS, iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(seconds=round(seconds, 3), target_s=TARGET_S, met=seconds < TARGET_S)
    print(f"\nrefdet {command} --help: {seconds:.2f} s (target < {TARGET_S} s)")
