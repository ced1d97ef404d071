"""The log-linear encoding: OLS of −log α on the output embeddings (paper §2.1).

    −log α_w ≈ A · E_w + B      one sample per token, the d columns of E as regressors

`fit_ols` is a closed-form float64 solver for real sizes (|V| up to ~262k, d up to
~4096): it streams X in row chunks into the centred Gram matrix (never a float64 copy of
X), solves the column-scaled normal equations by Cholesky and refines the solution with
residual passes, which brings it to the accuracy of a QR solve. A design with
(nearly) collinear columns goes by a chunked QR decomposition instead, to statsmodels'
pseudo-inverse rank, slopes and standard errors. `fit_ols_statsmodels` is the reference
it is tested against.

    result = fit_ols(E, -np.log(alpha))
    result.adj_r2, result.table()
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypedDict, cast

import numpy as np
import pandas as pd
import scipy.linalg
from scipy import stats
from scipy.linalg.blas import dsyrk

from tokprob.errors import TokprobError

CHUNK_ROWS = 8192
ILL_CONDITIONED = 1e-6
"""Smallest Cholesky pivot of the column-scaled Gram matrix (1 − R² of a column on the
ones before it) below which the normal equations cannot reach statsmodels' precision
(the matrix is singular, or its standard errors would lose over nine digits): the fit
then goes by a QR decomposition of the design itself."""


@dataclass(frozen=True)
class CenteredGram:
    """Sufficient statistics of a least-squares fit with intercept."""

    n: int
    mean_x: np.ndarray
    """(k,) column means."""
    mean_y: float
    gram: np.ndarray
    """(k, k) Σ (x − x̄)(x − x̄)ᵀ."""
    cross: np.ndarray
    """(k,) Σ (x − x̄)(y − ȳ)."""
    tss: float
    """Σ (y − ȳ)²."""

    @classmethod
    def compute(cls, x: np.ndarray, y: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> CenteredGram:
        n, k = x.shape
        mean_x = np.zeros(k)
        for chunk in _chunks(x, chunk_rows):
            mean_x += chunk.sum(axis=0, dtype=np.float64)
        mean_x /= n
        y = np.asarray(y, dtype=np.float64)
        mean_y = float(y.mean())
        gram = np.zeros((k, k), order="F")
        cross = np.zeros(k)
        for start, chunk in _chunks(x, chunk_rows, with_start=True):
            centred = chunk.astype(np.float64)
            centred -= mean_x
            # Half the flops of centred.T @ centred: only the lower triangle is formed.
            gram = dsyrk(1.0, centred.T, beta=1.0, c=gram, lower=1, overwrite_c=1)
            cross += centred.T @ (y[start:start + len(chunk)] - mean_y)
        gram = np.tril(gram) + np.tril(gram, -1).T
        return cls(n=n, mean_x=mean_x, mean_y=mean_y, gram=gram, cross=cross,
                   tss=float(((y - mean_y) ** 2).sum()))

    def with_target(self, x: np.ndarray, y: np.ndarray,
                    chunk_rows: int = CHUNK_ROWS) -> CenteredGram:
        """The same design with another target: X'X is reused, only X'y, ȳ and TSS change."""
        y = np.asarray(y, dtype=np.float64)
        mean_y = float(y.mean())
        cross = np.zeros(len(self.mean_x))
        for start, chunk in _chunks(x, chunk_rows, with_start=True):
            centred = chunk.astype(np.float64)
            centred -= self.mean_x
            cross += centred.T @ (y[start:start + len(chunk)] - mean_y)
        return replace(self, mean_y=mean_y, cross=cross, tss=float(((y - mean_y) ** 2).sum()))

    def r2_of(self, columns: np.ndarray) -> float:
        """R² of the least-squares fit on a subset of the columns (plus intercept)."""
        columns = np.asarray(columns)
        if len(columns) == 0 or self.tss == 0:
            return 0.0
        solve = _Solver(self.gram[np.ix_(columns, columns)])
        beta = solve(self.cross[columns])
        return float(self.cross[columns] @ beta / self.tss)


def adjusted_r2(r2: float, n: int, k: int) -> float:
    """R² adjusted for k regressors (plus intercept) on n samples."""
    return float(1.0 - (1.0 - r2) * (n - 1) / (n - k - 1))


class FitStatistics(TypedDict):
    """The scalar statistics of an OLS fit (OLSResult.statistics), as stages store them."""

    n: int
    k: int
    rank: int
    r2: float
    adj_r2: float
    f_stat: float
    f_pvalue: float
    rss: float
    df_resid: int
    intercept: float
    intercept_std_err: float


@dataclass(frozen=True)
class OLSResult:
    """An OLS fit with intercept, with the statistics statsmodels reports."""

    n: int
    k: int
    """Regressors, not counting the intercept."""
    rank: int
    """Regressors that carry information (constant columns are dropped)."""
    intercept: float
    intercept_std_err: float
    slope: np.ndarray
    """(k,) A; 0 for a constant column."""
    std_err: np.ndarray
    """(k,) standard errors; NaN for a constant column."""
    t: np.ndarray
    p: np.ndarray
    """Two-sided p-values of t with n − rank − 1 degrees of freedom."""
    r2: float
    adj_r2: float
    f_stat: float
    f_pvalue: float
    rss: float
    df_resid: int
    fitted: np.ndarray
    """(n,) predicted y."""
    gram: CenteredGram
    """The sufficient statistics the fit was solved from (reused by sparsity and PCA)."""

    def table(self) -> pd.DataFrame:
        """One row per dimension: dim, slope, std_err, t, p."""
        return pd.DataFrame({
            "dim": np.arange(self.k, dtype=np.int32),
            "slope": self.slope,
            "std_err": self.std_err,
            "t": self.t,
            "p": self.p,
        })

    def statistics(self) -> FitStatistics:
        return cast(FitStatistics, {name: getattr(self, name)
                                    for name in FitStatistics.__annotations__})


def fit_ols(x: np.ndarray, y: np.ndarray, chunk_rows: int = CHUNK_ROWS,
            refinements: int = 1) -> OLSResult:
    """OLS of y on the columns of x plus an intercept, in float64.

    x: (n, k), any float dtype (read in row chunks); y: (n,).
    """
    y = np.asarray(y, dtype=np.float64)
    n, k = x.shape
    if n <= k + 1:
        raise TokprobError(
            f"The regression needs more samples than regressors + 1, got n={n} samples "
            f"(tokens with a finite target) for k={k} regressors (embedding dimensions). "
            "The model's vocabulary must exceed its hidden size + 1, counting only tokens "
            "whose α did not underflow to 0."
        )
    g = CenteredGram.compute(x, y, chunk_rows)
    keep, s, solve = _scaled_system(g)
    if solve.smallest_pivot < ILL_CONDITIONED:
        return _fit_by_qr(x, y, g, keep, chunk_rows)
    beta = solve(g.cross[keep] / s) / s
    for _ in range(refinements):
        # Iterative refinement: solve for the normal-equation residual of the current
        # beta, which recovers the accuracy the squared conditioning of X'X costs.
        _, correction = _residual_pass(x, y, g, keep, beta, chunk_rows, with_correction=True)
        beta = beta + solve(correction / s) / s
    mean_term = solve(g.mean_x[keep] / s) @ (g.mean_x[keep] / s)
    return _result(y, g, keep, beta, solve.rank, solve.inverse_diagonal() / s**2,
                   1.0 / n + mean_term, _residual_pass(x, y, g, keep, beta, chunk_rows)[0])


def _fit_by_qr(x: np.ndarray, y: np.ndarray, g: CenteredGram, keep: np.ndarray,
               chunk_rows: int) -> OLSResult:
    """The fit statsmodels gives, by its method: the pseudo-inverse of the design [1 X]
    from its singular values, with its rank rule (singular values above
    σ_max · max(n, k + 1) · eps). For designs whose normal equations lose too much: their
    conditioning is the square of the design's. The R of a QR decomposition of [1 X y],
    built chunk by chunk, has X's singular values and carries Q'y in its last column."""
    kept = int(keep.sum())
    r = np.zeros((0, kept + 2))
    for start, chunk in _chunks(x, chunk_rows, with_start=True):
        rows = np.column_stack([np.ones(len(chunk)), chunk[:, keep].astype(np.float64),
                                y[start:start + len(chunk)]])
        r = scipy.linalg.qr(np.vstack([r, rows]), mode="r", check_finite=False)[0]
    u, singular, vt = np.linalg.svd(r[: kept + 1, : kept + 1])
    total_rank = int((singular > singular[0] * max(g.n, kept + 1) * np.finfo(float).eps).sum())
    u, singular, vt = u[:, :total_rank], singular[:total_rank], vt[:total_rank]
    coefficients = vt.T @ ((u.T @ r[: kept + 1, kept + 1]) / singular)
    inverse = (vt.T / singular**2) @ vt  # (X'X)⁺ of the design with intercept
    beta = coefficients[1:]
    return _result(y, g, keep, beta, total_rank - 1, np.diag(inverse)[1:], inverse[0, 0],
                   _residual_pass(x, y, g, keep, beta, chunk_rows)[0])


def _result(y: np.ndarray, g: CenteredGram, keep: np.ndarray, beta: np.ndarray, rank: int,
            inverse_diagonal: np.ndarray, intercept_inverse: float,
            residual: np.ndarray) -> OLSResult:
    """The statistics of a solved fit. inverse_diagonal: (X'X)⁻¹'s diagonal over the kept
    centred columns; intercept_inverse: its intercept entry for the design with intercept."""
    n, k = g.n, len(keep)
    df_resid = n - rank - 1
    rss = float(residual @ residual)
    sigma2 = rss / df_resid
    slope = np.zeros(k)
    slope[keep] = beta
    std_err = np.full(k, np.nan)
    std_err[keep] = np.sqrt(sigma2 * inverse_diagonal)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(keep, slope / std_err, np.nan)
    p = 2.0 * stats.t.sf(np.abs(t), df_resid)
    intercept = g.mean_y - float(g.mean_x[keep] @ beta)
    r2 = 1.0 - rss / g.tss
    f_stat = (r2 / rank) / ((1.0 - r2) / df_resid) if rank else np.nan
    return OLSResult(
        n=n, k=k, rank=rank, intercept=intercept,
        intercept_std_err=float(np.sqrt(sigma2 * intercept_inverse)),
        slope=slope, std_err=std_err, t=t, p=p, r2=r2, adj_r2=adjusted_r2(r2, n, rank),
        f_stat=float(f_stat), f_pvalue=float(stats.f.sf(f_stat, rank, df_resid)),
        rss=rss, df_resid=df_resid, fitted=y - residual, gram=g,
    )


def slopes_from_gram(g: CenteredGram) -> tuple[pd.DataFrame, float]:
    """The per-dimension table (dim, slope, std_err, t, p) and R² of the OLS, from its
    sufficient statistics alone: a cheap refit for another target of the same design
    (few-shot estimates of A, paper §3). No refinement pass, so accurate to the
    conditioning of X'X rather than to statsmodels' 1e-8."""
    keep, s, solve = _scaled_system(g)
    beta = solve(g.cross[keep] / s) / s
    rss = max(g.tss - float(g.cross[keep] @ beta), 0.0)
    df_resid = g.n - solve.rank - 1
    k = len(keep)
    slope = np.zeros(k)
    slope[keep] = beta
    std_err = np.full(k, np.nan)
    std_err[keep] = np.sqrt(rss / df_resid * solve.inverse_diagonal()) / s
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(keep, slope / std_err, np.nan)
    table = pd.DataFrame({"dim": np.arange(k, dtype=np.int32), "slope": slope,
                          "std_err": std_err, "t": t,
                          "p": 2.0 * stats.t.sf(np.abs(t), df_resid)})
    return table, 1.0 - rss / g.tss


def encoding_target(alpha: np.ndarray, counts: np.ndarray, target: str) -> np.ndarray:
    """y of the regression: −log α, or −log of the add-one smoothed next-token frequency."""
    if target == "frequency":
        return -np.log((counts + 1.0) / (counts.sum() + len(counts)))
    with np.errstate(divide="ignore"):
        return -np.log(alpha)


def fit_ols_statsmodels(x: np.ndarray, y: np.ndarray) -> OLSResult:
    """The same fit by statsmodels OLS (pseudo-inverse): the reference."""
    import statsmodels.api as sm

    x = np.asarray(x, dtype=np.float64)
    fit = sm.OLS(np.asarray(y, dtype=np.float64), sm.add_constant(x, has_constant="add")).fit()
    constant = x.std(axis=0) == 0
    std_err = np.where(constant, np.nan, fit.bse[1:])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(constant, np.nan, fit.tvalues[1:])
    rank = int(fit.df_model)
    return OLSResult(
        n=int(fit.nobs), k=x.shape[1], rank=rank, intercept=float(fit.params[0]),
        intercept_std_err=float(fit.bse[0]), slope=np.where(constant, 0.0, fit.params[1:]),
        std_err=std_err, t=t, p=np.where(constant, np.nan, fit.pvalues[1:]),
        r2=float(fit.rsquared), adj_r2=float(fit.rsquared_adj), f_stat=float(fit.fvalue),
        f_pvalue=float(fit.f_pvalue), rss=float(fit.ssr), df_resid=int(fit.df_resid),
        fitted=np.asarray(fit.fittedvalues), gram=CenteredGram.compute(x, y),
    )


def _scaled_system(g: CenteredGram) -> tuple[np.ndarray, np.ndarray, _Solver]:
    """The informative columns, their scales, and a solver of the scaled normal equations."""
    scale = np.sqrt(np.diag(g.gram))
    # A column is constant when its spread is nothing next to its own size (rounding of
    # the mean), not next to the other columns: scales of E's columns may differ widely.
    keep = scale > 1e-12 * np.sqrt(scale**2 + g.n * g.mean_x**2)
    s = scale[keep]
    # Scaling to unit column norm makes the system's conditioning that of the
    # correlation matrix, not of the raw embedding scales.
    return keep, s, _Solver(g.gram[np.ix_(keep, keep)] / np.outer(s, s))


class _Solver:
    """Solves with a symmetric positive semi-definite matrix: Cholesky, or an
    eigen-decomposition pseudo-inverse when the matrix is singular."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.size = matrix.shape[0]
        self._cholesky = None
        self._eigen = None
        # Below this share a pivot or an eigenvalue is rounding noise.
        tolerance = self.size * np.finfo(float).eps
        self.smallest_pivot = 0.0
        """Smallest squared pivot of the Cholesky factor relative to its diagonal entry
        (1 − R² of a column on the ones before it, free of scale); 0 where it fails."""
        try:
            factor = scipy.linalg.cho_factor(matrix, lower=True, check_finite=False)
            self.smallest_pivot = (float((np.diag(factor[0]) ** 2 / np.diag(matrix)).min())
                                   if self.size else 1.0)
            # Cholesky often succeeds on an exactly singular matrix (two equal columns),
            # leaving a pivot of rounding size that would give standard errors of 1e6.
            if self.smallest_pivot > tolerance:
                self._cholesky = factor
                self.rank = self.size
        except np.linalg.LinAlgError:
            pass
        if self._cholesky is None:
            values, vectors = np.linalg.eigh(matrix)
            keep = values > values.max(initial=0.0) * tolerance
            self._eigen = (values[keep], vectors[:, keep])
            self.rank = int(keep.sum())

    def __call__(self, rhs: np.ndarray) -> np.ndarray:
        if self._cholesky is not None:
            return scipy.linalg.cho_solve(self._cholesky, rhs, check_finite=False)
        values, vectors = self._eigen  # type: ignore[misc]
        return vectors @ ((vectors.T @ rhs) / values)

    def inverse_diagonal(self) -> np.ndarray:
        if self._cholesky is not None:
            lower = np.tril(self._cholesky[0])
            inverse = scipy.linalg.solve_triangular(lower, np.eye(self.size), lower=True,
                                                    check_finite=False)
            return (inverse**2).sum(axis=0)
        values, vectors = self._eigen  # type: ignore[misc]
        return (vectors**2 / values).sum(axis=1)


def _residual_pass(x: np.ndarray, y: np.ndarray, g: CenteredGram, keep: np.ndarray,
                   beta: np.ndarray, chunk_rows: int,
                   with_correction: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of beta and, when asked, the normal-equation residual Σ (x − x̄) r, in
    one pass over x."""
    residual = np.empty(len(y))
    correction = np.zeros(len(beta))
    every_column = bool(keep.all())
    for start, chunk in _chunks(x, chunk_rows, with_start=True):
        # Skipping the column selection when nothing is dropped saves a copy per chunk.
        centred = (chunk if every_column else chunk[:, keep]).astype(np.float64)
        centred -= g.mean_x[keep]
        stop = start + len(chunk)
        residual[start:stop] = (y[start:stop] - g.mean_y) - centred @ beta
        if with_correction:
            correction += centred.T @ residual[start:stop]
    return residual, correction


def _chunks(x: np.ndarray, rows: int, with_start: bool = False):
    for start in range(0, x.shape[0], rows):
        chunk = x[start:start + rows]
        yield (start, chunk) if with_start else chunk
