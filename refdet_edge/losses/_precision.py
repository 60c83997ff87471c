"""Losses run in float32 even when called inside an autocast (AMP) region."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def float32(fn: F) -> F:
    """Run ``fn`` with CUDA and CPU autocast disabled; inputs are cast to float32 by the losses themselves."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
