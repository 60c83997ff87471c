"""Training figures (matplotlib, Agg): loss components, validation metrics and gradient norms."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from refdet_edge.evaluation.plots import save_figure


def _panel(ax, rows: list[dict], prefix: str, x_key: str, title: str, log: bool = False) -> None:
    keys = sorted({k for row in rows for k in row if k.startswith(prefix)})
    xs = [row[x_key] for row in rows]
    for key in keys:
        ys = [row.get(key) for row in rows]
        ax.plot(
            xs, [float("nan") if y is None else y for y in ys], marker="o", ms=3, label=key[len(prefix) :]
        )
    ax.set_title(title)
    ax.set_xlabel(x_key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
    if log and keys:
        ax.set_yscale("log")
    if keys:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def training_figures(history: list[dict], grad_log: list[dict]) -> dict[str, Figure]:
    """``losses.png``, ``metrics.png`` and ``grad_norms.png`` by file name."""
    panels = [
        ("losses.png", history, "loss/", "epoch", "training losses (epoch mean, unweighted)", True),
        ("metrics.png", history, "val/", "epoch", "validation metrics", False),
        (
            "grad_norms.png",
            [{"step": r["step"], **{f"g/{k}": v for k, v in r.items() if k != "step"}} for r in grad_log],
            "g/",
            "step",
            "gradient norm per module (before clipping)",
            True,
        ),
    ]
    figures = {}
    for name, rows, prefix, x_key, title, log in panels:
        fig = Figure(figsize=(7, 4))
        _panel(fig.add_subplot(), rows, prefix, x_key, title, log)
        fig.tight_layout()
        figures[name] = fig
    return figures


def plot_training(history: list[dict], grad_log: list[dict], out: Path) -> list[Path]:
    """Writes the :func:`training_figures` into ``out``; returns their paths."""
    return [save_figure(fig, out / name) for name, fig in training_figures(history, grad_log).items()]
