"""What every pair is measured at, and the thread counts both sides share."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil
import torch


def default_threads() -> int:
    """One thread per physical core (torch's own default), at least one."""
    return max(1, psutil.cpu_count(logical=False) or torch.get_num_threads())


@dataclass(frozen=True)
class BenchSettings:
    """What every pair is measured at. ``workdir`` holds prepared files (ONNX exports, a video).
    ``threads`` is the intra-op thread count of both torch and ONNX Runtime (0: :func:`default_threads`); one
    by default: a call then never waits for a second thread that another process holds up (on a shared
    2-core machine, 2-thread figures varied from round to round between 0.5x and 3x). ``support_encoder``
    is the model's encoder (None: the ``ModelConfig`` default); the sizes must follow its rules."""

    workdir: str
    imgsz: int = 640
    support_size: int = 224
    device: str = "cpu"
    backend: str = "torch"
    repeats: int = 20
    warmup: int = 3
    refs: int = 3
    threads: int = 1
    support_encoder: str | None = None
    verify_topk: int = 0
    verify_scale: int = 1

    def __post_init__(self) -> None:
        from refdet_edge.models import ModelConfig

        if self.imgsz <= 0 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32, got {self.imgsz}")
        ModelConfig(imgsz=self.imgsz, support_size=self.support_size, **self.model_overrides)
        if self.backend not in ("torch", "onnx", "trt"):
            raise ValueError(f"backend must be torch, onnx or trt, got {self.backend!r}")
        if self.repeats < 1 or self.warmup < 0 or self.refs < 1 or self.threads < 0:
            raise ValueError(
                "need repeats >= 1, warmup >= 0, refs >= 1 and threads >= 0, got "
                f"{self.repeats}, {self.warmup}, {self.refs}, {self.threads}"
            )

    @property
    def input_size(self) -> int:
        """Side of the model's per-frame input (the plain YOLOv8n baseline runs at ``imgsz``)."""
        return self.imgsz * self.verify_scale

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def num_threads(self) -> int:
        return self.threads or default_threads()

    @property
    def model_overrides(self) -> dict[str, str | int]:
        """Keyword overrides of ``create_model`` beyond the sizes."""
        overrides: dict[str, str | int] = {"verify_topk": self.verify_topk} if self.verify_topk else {}
        if self.verify_scale != 1:
            overrides["verify_scale"] = self.verify_scale
        return {"support_encoder": self.support_encoder, **overrides} if self.support_encoder else overrides


def apply_threads(settings: BenchSettings) -> None:
    """Give torch the settings' intra-op thread count and one inter-op thread (the interop pool can only be
    sized before its first use: a process that already used it keeps its size). ONNX Runtime sessions get
    the same count from :func:`refdet_edge.runtime.onnx_session`."""
    torch.set_num_threads(settings.num_threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
