"""Principal components of the output embeddings against −log α (paper §2.2).

PCA of E (centred), from the same centred Gram matrix as the regression: component i
has variance λ_i and scores s_i = (E − Ē) v_i. Their Pearson r with y = −log α is
exact from the Gram matrix, r_i = v_iᵀ Σ(x−x̄)(y−ȳ) / √(λ_i (n−1) · TSS), and since
scores are uncorrelated, the R² of the regression on the top-k components is Σ_{i≤k} r_i².
The paper's Figure 1 is the scatter of the first two scores coloured by α percentile.

    pca = pca_from_gram(CenteredGram.compute(E, -np.log(alpha)))
    pca.table(), pca.topk_curve(), pca.scores(E, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tokprob.regression import CenteredGram, adjusted_r2
from tokprob.sparsity import topk_grid


@dataclass(frozen=True)
class PCAResult:
    n: int
    mean: np.ndarray
    """(d,) column means of E."""
    variance: np.ndarray
    """(d,) variance of each component's scores, descending."""
    components: np.ndarray
    """(d, d) one unit vector per row, signed so that r ≥ 0."""
    correlation: np.ndarray
    """(d,) Pearson r of each component's scores with y."""

    def table(self) -> pd.DataFrame:
        total = self.variance.sum()
        return pd.DataFrame({
            "component": np.arange(len(self.variance), dtype=np.int32),
            "explained_variance": self.variance,
            "explained_variance_ratio": self.variance / total if total > 0 else self.variance,
            "r": self.correlation,
        })

    def topk_curve(self) -> pd.DataFrame:
        """Adjusted R² of the regression on the top-k components by variance."""
        cumulative = np.cumsum(self.correlation**2)
        return pd.DataFrame([
            {"basis": "components", "k": k, "r2": float(cumulative[k - 1]),
             "adj_r2": adjusted_r2(float(cumulative[k - 1]), self.n, k)}
            for k in topk_grid(len(self.variance))
        ])

    def scores(self, x: np.ndarray, count: int) -> np.ndarray:
        """(n, count) scores of the first `count` components."""
        return (x.astype(np.float64) - self.mean) @ self.components[:count].T


def pca_from_gram(gram: CenteredGram) -> PCAResult:
    values, vectors = np.linalg.eigh(gram.gram / (gram.n - 1))
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    vectors = vectors[:, order]
    covariance_with_y = vectors.T @ gram.cross
    denominator = np.sqrt(values * (gram.n - 1) * gram.tss)
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.where(denominator > 0, covariance_with_y / denominator, 0.0)
    signs = np.where(correlation < 0, -1.0, 1.0)
    return PCAResult(n=gram.n, mean=gram.mean_x, variance=values,
                     components=(vectors * signs).T, correlation=np.abs(correlation))
