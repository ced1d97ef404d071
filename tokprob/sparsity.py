"""Sparsity of the encoding over the original dimensions (paper §2.2).

Few dimensions carry the encoding: the distribution of |t_j| is heavy-headed, few
dimensions survive a Bonferroni correction, and the adjusted R² of the regression
restricted to the top-k dimensions by |t| rises fast and saturates.

    table = dimension_table(result, gram, significance=0.05)
    curve = topk_curve(gram, np.argsort(-table.abs_t.to_numpy()))
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokprob.regression import CenteredGram, adjusted_r2


def topk_grid(d: int) -> list[int]:
    """k = 1, 2, 4, … up to d, with d itself last."""
    grid = [1 << i for i in range(d.bit_length()) if (1 << i) < d]
    return [*grid, d]


def dimension_table(regression: pd.DataFrame, gram: CenteredGram,
                    significance: float) -> pd.DataFrame:
    """Per dimension: the regression statistics (`OLSResult.table()`), |t|, the
    standardized slope A_j · std(E_·j), Bonferroni significance and the rank by |t|
    (0 = most salient)."""
    table = regression.copy()
    d = len(table)
    abs_t = np.abs(table["t"].to_numpy())
    column_std = np.sqrt(np.diag(gram.gram) / (gram.n - 1))
    table["abs_t"] = abs_t
    table["std_slope"] = table["slope"].to_numpy() * column_std
    table["significant"] = table["p"].to_numpy() < significance / d
    order = salience_order(abs_t)
    rank = np.empty(d, dtype=np.int32)
    rank[order] = np.arange(d)
    table["rank"] = rank
    return table


def salience_order(abs_t: np.ndarray) -> np.ndarray:
    """Dimensions from the largest |t| to the smallest (NaN last)."""
    return np.argsort(-np.nan_to_num(abs_t, nan=-1.0), kind="stable")


def bonferroni_threshold(significance: float, d: int, df_resid: int) -> float:
    """The |t| above which a dimension is significant after Bonferroni correction."""
    from scipy import stats

    return float(stats.t.isf(significance / d / 2.0, df_resid))


def topk_curve(gram: CenteredGram, order: np.ndarray, basis: str = "dimensions") -> pd.DataFrame:
    """Adjusted R² of the regression on the first k columns of `order`, k on topk_grid."""
    rows = []
    for k in topk_grid(len(order)):
        r2 = gram.r2_of(order[:k])
        rows.append({"basis": basis, "k": k, "r2": r2, "adj_r2": adjusted_r2(r2, gram.n, k)})
    return pd.DataFrame(rows)


def adj_r2_at(curve: pd.DataFrame, ks: tuple[int, ...] = (1, 4, 16)) -> dict[str, float]:
    """Adjusted R² of the curve at a few k (as JSON-friendly string keys)."""
    values = dict(zip(curve["k"], curve["adj_r2"], strict=True))
    return {str(k): float(values[k]) for k in ks if k in values}


def smallest_k_reaching(curve: pd.DataFrame, share: float) -> int:
    """The smallest k on the curve whose adjusted R² reaches `share` of the last one."""
    target = share * float(curve["adj_r2"].iloc[-1])
    reached = curve[curve["adj_r2"] >= target]
    return int(reached["k"].iloc[0]) if len(reached) else int(curve["k"].iloc[-1])
