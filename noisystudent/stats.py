"""Differences between two variants, judged the way a statistician would: from per-image
outcomes paired on the same test images, pooled over seeds, with a 95 % interval. A count of
seeds that agree in sign is not evidence on small test sets: on 400 images one image is 0.25
points, and three same-sign seeds are p = 0.125 on a sign test.

`paired_bootstrap` resamples at both levels that vary between runs: seeds (training draws, and
the data split) with replacement, then test images within each drawn seed. The effect is the
mean over seeds of (accuracy a - accuracy b) on that seed's test images. Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Effect:
    mean: float  # a - b, pooled over seeds (fraction, not %)
    lo: float  # the 95 % interval (percentile bootstrap)
    hi: float
    seeds: int
    images: int  # per-image pairs over all seeds

    @property
    def verdict(self) -> str:
        """'supported' only when the interval excludes 0 on the expected (positive) side."""
        if self.seeds == 0:
            return "cannot be judged"
        if self.lo > 0:
            return "supported"
        if self.hi < 0:
            return "contradicted"
        return "not distinguishable at this size"

    def points(self) -> str:
        return f"{100 * self.mean:+.2f} points [95 % CI {100 * self.lo:+.2f}, {100 * self.hi:+.2f}]"


def paired_bootstrap(pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> Effect:
    """`pairs`: per seed, (outcome of a, outcome of b) per test image, aligned (1 = correct).
    A seed with one test image set for both variants is what makes the pairing valid."""
    pairs = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in pairs]
    for a, b in pairs:
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"paired outcomes must be aligned 1-D arrays (got {a.shape} and {b.shape})")
    pairs = [(a, b) for a, b in pairs if len(a)]
    if not pairs:
        return Effect(float("nan"), float("nan"), float("nan"), 0, 0)
    diffs = [a - b for a, b in pairs]
    mean = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    k = len(diffs)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        drawn = rng.integers(0, k, k)
        boot[i] = np.mean([diffs[j][rng.integers(0, len(diffs[j]), len(diffs[j]))].mean() for j in drawn])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return Effect(mean, float(lo), float(hi), k, int(sum(len(d) for d in diffs)))


def seed_interval(diffs: np.ndarray, level: float = 0.95) -> Effect:
    """A t interval over per-seed differences: for figures with no per-image outcomes kept
    (e.g. the accuracy of pseudo labels, measured on the unlabeled pool)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return Effect(float(d.mean()) if len(d) else float("nan"), float("nan"), float("nan"), len(d), 0)
    half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return Effect(float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d), 0)
