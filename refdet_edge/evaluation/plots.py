"""Evaluation figures as PNG files: PR curve, per-video ST-IoU of each stage, per-video presence timeline.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch, no display), so
they work headless and in threads. Each ``*_figure`` function builds one figure; each ``plot_*`` function
writes it as a PNG, creating its folder, and returns the path.
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


def _note(ax, text: str, y: float = 0.5) -> None:
    """A grey note in the middle of an empty plot."""
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=11)


def pr_curve_figure(
    pr_curve: Mapping[str, Sequence[float]],
    operating_point: tuple[float, float] | None = None,
    ap: float | None = None,
    detections: int | None = None,
    title: str = "Precision-recall at IoU 0.5",
    point_label: str = "operating threshold",
) -> Figure:
    """Precision against recall from ``evaluate(...)["pr_curve"]``, labelled with ``ap`` (AP at IoU 0.5);
    ``operating_point`` is (recall, precision). Points where the library leaves precision undefined
    (negative) are not drawn. A curve that is empty or zero throughout carries a note: no ground-truth box,
    no detections (``detections == 0``) or no correct detection."""
    points = [(r, p) for r, p in zip(pr_curve["recall"], pr_curve["precision"], strict=True) if p >= 0]
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if points:
        label = "precision (interpolated)" if ap is None else f"precision (interpolated), AP50 {ap:.3f}"
        ax.plot(*zip(*points, strict=True), color=_COLOURS["target"], label=label)
    if not pr_curve["recall"]:
        _note(ax, "no ground-truth box: precision-recall undefined")
    elif not any(p > 0 for _, p in points):
        _note(ax, "no detections" if detections == 0 else "no correct detection at IoU 0.5")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color=_COLOURS["false positive"], label=point_label)
    if ap is not None:
        title = f"{title}: AP50 {ap:.3f}"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    if points or operating_point is not None:
        ax.legend(loc="lower left")
    return fig


def plot_pr_curve(pr_curve: Mapping[str, Sequence[float]], path: str | Path, **options: object) -> Path:
    """:func:`pr_curve_figure` written to ``path``."""
    return save_figure(pr_curve_figure(pr_curve, **options), path)


_STAGE_COLOURS = ("#8c8c8c", "#4c72b0", "#55a868", "#dd8452")


def st_iou_figure(by_stage: Mapping[str, Mapping[str, float]], title: str = "ST-IoU per video") -> Figure:
    """Grouped bars: per video (in the given order) one bar per stage, each labelled with its value; a zero
    is drawn as an outlined line on the axis, so a video scored 0 stays visible. Dashed lines: each stage's
    mean over videos."""
    stages = list(by_stage)
    names = list(by_stage[stages[0]]) if stages else []
    width = 0.8 / max(len(stages), 1)
    fig = Figure(figsize=(max(6.0, 0.3 * len(names) * max(len(stages), 1) + 2.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for s, stage in enumerate(stages):
        colour = _STAGE_COLOURS[s % len(_STAGE_COLOURS)]
        values = [by_stage[stage][v] for v in names]
        xs = [i + (s - (len(stages) - 1) / 2) * width for i in range(len(names))]
        mean = sum(values) / len(values) if values else None
        label = stage if mean is None else f"{stage} (mean {mean:.3f})"
        ax.bar(xs, values, width * 0.92, color=colour, edgecolor=colour, linewidth=2, label=label)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", rotation=90, fontsize=7)
        if mean is not None:
            ax.axhline(mean, color=colour, linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set(ylim=(-0.04, 1.15), ylabel="ST-IoU", title=title)  # below 0: a zero bar's outline shows
    if names:
        ax.legend(loc="upper right", fontsize=8, ncol=max(len(stages), 1))
    else:
        _note(ax, "no video")
    return fig


def plot_st_iou_per_video(
    by_stage: Mapping[str, Mapping[str, float]], path: str | Path, **options: object
) -> Path:
    """:func:`st_iou_figure` written to ``path``."""
    return save_figure(st_iou_figure(by_stage, **options), path)


def timeline_figure(
    gt: Mapping[int, Sequence[float]],
    pred: Mapping[int, Sequence[float]],
    frames: Sequence[int],
    title: str = "Target presence",
) -> Figure:
    """Ground-truth presence against predicted presence along ``frames``, the scored frames of the video
    in its own frame numbers.

    ``gt`` and ``pred`` map frame numbers to one box each (``pred`` boxes may carry a fifth value, the score).
    Predicted frames are coloured by outcome: IoU >= 0.5 with the target (hit), overlapping a target frame with
    a lower IoU (mislocalised), or on a frame without the target (false positive).
    """
    scored = set(frames)
    gt = {f: b for f, b in gt.items() if f in scored}
    pred = {f: b for f, b in pred.items() if f in scored}
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
        # consecutive frame numbers (frame - position is constant) with the same label form one bar
        for (_, label), group in groupby(enumerate(labelled), key=lambda e: (e[1][0] - e[0], e[1][1])):
            run = [frame for _, (frame, _) in group]
            runs.setdefault(label, []).append((run[0], len(run)))
        for label, spans in runs.items():
            ax.broken_barh(spans, (y - 0.35, 0.7), color=_COLOURS[label])
    if not pred:
        ax.text(
            (min(frames, default=0) + max(frames, default=0) + 1) / 2, 0, "no detections",
            ha="center", va="center", color="0.4", fontsize=9,
        )  # fmt: skip
    ax.set_yticks([0, 1], ["predicted", "ground truth"])
    first, last = min(frames, default=0), max(frames, default=0) + 1
    ax.set(xlim=(first, max(last, first + 1)), ylim=(-0.6, 1.6), xlabel="frame of the video", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(
        handles=[Patch(color=c, label=label) for label, c in _COLOURS.items()],
        loc="outside lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    return fig


def plot_timeline(
    gt: Mapping[int, Sequence[float]],
    pred: Mapping[int, Sequence[float]],
    frames: Sequence[int],
    path: str | Path,
    **options: object,
) -> Path:
    """:func:`timeline_figure` written to ``path``."""
    return save_figure(timeline_figure(gt, pred, frames, **options), path)
