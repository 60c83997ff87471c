"""Ranges of the dynamic axes (frame batch, targets, references per target) the engines are built for."""

from __future__ import annotations

DEFAULT_BATCH_MAX, DEFAULT_TARGETS_MAX, DEFAULT_REFS_MAX = 4, 4, 5


def profiles_for(batch_max: int, targets_max: int, refs_max: int) -> dict[str, list[int]]:
    """(min, opt, max) of each dynamic axis: one frame and one target are the common case, 3 references."""
    return {
        "batch": [1, 1, batch_max],
        "targets": [1, 1, targets_max],
        "refs": [1, min(3, refs_max), refs_max],
    }
