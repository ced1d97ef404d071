"""Intervals from resampling whole groups of rows (a cluster bootstrap; the percentile
interval of Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13), for the
steering results (README, Steering).

- The steering sweep's medians: its pairs are not independent draws, since the ratios of
  one target share the positions its α rests on (a target measured on a handful of
  positions misses at every r at once). The sampling unit is the target token: with the
  default 21 targets the interval says how far a median could move with another draw of
  targets from the same α percentiles.
- One edit's held-out ratio α'/α (`tokprob steer`): a ratio of sums over positions, whose
  unit is the held-out window (`ratio_intervals`).

    replicates = resample_groups(tokens, lambda rows: np.median(errors[rows]))
    low, high = percentile_interval(replicates)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

INTERVAL = 0.95
"""Coverage of the reported intervals."""
RESAMPLES = 2000
"""Bootstrap resamples. The bounds still move with the seed: on the default sweep the
calibrated median's interval (about 0.03 to 0.14) moved by up to 0.015 at its upper end
between seeds 0 to 4, so a bound is good to about two digits; the seed is fixed (0) so
that a summary is reproducible."""


def resample_groups(groups: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray | float],
                    resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples,), or (resamples, k) for k statistics: `statistic` of resampled rows.
    Each resample draws as many groups as `groups` has distinct values, with replacement,
    and passes the indices of every row of the drawn groups (a group drawn twice, twice)."""
    inverse, draws = _draws(groups, resamples, seed)
    members = [np.flatnonzero(inverse == label) for label in range(draws.shape[1])]
    return np.array([statistic(np.concatenate([members[g] for g in drawn]))
                     for drawn in draws])


def _draws(groups: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group index, and (resamples, groups) the group indices each resample
    draws with replacement."""
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    draws = np.random.default_rng(seed).integers(len(labels), size=(resamples, len(labels)))
    return inverse, draws


def percentile_interval(replicates: np.ndarray, level: float = INTERVAL) -> list[float]:
    """[low, high]: the central `level` of one statistic's replicates (a list, so that it
    goes into a JSON summary as it is). The bounds are replicates themselves, never
    interpolated, so a ratio whose denominator reached 0 in some resample reads inf
    rather than NaN."""
    tail = 100 * (1 - level) / 2
    values = np.asarray(replicates, dtype=np.float64)
    return [float(np.percentile(values, tail, method="lower")),
            float(np.percentile(values, 100 - tail, method="higher"))]


def resampled_sums(groups: np.ndarray, values: np.ndarray, resamples: int = RESAMPLES,
                   seed: int = 0) -> np.ndarray:
    """(resamples, k) column sums of `values` (rows × k) over resampled groups of rows, as
    `resample_groups` draws them, from each group's sums: a ratio of sums (α' over α on
    held-out windows) costs one product per resample instead of a pass over the rows."""
    inverse, draws = _draws(groups, resamples, seed)
    resamples, n_groups = draws.shape
    per_group = np.zeros((n_groups, values.shape[1]))
    np.add.at(per_group, inverse, values)
    counts = np.zeros((resamples, n_groups))
    np.add.at(counts, (np.repeat(np.arange(resamples), n_groups), draws.ravel()), 1.0)
    return counts @ per_group


def ratio_intervals(groups: np.ndarray, before: np.ndarray, after: np.ndarray,
                    level: float = INTERVAL) -> list[list[float]]:
    """Per column, the interval of Σ after / Σ before over resampled groups of rows: how
    precisely the rows measure a ratio of averages such as α'_w/α_w (rows: positions,
    groups: their windows, columns: tokens)."""
    k = before.shape[1]
    sums = resampled_sums(groups, np.hstack([after, before]))
    return [percentile_interval(sums[:, j] / sums[:, k + j], level) for j in range(k)]
