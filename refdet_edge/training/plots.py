"""Training figures (matplotlib, Agg): loss components, validation metrics and gradient norms."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

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
    if log and keys:
        ax.set_yscale("log")
    if keys:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_training(history: list[dict], grad_log: list[dict], out: Path) -> list[Path]:
    """Writes ``losses.png``, ``metrics.png`` and ``grad_norms.png`` into ``out``; returns their paths."""
    figures = [
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
    paths = []
    for name, rows, prefix, x_key, title, log in figures:
        fig = Figure(figsize=(7, 4))
        _panel(fig.add_subplot(), rows, prefix, x_key, title, log)
        fig.tight_layout()
        paths.append(save_figure(fig, out / name))
    return paths
