"""The closed-form OLS solver (paper §2.1) against statsmodels OLS, fitted here directly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import statsmodels.api as sm

from tokprob.errors import TokprobError
from tokprob.regression import (
    CenteredGram,
    adjusted_r2,
    encoding_target,
    fit_ols,
    fit_ols_statsmodels,
)

RTOL = 1e-8


def _design(kind: str, n: int = 400, k: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (n, k) with non-zero column means, as embeddings have, and y ≈ x·β + 10 + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k)) + rng.normal(scale=3.0, size=k)
    if kind == "badly_scaled":
        x *= 10.0 ** np.linspace(-3, 3, k)
    elif kind == "extreme_scales":
        x *= 10.0 ** np.linspace(-6, 6, k)
    elif kind == "near_collinear":
        x[:, 1] = x[:, 0] + 1e-3 * rng.normal(size=n)
        x[:, 2] = x[:, 3] - x[:, 4] + 1e-3 * rng.normal(size=n)
    beta = rng.normal(scale=0.3, size=k) / x.std(axis=0)
    beta[::3] = 0.0  # some dimensions carry nothing, as in the sparse encoding
    y = x @ beta + 10.0 + rng.normal(size=n)
    if kind == "float32":
        x = x.astype(np.float32)
    return x, y


def _statsmodels(x: np.ndarray, y: np.ndarray, rescale: bool = False):
    """statsmodels OLS. With `rescale`, fitted on unit-variance columns and mapped back
    (the same least-squares problem): statsmodels' pseudo-inverse of the raw design loses
    about as many digits as the column scales span orders of magnitude."""
    x = np.asarray(x, dtype=np.float64)
    s = x.std(axis=0) if rescale else np.ones(x.shape[1])
    fit = sm.OLS(np.asarray(y, dtype=np.float64), sm.add_constant(x / s, has_constant="add")).fit()
    unscale = np.concatenate([[1.0], s])
    return SimpleNamespace(
        params=fit.params / unscale, bse=fit.bse / unscale, tvalues=fit.tvalues,
        pvalues=fit.pvalues, rsquared=fit.rsquared, rsquared_adj=fit.rsquared_adj,
        fvalue=fit.fvalue, f_pvalue=fit.f_pvalue, ssr=fit.ssr, df_resid=fit.df_resid,
        df_model=fit.df_model, fittedvalues=fit.fittedvalues,
    )


def _close(actual, expected, floor: float = 0.0, rtol: float = RTOL) -> None:
    """Relative agreement to rtol; `floor` is an absolute slack for values near 0."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=floor)


def _assert_matches(result, reference, x: np.ndarray, rank: int | None = None,
                    rtol: float = RTOL) -> None:
    k = x.shape[1]
    slope_scale = np.abs(reference.params[1:]).max()
    _close(result.slope, reference.params[1:], floor=1e-12 * slope_scale, rtol=rtol)
    _close(result.std_err, reference.bse[1:], rtol=rtol)
    _close(result.t, reference.tvalues[1:], floor=1e-12 * np.abs(reference.tvalues).max(),
           rtol=rtol)
    _close(result.p, reference.pvalues[1:], floor=1e-300, rtol=rtol)
    _close(result.intercept, reference.params[0], rtol=rtol)
    _close(result.intercept_std_err, reference.bse[0], rtol=rtol)
    _close(result.r2, reference.rsquared, rtol=rtol)
    _close(result.adj_r2, reference.rsquared_adj, rtol=rtol)
    _close(result.f_stat, reference.fvalue, rtol=rtol)
    _close(result.f_pvalue, reference.f_pvalue, floor=1e-300, rtol=rtol)
    _close(result.rss, reference.ssr, rtol=rtol)
    _close(result.fitted, reference.fittedvalues, rtol=rtol)
    assert result.df_resid == int(reference.df_resid) == len(x) - (rank or k) - 1
    assert result.rank == int(reference.df_model) == (rank or k)
    assert (result.n, result.k) == (len(x), k)


@pytest.mark.parametrize("chunk_rows", [8192, 37], ids=["one_chunk", "chunked"])
@pytest.mark.parametrize("kind", ["plain", "float32", "badly_scaled", "near_collinear"])
def test_fit_ols_equals_statsmodels(kind, chunk_rows):
    x, y = _design(kind)
    result = fit_ols(x, y, chunk_rows=chunk_rows)
    _assert_matches(result, _statsmodels(x, y), x)


@pytest.mark.parametrize("seed", [0, 8])
def test_fit_ols_keeps_columns_twelve_orders_of_magnitude_apart(seed):
    """The smallest column is tiny next to the largest but far from constant."""
    x, y = _design("extreme_scales", seed=seed)
    result = fit_ols(x, y, chunk_rows=64)
    _assert_matches(result, _statsmodels(x, y, rescale=True), x)


def _collinear(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A design with one column (nearly) a linear combination of others."""
    x, y = _design("plain", k=7, seed=11)
    noise = np.random.default_rng(2).normal(size=len(x))
    if kind == "duplicate":
        x[:, 4] = x[:, 1]
    elif kind == "scaled_duplicate":
        x[:, 4] = 3.0 * x[:, 1]
    elif kind == "combination":
        x[:, 5] = x[:, 0] - 2.0 * x[:, 2]
    elif kind == "with_the_intercept":
        x[:, 5] = 2.0 - x[:, 0]
    else:  # "within_1e-15", "within_1e-6": x4 = x1 up to that relative noise
        x[:, 4] = x[:, 1] * (1.0 + float(kind.removeprefix("within_")) * noise)
    return x, y


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient")
@pytest.mark.parametrize("chunk_rows", [8192, 37, 5], ids=["one_chunk", "chunked", "tiny"])
@pytest.mark.parametrize(("kind", "rank", "rtol"), [
    ("duplicate", 6, RTOL), ("scaled_duplicate", 6, RTOL), ("combination", 6, RTOL),
    ("with_the_intercept", 6, RTOL), ("within_1e-15", 6, RTOL),
    # Full rank, but X'X has a pivot of 1e-11: the normal equations would lose 11
    # digits; statsmodels' own answer is good to about cond(X)·eps ≈ 1e-10.
    ("within_1e-6", 7, 1e-7),
])
def test_collinear_designs_match_statsmodels_pseudo_inverse(kind, rank, rtol, chunk_rows):
    """statsmodels' rank, residual df, minimum-norm slopes and their standard errors, not
    the rank k and standard errors of 1e6 a Cholesky of the singular X'X gives."""
    x, y = _collinear(kind)
    result = fit_ols(x, y, chunk_rows=chunk_rows)
    _assert_matches(result, _statsmodels(x, y), x, rank=rank, rtol=rtol)
    if rank < x.shape[1]:
        assert result.std_err.max() < 1.0  # about the others' 0.05


def test_fit_ols_statsmodels_wrapper_equals_statsmodels():
    x, y = _design("plain", seed=3)
    _assert_matches(fit_ols_statsmodels(x, y), _statsmodels(x, y), x)


def test_fit_ols_is_significant_where_the_signal_is():
    """Not only equal to statsmodels: the slopes recover a known signal."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 4))
    y = 2.0 * x[:, 1] - 1.0 * x[:, 3] + 5.0 + 0.1 * rng.normal(size=3000)
    result = fit_ols(x, y)
    np.testing.assert_allclose(result.slope, [0.0, 2.0, 0.0, -1.0], atol=0.02)
    assert result.intercept == pytest.approx(5.0, abs=0.02)
    assert (result.p[[1, 3]] < 1e-100).all()
    assert result.r2 > 0.99


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient")
def test_a_zero_column_is_dropped_from_the_rank():
    x, y = _design("plain", k=6, seed=4)
    x[:, 2] = 0.0
    result = fit_ols(x, y, chunk_rows=50)
    # statsmodels' pseudo-inverse gives the zero column slope 0 and standard error 0.
    reference = _statsmodels(x, y)
    assert result.rank == int(reference.df_model) == 5
    assert result.df_resid == int(reference.df_resid) == len(x) - 5 - 1
    assert result.slope[2] == 0.0
    assert np.isnan(result.std_err[2]) and np.isnan(result.t[2]) and np.isnan(result.p[2])
    others = np.array([0, 1, 3, 4, 5])
    _close(result.slope[others], reference.params[1:][others])
    _close(result.std_err[others], reference.bse[1:][others])
    _close(result.t[others], reference.tvalues[1:][others])
    _close(result.p[others], reference.pvalues[1:][others], floor=1e-300)
    for name, expected in [("r2", reference.rsquared), ("adj_r2", reference.rsquared_adj),
                           ("f_stat", reference.fvalue), ("rss", reference.ssr),
                           ("intercept", reference.params[0]),
                           ("intercept_std_err", reference.bse[0])]:
        _close(getattr(result, name), expected)
    # Same answer from the library's statsmodels solver.
    wrapped = fit_ols_statsmodels(x, y)
    assert wrapped.rank == 5 and wrapped.slope[2] == 0.0 and np.isnan(wrapped.t[2])
    _close(wrapped.r2, result.r2)


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient")
def test_a_non_zero_constant_column_goes_to_the_intercept():
    x, y = _design("plain", k=5, seed=5)
    x[:, 1] = 3.0
    result = fit_ols(x, y)
    reference = _statsmodels(x, y)
    # The pseudo-inverse splits the constant between intercept and column 1.
    _close(result.intercept, reference.params[0] + 3.0 * reference.params[2])
    assert result.slope[1] == 0.0 and np.isnan(result.t[1])
    assert result.rank == int(reference.df_model) == 4
    _close(result.r2, reference.rsquared)
    _close(result.fitted, reference.fittedvalues)


def test_an_all_zero_design_fits_only_the_intercept():
    rng = np.random.default_rng(6)
    y = rng.normal(size=50)
    result = fit_ols(np.zeros((50, 3)), y)
    assert result.rank == 0
    assert result.slope.tolist() == [0.0, 0.0, 0.0]
    assert np.isnan(result.t).all()
    _close(result.intercept, y.mean())
    _close(result.rss, ((y - y.mean()) ** 2).sum())
    assert result.r2 == pytest.approx(0.0, abs=1e-12)


def test_table_and_statistics_carry_the_fit():
    x, y = _design("plain", k=4, seed=7)
    result = fit_ols(x, y)
    table = result.table()
    assert table.columns.tolist() == ["dim", "slope", "std_err", "t", "p"]
    assert table["dim"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(table["t"], result.t)
    stats = result.statistics()
    assert stats["r2"] == result.r2 and stats["df_resid"] == len(x) - 5
    assert stats["n"] == len(x) and stats["k"] == 4


@pytest.mark.parametrize("columns", [[0], [2, 5], [6, 1, 3], [0, 1, 2, 3, 4, 5, 6]])
@pytest.mark.parametrize("kind", ["plain", "badly_scaled", "extreme_scales"])
def test_gram_r2_of_a_subset_equals_direct_ols(kind, columns):
    x, y = _design(kind, seed=8)
    gram = CenteredGram.compute(x, y, chunk_rows=64)
    expected = _statsmodels(x[:, columns], y, rescale=True).rsquared
    assert gram.r2_of(np.array(columns)) == pytest.approx(expected, rel=1e-9)


def test_gram_matches_numpy():
    x, y = _design("float32", n=301, seed=9)
    gram = CenteredGram.compute(x, y, chunk_rows=50)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=0)
    np.testing.assert_allclose(gram.gram, centred.T @ centred, rtol=1e-10)
    np.testing.assert_allclose(gram.cross, centred.T @ (y - y.mean()), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gram.mean_x, x64.mean(axis=0), rtol=1e-12)
    assert gram.tss == pytest.approx(((y - y.mean()) ** 2).sum(), rel=1e-12)
    assert gram.n == 301


def test_gram_r2_of_nothing_or_a_constant_target_is_zero():
    x, y = _design("plain", seed=10)
    assert CenteredGram.compute(x, y).r2_of(np.array([], dtype=int)) == 0.0
    assert CenteredGram.compute(x, np.full(len(y), 2.5)).r2_of(np.array([0, 1])) == 0.0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_adjusted_r2_equals_statsmodels(k):
    x, y = _design("plain", n=60, k=k, seed=11)
    reference = _statsmodels(x, y)
    assert adjusted_r2(reference.rsquared, 60, k) == pytest.approx(reference.rsquared_adj,
                                                                   rel=1e-12)


def test_encoding_target_alpha_is_minus_log_alpha():
    alpha = np.array([0.5, 0.25, 0.125, 0.125, 0.0])
    counts = np.array([3, 0, 1, 0, 0])
    with np.errstate(all="raise"):  # α = 0 (underflow) is an inf, not a warning
        y = encoding_target(alpha, counts, "alpha")
    np.testing.assert_allclose(y[:4], [np.log(2), np.log(4), np.log(8), np.log(8)], rtol=1e-15)
    assert y[4] == np.inf


def test_encoding_target_frequency_is_add_one_smoothed():
    counts = np.array([9, 0, 3, 1, 0, 7])
    y = encoding_target(np.full(6, np.nan), counts, "frequency")
    expected = [-np.log((c + 1) / (20 + 6)) for c in counts.tolist()]
    np.testing.assert_allclose(y, expected, rtol=1e-14)
    assert np.exp(-y).sum() == pytest.approx(1.0, rel=1e-14)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("n", [4, 5])
def test_too_few_samples_is_an_error(n):
    x = np.random.default_rng(0).normal(size=(n, 4))
    with pytest.raises(TokprobError, match=rf"n={n}.*k=4"):
        fit_ols(x, np.arange(n, dtype=float))


def test_the_smallest_fittable_size_works():
    x, y = _design("plain", n=6, k=4, seed=12)
    result = fit_ols(x, y)
    assert result.df_resid == 1
    _close(result.r2, _statsmodels(x, y).rsquared)


def test_refit_from_gram_for_another_target_matches_statsmodels():
    from tokprob.regression import CenteredGram, slopes_from_gram

    rng = np.random.default_rng(11)
    x = rng.normal(size=(500, 7)).astype(np.float32)
    y1 = x @ rng.normal(size=7) + rng.normal(size=500)
    y2 = x @ rng.normal(size=7) + 0.3 * rng.normal(size=500) + 4.0
    refit = CenteredGram.compute(x, y1, chunk_rows=64).with_target(x, y2, chunk_rows=64)
    direct = CenteredGram.compute(x, y2)
    np.testing.assert_allclose(refit.cross, direct.cross, rtol=1e-10)
    assert refit.tss == pytest.approx(direct.tss, rel=1e-12)
    table, r2 = slopes_from_gram(refit)
    reference = fit_ols_statsmodels(x, y2)
    np.testing.assert_allclose(table["slope"], reference.slope, rtol=1e-8)
    np.testing.assert_allclose(table["std_err"], reference.std_err, rtol=1e-8)
    np.testing.assert_allclose(table["t"], reference.t, rtol=1e-8)
    np.testing.assert_allclose(table["p"], reference.p, rtol=1e-6, atol=1e-300)
    assert r2 == pytest.approx(reference.r2, rel=1e-10)
