"""Evaluation figures as PNG files: PR curve, per-video ST-IoU, per-video presence timeline.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch, no display), so
they work headless and in threads. Each function writes one PNG, creating its folder, and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from refdet_edge.evaluation.metrics import MATCH_IOU, paired_iou

_COLOURS = {
    "target": "#4c72b0",
    "hit": "#55a868",
    "mislocalised": "#dd8452",
    "false positive": "#c44e52",
}


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def plot_pr_curve(
    pr_curve: Mapping[str, Sequence[float]],
    path: str | Path,
    operating_point: tuple[float, float] | None = None,
    title: str = "Precision-recall at IoU 0.5",
) -> Path:
    """Precision against recall from ``evaluate(...)["pr_curve"]``; ``operating_point`` is (recall, precision).

    Points where the library leaves precision undefined (negative) are not drawn.
    """
    points = [(r, p) for r, p in zip(pr_curve["recall"], pr_curve["precision"], strict=True) if p >= 0]
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if points:
        ax.plot(*zip(*points, strict=True), color=_COLOURS["target"], label="precision (interpolated)")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color=_COLOURS["false positive"], label="operating threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    if points or operating_point is not None:
        ax.legend(loc="lower left")
    return save_figure(fig, path)


def plot_st_iou_per_video(
    st_iou_by_video: Mapping[str, float], path: str | Path, title: str = "ST-IoU per video"
) -> Path:
    """One bar per video (in the given order) and a dashed line at the mean over videos."""
    names = list(st_iou_by_video)
    values = [st_iou_by_video[v] for v in names]
    fig = Figure(figsize=(max(5.0, 0.35 * len(names) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), values, color=_COLOURS["target"])
    if values:
        mean = sum(values) / len(values)
        ax.axhline(mean, color=_COLOURS["false positive"], linestyle="--")
        title = f"{title} (dashed: mean {mean:.3f})"
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="ST-IoU", title=title)
    return save_figure(fig, path)


def plot_timeline(
    gt: Mapping[int, Sequence[float]],
    pred: Mapping[int, Sequence[float]],
    num_frames: int,
    path: str | Path,
    title: str = "Target presence",
) -> Path:
    """Ground-truth presence against predicted presence along the video's frames.

    ``gt`` and ``pred`` map frame indices to one box each (``pred`` boxes may carry a fifth value, the score).
    Predicted frames are coloured by outcome: IoU >= 0.5 with the target (hit), overlapping a target frame with
    a lower IoU (mislocalised), or on a frame without the target (false positive).
    """
    both = sorted(gt.keys() & pred.keys())
    ious = dict(zip(both, paired_iou([gt[f] for f in both], [pred[f][:4] for f in both]), strict=True))

    def outcome(frame: int) -> str:
        if frame not in gt:
            return "false positive"
        return "hit" if ious[frame] >= MATCH_IOU else "mislocalised"

    fig = Figure(figsize=(10, 2.2), layout="constrained")
    ax = fig.add_subplot()
    rows = (
        (1, [(f, "target") for f in sorted(gt)]),
        (0, [(f, outcome(f)) for f in sorted(pred)]),
    )
    for y, labelled in rows:
        runs: dict[str, list[tuple[int, int]]] = {}
        # consecutive frames (frame - position is constant) with the same label form one bar
        for (_, label), group in groupby(enumerate(labelled), key=lambda e: (e[1][0] - e[0], e[1][1])):
            frames = [frame for _, (frame, _) in group]
            runs.setdefault(label, []).append((frames[0], len(frames)))
        for label, spans in runs.items():
            ax.broken_barh(spans, (y - 0.35, 0.7), color=_COLOURS[label])
    ax.set_yticks([0, 1], ["predicted", "ground truth"])
    ax.set(xlim=(0, max(num_frames, 1)), ylim=(-0.6, 1.6), xlabel="frame", title=title)
    fig.legend(
        handles=[Patch(color=c, label=label) for label, c in _COLOURS.items()],
        loc="outside lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    return save_figure(fig, path)
