"""Sparsity over dimensions (paper §2.2) against direct statsmodels and scipy computations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from tokprob.regression import CenteredGram, fit_ols
from tokprob.sparsity import (
    adj_r2_at,
    bonferroni_threshold,
    dimension_table,
    salience_order,
    smallest_k_reaching,
    topk_curve,
    topk_grid,
)


def _sparse_problem(n: int = 600, d: int = 12, seed: int = 0):
    """y depends strongly on 3 of d columns and weakly on one; columns differ in scale."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5.0, size=d) + rng.normal(size=d)
    y = 3.0 * x[:, 4] / x[:, 4].std() - 2.0 * x[:, 9] / x[:, 9].std()
    y += 1.0 * x[:, 0] / x[:, 0].std() + 0.1 * x[:, 7] / x[:, 7].std()
    y += rng.normal(size=n)
    return x, y


@pytest.mark.parametrize(("d", "expected"), [
    (1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (10, [1, 2, 4, 8, 10]),
])
def test_topk_grid_small(d, expected):
    assert topk_grid(d) == expected


@pytest.mark.parametrize("d", [5, 64, 576, 4096, 4097])
def test_topk_grid_is_powers_of_two_then_d(d):
    grid = topk_grid(d)
    assert grid[-1] == d
    powers = grid[:-1]
    assert powers == [2**i for i in range(len(powers))]
    assert 2 * powers[-1] >= d  # no power of two below d is missing
    assert all(a < b for a, b in itertools.pairwise(grid))


def test_dimension_table_columns_follow_their_definitions():
    x, y = _sparse_problem()
    result = fit_ols(x, y)
    table = dimension_table(result.table(), result.gram, significance=0.05)
    d = x.shape[1]
    np.testing.assert_allclose(table["abs_t"], np.abs(result.t), rtol=0)
    np.testing.assert_allclose(table["std_slope"], result.slope * x.std(axis=0, ddof=1),
                               rtol=1e-10)
    np.testing.assert_array_equal(table["significant"], result.p < 0.05 / d)
    expected_rank = stats.rankdata(-np.abs(result.t), method="ordinal") - 1
    np.testing.assert_array_equal(table["rank"], expected_rank)
    # The strong dimensions lead, and the input table is left untouched.
    assert set(table.loc[table["rank"] < 3, "dim"]) == {0, 4, 9}
    assert set(table.loc[table["significant"], "dim"]) >= {0, 4, 9}
    assert "abs_t" not in result.table().columns


def test_significance_agrees_with_the_bonferroni_threshold():
    x, y = _sparse_problem(seed=1)
    result = fit_ols(x, y)
    for level in (0.05, 0.001):
        table = dimension_table(result.table(), result.gram, significance=level)
        threshold = bonferroni_threshold(level, x.shape[1], result.df_resid)
        np.testing.assert_array_equal(table["significant"], table["abs_t"] > threshold)


def test_a_constant_dimension_ranks_last_and_is_not_significant():
    x, y = _sparse_problem(seed=2)
    x[:, 4] = 0.0
    result = fit_ols(x, y)
    table = dimension_table(result.table(), result.gram, significance=0.05)
    row = table.loc[4]
    assert np.isnan(row["abs_t"])
    assert row["rank"] == x.shape[1] - 1
    assert not row["significant"]
    assert row["std_slope"] == 0.0
    assert sorted(table["rank"]) == list(range(x.shape[1]))


def test_salience_order_puts_nan_last_and_keeps_ties_stable():
    abs_t = np.array([1.0, np.nan, 3.0, 2.0, np.nan, 2.0, 0.0])
    np.testing.assert_array_equal(salience_order(abs_t), [2, 3, 5, 0, 6, 1, 4])


@pytest.mark.parametrize("basis", ["dimensions", "random"])
def test_topk_curve_equals_direct_fits_on_the_top_k_columns(basis):
    x, y = _sparse_problem(seed=3)
    result = fit_ols(x, y)
    order = (salience_order(np.abs(result.t)) if basis == "dimensions"
             else np.random.default_rng(0).permutation(x.shape[1]))
    gram = CenteredGram.compute(x, y)
    curve = topk_curve(gram, order, basis=basis)
    assert curve["k"].tolist() == [1, 2, 4, 8, 12]
    assert (curve["basis"] == basis).all()
    for k, r2, adj in zip(curve["k"], curve["r2"], curve["adj_r2"], strict=True):
        fit = sm.OLS(y, sm.add_constant(x[:, order[:k]])).fit()
        assert r2 == pytest.approx(fit.rsquared, rel=1e-9)
        assert adj == pytest.approx(fit.rsquared_adj, rel=1e-9)
    # With the full set of columns the curve ends at the full regression.
    assert curve["adj_r2"].iloc[-1] == pytest.approx(result.adj_r2, rel=1e-9)


def test_topk_by_salience_rises_faster_than_the_reverse_order():
    x, y = _sparse_problem(seed=4)
    result = fit_ols(x, y)
    order = salience_order(np.abs(result.t))
    gram = result.gram
    salient, reverse = topk_curve(gram, order), topk_curve(gram, order[::-1])
    assert salient["adj_r2"].iloc[2] > 0.9 * salient["adj_r2"].iloc[-1]
    assert (salient["r2"].iloc[:-1].to_numpy() > reverse["r2"].iloc[:-1].to_numpy()).all()


def _curve(adj):
    return pd.DataFrame({"k": [1, 2, 4, 8][: len(adj)], "adj_r2": adj})


@pytest.mark.parametrize(("adj", "share", "expected"), [
    ([0.1, 0.5, 0.85, 0.9], 0.9, 4),     # 0.85 ≥ 0.81, 0.5 < 0.81
    ([0.1, 0.5, 0.85, 0.9], 0.5, 2),     # 0.5 ≥ 0.45, 0.1 < 0.45
    ([0.1, 0.5, 0.85, 0.9], 1.0, 8),
    ([0.1, 0.5, 0.85, 0.9], 0.0, 1),
    ([0.3, 0.95, 0.9, 0.9], 0.99, 2),    # a curve that overshoots its end
])
def test_smallest_k_reaching(adj, share, expected):
    assert smallest_k_reaching(_curve(adj), share) == expected


def test_adj_r2_at_reports_only_the_grid_points_present():
    curve = _curve([0.1, 0.5, 0.85, 0.9])
    assert adj_r2_at(curve) == {"1": 0.1, "4": 0.85}
    assert adj_r2_at(curve, ks=(2, 8, 16)) == {"2": 0.5, "8": 0.9}


@pytest.mark.parametrize(("level", "d", "df"), [(0.05, 576, 49000), (0.01, 32, 300), (0.1, 1, 5)])
def test_bonferroni_threshold_has_two_sided_p_of_level_over_d(level, d, df):
    threshold = bonferroni_threshold(level, d, df)
    assert 2.0 * stats.t.sf(threshold, df) == pytest.approx(level / d, rel=1e-9)
    # Just inside is significant, just outside is not.
    assert 2.0 * stats.t.sf(threshold * 1.001, df) < level / d
    assert 2.0 * stats.t.sf(threshold * 0.999, df) > level / d


def test_bonferroni_threshold_grows_with_the_number_of_dimensions():
    thresholds = [bonferroni_threshold(0.05, d, 1000) for d in (1, 10, 100, 1000)]
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == 4
    assert thresholds[0] == pytest.approx(stats.norm.isf(0.025), rel=2e-3)  # df large ≈ normal
