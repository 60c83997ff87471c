"""Shared set-up of the benchmark suites: ``bench_*.py`` collected by ``pytest benchmarks`` (``make bench``),
the sizes every pair runs at, and one table of every pair measured, printed at the end of the session.

Options: ``--bench-imgsz`` (640), ``--bench-support-size`` (224), ``--bench-repeats`` (20), ``--bench-device``
(cpu), ``--bench-backend`` (torch), ``--bench-support-encoder`` (the model's default). Each pair is measured
by :func:`refdet_edge.benchmark.run.run_pair`, the code ``refdet bench`` runs; its figures land in
pytest-benchmark's ``extra_info`` (``--benchmark-json``).
"""

from __future__ import annotations

import pytest

from refdet_edge.benchmark.report import PairResult, format_table
from refdet_edge.benchmark.run import run_pair
from refdet_edge.benchmark.settings import BenchSettings

RESULTS: list[PairResult] = []


def pytest_addoption(parser):
    group = parser.getgroup("refdet bench")
    group.addoption("--bench-imgsz", type=int, default=640, help="query frame size of every pair")
    group.addoption("--bench-support-size", type=int, default=224, help="reference image size")
    group.addoption("--bench-repeats", type=int, default=20, help="timed rounds (one call per side each)")
    group.addoption("--bench-device", default="cpu", help="cpu or cuda[:N]")
    group.addoption(
        "--bench-backend", default="torch", help="runtime of the predict pair: torch, onnx or trt"
    )
    group.addoption("--bench-support-encoder", default=None, help="siamese, dinov2 or timm:NAME")


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` (pytest's default patterns only match ``test_*.py``); files named on the
    command line are collected by pytest itself."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_settings(request, tmp_path_factory) -> BenchSettings:
    opt = request.config.getoption
    return BenchSettings(
        workdir=str(tmp_path_factory.mktemp("refdet_bench")),
        imgsz=opt("--bench-imgsz"),
        support_size=opt("--bench-support-size"),
        device=opt("--bench-device"),
        backend=opt("--bench-backend"),
        repeats=opt("--bench-repeats"),
        support_encoder=opt("--bench-support-encoder"),
    )


@pytest.fixture
def measure_pair(benchmark, bench_settings):
    """``measure_pair(key)``: run the pair once under pytest-benchmark (its time column is the duration of
    the whole pair measurement; the pair's own figures are in ``extra_info``), print its table row, and
    return the :class:`PairResult`. A pair this machine cannot run is skipped with the reason."""

    def measure(key: str) -> PairResult:
        benchmark.group = key
        result = benchmark.pedantic(run_pair, args=(key, bench_settings), rounds=1, iterations=1)
        if result.skipped:
            pytest.skip(f"{key}: {result.skipped}")
        benchmark.extra_info.update(result.to_dict())
        RESULTS.append(result)
        print("\n" + format_table([result]))
        return result

    return measure


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.section("refdet pairs (ratio = candidate / baseline)")
        terminalreporter.write_line(format_table(RESULTS))
