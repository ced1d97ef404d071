import numpy as np
import pandas as pd
import pytest

from tokprob.resampling import (
    percentile_interval,
    ratio_intervals,
    resample_groups,
    resampled_sums,
)
from tokprob.steering import paired_comparison


def test_each_resample_draws_whole_groups_as_many_as_there_are():
    groups = np.array(["a", "b", "a", "c", "b", "b"])
    sizes = {"a": 2, "b": 3, "c": 1}
    drawn = []
    resample_groups(groups, lambda rows: drawn.append(tuple(groups[np.sort(rows)])) or 0.0,
                    resamples=200, seed=3)
    assert len(drawn) == 200
    for rows in drawn:
        labels, counts = np.unique(rows, return_counts=True)
        copies = [count / sizes[label] for label, count in zip(labels, counts, strict=True)]
        assert all(c == int(c) for c in copies)  # a group comes with all of its rows
        assert sum(copies) == 3
    assert len(set(drawn)) > 1


def test_the_spread_of_resampled_means_is_the_standard_error_of_the_group_means():
    """With equal groups the bootstrap variance of the overall mean is var(group means)/G
    (population variance), the classical result the resampling must reproduce."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), 5)
    values = rng.normal(size=12)[groups] + 0.1 * rng.normal(size=len(groups))
    means = pd.Series(values).groupby(groups).mean().to_numpy()
    replicates = resample_groups(groups, lambda rows: values[rows].mean(), resamples=20000)
    assert replicates.std() == pytest.approx(np.sqrt(means.var() / 12), rel=0.03)
    assert replicates.mean() == pytest.approx(values.mean(), abs=0.02)


def test_a_seed_fixes_the_resamples():
    groups = np.arange(10) % 4
    values = np.arange(10.0)
    first = resample_groups(groups, lambda rows: np.median(values[rows]), seed=7)
    assert np.array_equal(first, resample_groups(groups, lambda rows: np.median(values[rows]),
                                                 seed=7))
    assert not np.array_equal(first, resample_groups(
        groups, lambda rows: np.median(values[rows]), seed=8))


def test_the_interval_is_the_central_share_of_the_replicates_and_never_interpolated():
    replicates = np.random.default_rng(1).permutation(2000).astype(float)
    low, high = percentile_interval(replicates)
    assert (low, high) == (49.0, 1950.0)
    assert np.mean((replicates >= low) & (replicates <= high)) >= 0.95
    assert percentile_interval(replicates, level=0.5) == [499.0, 1500.0]
    # A ratio whose denominator was 0 in some resamples: the top bound is inf, not NaN.
    with_inf = np.concatenate([np.arange(90.0), np.full(10, np.inf)])
    assert percentile_interval(with_inf) == [2.0, np.inf]


def _sweep(errors: dict[str, dict[int, list[float]]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"method": method, "n_fit": 4, "token_id": token, "r": r, "abs_log_error": e,
         "feasible": True}
        for method, by_token in errors.items() for token, values in by_token.items()
        for r, e in zip((0.5, 2.0, 5.0), values, strict=True)])


def test_the_comparison_gives_intervals_over_resampled_targets():
    rng = np.random.default_rng(2)
    closed = {t: list(rng.uniform(0.3, 1.0, 3)) for t in range(10)}
    calibrated = {t: list(rng.uniform(0.0, 0.1, 3) * (1 + t)) for t in range(10)}
    comparison = paired_comparison(_sweep({"closed_form": closed,
                                           "calibrated": calibrated}))
    low, high = comparison["calibrated_median_interval"]
    assert low < comparison["calibrated_median"] < high
    fewer, more = comparison["improvement_interval"]
    assert fewer < comparison["improvement"] < more
    # A medians' interval lies within the range of the values it resamples.
    values = np.concatenate(list(calibrated.values()))
    assert values.min() <= low and high <= values.max()


def test_one_target_leaves_nothing_to_resample():
    comparison = paired_comparison(_sweep({"closed_form": {5: [0.4, 0.6, 0.8]},
                                           "calibrated": {5: [0.01, 0.03, 0.02]}}))
    assert comparison["calibrated_median_interval"] == [0.02, 0.02]
    assert comparison["improvement_interval"] == [pytest.approx(30.0)] * 2


def test_resampled_sums_are_the_sums_of_the_resampled_rows():
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 7, size=40)
    values = rng.random((40, 3))
    direct = resample_groups(groups, lambda rows: values[rows].sum(axis=0), resamples=300,
                             seed=9)
    np.testing.assert_allclose(resampled_sums(groups, values, resamples=300, seed=9), direct,
                               rtol=1e-12)


def test_a_ratio_of_sums_is_bracketed_by_the_groups_own_ratios():
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(8), 4)
    before = rng.random((32, 2)) + 0.1
    after = before * np.repeat(rng.uniform(0.5, 2.0, (8, 2)), 4, axis=0)
    per_group = after[::4] / before[::4]  # each group's ratio is the same on its rows
    for column, (low, high) in enumerate(ratio_intervals(groups, before, after)):
        assert per_group[:, column].min() <= low < high <= per_group[:, column].max()
    # The same ratio in every group leaves nothing to resample.
    constant = ratio_intervals(groups, before, 3 * before)
    assert constant == [[pytest.approx(3.0)] * 2] * 2
