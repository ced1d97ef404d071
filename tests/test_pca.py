"""PCA of E from the centred Gram matrix (paper §2.2) against scikit-learn and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.decomposition import PCA

from tokprob.pca import pca_from_gram
from tokprob.regression import CenteredGram


def _embeddings(n: int = 500, d: int = 10, seed: int = 0, dtype=np.float64):
    """Correlated columns with distinct variances, y tied to a few directions."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.2, d)[:, None]
    x = rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)
    y = x @ rng.normal(size=d) * 0.3 + 8.0 + rng.normal(size=n)
    return x.astype(dtype), y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_variance_and_components_equal_sklearn(dtype):
    x, y = _embeddings(dtype=dtype)
    pca = pca_from_gram(CenteredGram.compute(x, y, chunk_rows=128))
    reference = PCA(svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(pca.variance, reference.explained_variance_, rtol=1e-9)
    table = pca.table()
    np.testing.assert_allclose(table["explained_variance_ratio"],
                               reference.explained_variance_ratio_, rtol=1e-9)
    assert table["explained_variance_ratio"].sum() == pytest.approx(1.0, rel=1e-12)
    # Same unit vectors up to sign.
    signs = np.sign((pca.components * reference.components_).sum(axis=1))
    np.testing.assert_allclose(pca.components, signs[:, None] * reference.components_,
                               atol=1e-8)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(x.shape[1]),
                               atol=1e-10)
    np.testing.assert_allclose(pca.mean, x.astype(np.float64).mean(axis=0), rtol=1e-12)


def test_scores_are_the_projections_of_the_centred_rows():
    x, y = _embeddings(seed=1, dtype=np.float32)
    pca = pca_from_gram(CenteredGram.compute(x, y))
    scores = pca.scores(x, 3)
    assert scores.shape == (len(x), 3) and scores.dtype == np.float64
    reference = PCA(n_components=3, svd_solver="full").fit(x.astype(np.float64))
    sklearn_scores = reference.transform(x.astype(np.float64))
    signs = np.sign((scores * sklearn_scores).sum(axis=0))
    np.testing.assert_allclose(scores, signs * sklearn_scores, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(scores.var(axis=0, ddof=1), pca.variance[:3], rtol=1e-9)
    assert pca.scores(x, 1).shape == (len(x), 1)


def test_correlation_is_pearson_r_of_the_scores_with_y_and_non_negative():
    x, y = _embeddings(seed=2)
    pca = pca_from_gram(CenteredGram.compute(x, y))
    scores = pca.scores(x, x.shape[1])
    direct = np.array([np.corrcoef(scores[:, i], y)[0, 1] for i in range(x.shape[1])])
    np.testing.assert_allclose(pca.correlation, direct, rtol=1e-9, atol=1e-12)
    assert (pca.correlation >= 0).all()
    np.testing.assert_array_equal(pca.table()["r"], pca.correlation)
    assert pca.table()["component"].tolist() == list(range(x.shape[1]))


def test_topk_curve_equals_direct_ols_on_the_top_k_scores():
    x, y = _embeddings(n=400, d=9, seed=3)
    pca = pca_from_gram(CenteredGram.compute(x, y))
    scores = pca.scores(x, x.shape[1])
    curve = pca.topk_curve()
    assert curve["k"].tolist() == [1, 2, 4, 8, 9]
    assert (curve["basis"] == "components").all()
    for k, r2, adj in zip(curve["k"], curve["r2"], curve["adj_r2"], strict=True):
        fit = sm.OLS(y, sm.add_constant(scores[:, :k])).fit()
        assert r2 == pytest.approx(fit.rsquared, rel=1e-9)
        assert adj == pytest.approx(fit.rsquared_adj, rel=1e-9)
    # All components span the same space as all columns.
    full = sm.OLS(y, sm.add_constant(x)).fit()
    assert curve["r2"].iloc[-1] == pytest.approx(full.rsquared, rel=1e-9)


def test_a_constant_column_gives_a_zero_variance_component():
    x, y = _embeddings(d=5, seed=4)
    x[:, 2] = 1.5
    pca = pca_from_gram(CenteredGram.compute(x, y))
    assert pca.variance[-1] == pytest.approx(0.0, abs=1e-12)
    assert (pca.variance >= 0).all()
    assert np.all(np.diff(pca.variance) <= 0)
    assert pca.correlation[-1] == pytest.approx(0.0, abs=1e-6)
    reference = PCA(svd_solver="full").fit(x)
    np.testing.assert_allclose(pca.variance[:4], reference.explained_variance_[:4], rtol=1e-9)
