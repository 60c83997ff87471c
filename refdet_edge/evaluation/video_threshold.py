"""The offline mode's threshold of one video, from that video's own scores.

A detector's scores are not calibrated across videos: one set of reference photos matches its video's
background better than another. A video that shows the target somewhere has two groups of per-frame best
scores, the background's (and look-alikes') and the target's. With the whole video known, the offline mode
of :mod:`refdet_edge.evaluation.temporal` raises the operating point ``split_weight`` of the way to where
those groups split (:func:`score_split`), never lowering it (:func:`video_threshold`), so that look-alikes
just over the operating point, in a video where the target scores well above it, become weak detections.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refdet_edge.evaluation.settings import TemporalConfig

SPREAD_FLOOR = 1e-3  # the least spread of a score group (scores are probabilities)


def otsu_split(values: Sequence[float]) -> float | None:
    """Otsu's split of ``values`` into a low and a high group (the largest between-group variance), exactly
    on the sorted values rather than on histogram bins: the midpoint between the two groups, None when all
    values are equal."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    i = np.arange(1, len(x))  # the low group is x[:i]
    if not len(i) or x[0] == x[-1]:
        return None
    low = np.cumsum(x)[:-1]
    between = i * (len(x) - i) * (low / i - (x.sum() - low) / (len(x) - i)) ** 2
    between[x[1:] == x[:-1]] = -1.0  # a split runs between two different values
    best = int(between.argmax())
    return float(x[best] + x[best + 1]) / 2


def score_split(values: Sequence[float], iterations: int = 50) -> float | None:
    """Where ``values`` (a video's per-frame best scores) divide into a low group (background, look-alikes)
    and a high one (the target): the score where the two components of a two-Gaussian mixture, fitted by EM
    from :func:`otsu_split`'s groups, are equally likely. Unlike Otsu's split (equal spreads), it stays in
    the valley when one group is narrow and the other broad. Otsu's split where a group holds fewer than two
    values; None when all values are equal."""
    x = np.asarray(values, dtype=np.float64)
    start = otsu_split(x)
    if start is None or min((x <= start).sum(), (x > start).sum()) < 2:
        return start
    groups = (x[x <= start], x[x > start])
    weight = np.array([len(g) for g in groups]) / len(x)
    mean = np.array([g.mean() for g in groups])
    spread = np.array([g.std() for g in groups]) + SPREAD_FLOOR

    def log_density(at: np.ndarray) -> np.ndarray:  # (N, 2): each component's, weighted
        return np.log(weight) - np.log(spread) - 0.5 * ((at[:, None] - mean) / spread) ** 2

    for _ in range(iterations):
        log_p = log_density(x)
        share = np.exp(log_p - log_p.max(1, keepdims=True))
        share /= share.sum(1, keepdims=True)
        total = share.sum(0) + 1e-12
        weight, mean = total / len(x), (share * x[:, None]).sum(0) / total
        spread = np.sqrt((share * (x[:, None] - mean) ** 2).sum(0) / total) + SPREAD_FLOOR
    low, high = np.argsort(mean)
    grid = np.linspace(mean[low], mean[high], 256)
    log_p = log_density(grid)
    crossed = np.nonzero(log_p[:, high] >= log_p[:, low])[0]
    return float(grid[crossed[0]]) if len(crossed) else start


def video_threshold(best_scores: Sequence[float], config: TemporalConfig) -> float:
    """The offline operating point of one video from the best score of each of its observed frames (0 where
    it has none): ``score_threshold`` raised ``split_weight`` of the way to the :func:`score_split` of those
    scores, never lowered."""
    split = score_split(best_scores) if config.split_weight else None
    if split is None:
        return config.score_threshold
    return config.score_threshold + config.split_weight * max(split - config.score_threshold, 0.0)
