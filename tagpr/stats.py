"""Intervals for comparing two policies on the same dev questions, and across seeds.

Paired: both policies answered the same questions, so per-question differences carry the
comparison and question difficulty cancels out. The bootstrap resamples questions with
replacement (seeded) and reports the percentile interval of the mean difference; the dev task
score (the mean over tasks of each task's mean) is resampled within each task, so every task
keeps its size. Across seeds, per-seed differences are few (3-5), too few for a bootstrap to be
honest; :func:`seed_interval` is Student's t-interval over them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean difference (``estimate``) with its ``level`` interval [low, high] from ``n`` paired items
    (questions per task, or seeds)."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """``a[id] - b[id]`` over the ids of ``a``; both must score exactly the same ids."""
    if set(a) != set(b):
        raise ValueError(f"paired scores need the same question ids: {len(set(a) ^ set(b))} differ")
    if not a:
        raise ValueError("no paired scores")
    return np.array([a[i] - b[i] for i in a], dtype=float)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], resamples: int = RESAMPLES, seed: int = 0,
                     level: float = LEVEL) -> Interval:
    """Mean of ``a - b`` over shared question ids and its percentile bootstrap interval."""
    d = paired_differences(a, b)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    return Interval(float(d.mean()), *_percentiles(d[idx].mean(axis=1), level), n=len(d), level=level)


def stratified_paired_bootstrap(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
                                resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """Difference in the dev task score (mean over tasks of per-task means) of ``a`` and ``b``, each
    mapping task -> question id -> score; questions are resampled within each task. ``n`` is the
    smallest task's question count."""
    if set(a) != set(b) or not a:
        raise ValueError(f"paired task scores need the same tasks: {sorted(a)} vs {sorted(b)}")
    rng = np.random.default_rng(seed)
    diffs = [paired_differences(a[t], b[t]) for t in a]
    means = np.zeros(resamples)
    for d in diffs:
        means += d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    means /= len(diffs)
    estimate = float(np.mean([d.mean() for d in diffs]))
    return Interval(estimate, *_percentiles(means, level), n=min(len(d) for d in diffs), level=level)


def seed_interval(differences: Sequence[float], level: float = LEVEL) -> Interval:
    """Student's t-interval of the mean of per-seed paired differences (one per training seed, e.g.
    each seed's RL minus reference task score): mean +- t(level, k-1) * sd / sqrt(k)."""
    from scipy.stats import t

    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds, got {len(d)}")
    half = float(t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    mean = float(d.mean())
    return Interval(mean, mean - half, mean + half, n=len(d), level=level)
