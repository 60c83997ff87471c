"""Shared fixtures: a small synthetic dataset generated once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """3 synthetic videos x 40 frames (seed 0) with its frame cache at 320 px built lazily by the tests."""
    from refdet_edge.data.synth import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", videos=3, frames=40, seed=0)
