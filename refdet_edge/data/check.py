"""``refdet data check``: validate a dataset, summarise it per video, and plot its box sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdet_edge.data.dataset import DroneDataset


@dataclass(frozen=True)
class VideoStats:
    video_id: str
    frames: int  # readable frames
    annotated: int
    unreadable: int
    box_sides: tuple[float, ...]  # sqrt(w * h) of every box, original pixels

    @property
    def background_share(self) -> float:
        return 1.0 - self.annotated / self.frames if self.frames else 0.0


def dataset_stats(dataset: DroneDataset) -> list[VideoStats]:
    """Per-video statistics of ``dataset`` (in its split)."""
    stats = []
    for video in dataset.videos:
        sides = tuple(
            float(np.sqrt((b[2] - b[0]) * (b[3] - b[1])))
            for f, b in video.boxes.items()
            if f in set(video.frames)
        )
        stats.append(
            VideoStats(
                video.video_id,
                len(video.frames),
                len(video.positive_frames),
                len(video.cached.bad_frames),
                sides,
            )
        )
    return stats


def format_stats(stats: list[VideoStats]) -> str:
    """A plain-text table: one line per video and a total line."""
    header = f"{'video':<28} {'frames':>7} {'annotated':>9} {'background':>10} {'unreadable':>10} {'box px min/med/max':>20}"
    lines = [header, "-" * len(header)]

    def sizes(values: tuple[float, ...]) -> str:
        if not values:
            return "-"
        return f"{min(values):.0f}/{float(np.median(values)):.0f}/{max(values):.0f}"

    for s in stats:
        lines.append(
            f"{s.video_id:<28} {s.frames:>7} {s.annotated:>9} {s.background_share:>10.1%} {s.unreadable:>10} "
            f"{sizes(s.box_sides):>20}"
        )
    frames = sum(s.frames for s in stats)
    annotated = sum(s.annotated for s in stats)
    all_sides = tuple(v for s in stats for v in s.box_sides)
    share = 1 - annotated / frames if frames else 0.0
    lines.append("-" * len(header))
    lines.append(
        f"{f'total ({len(stats)} videos)':<28} {frames:>7} {annotated:>9} {share:>10.1%} "
        f"{sum(s.unreadable for s in stats):>10} {sizes(all_sides):>20}"
    )
    return "\n".join(lines)


def plot_box_sizes(stats: list[VideoStats], path: Path) -> Path:
    """Histogram of box sizes (sqrt of area, original pixels, log-spaced bins) written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = np.array([v for s in stats for v in s.box_sides])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if sides.size:
        bins = np.geomspace(max(1.0, sides.min() * 0.9), sides.max() * 1.1, 30)
        ax.hist(sides, bins=bins, color="tab:blue", edgecolor="white")
        ax.set_xscale("log")
    ax.set_xlabel("box size: sqrt(width x height), original pixels")
    ax.set_ylabel("boxes")
    ax.set_title(f"{sides.size} boxes in {len(stats)} videos")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
