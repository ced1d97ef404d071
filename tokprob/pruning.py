"""Pruning output-embedding dimensions by regression saliency (paper §4, SPEC §1.5).

Saliency of dimension j is |t_j| from the regression (or |A_j · std(E_·j)|). Deleting
the k% least salient dimensions zeroes those columns of E (the bias stays); two baselines
delete random dimensions or those of smallest column norm. Zeroing column j of E is the
same as zeroing coordinate j of every final hidden state, so the pruned logits follow
from cached hidden states: z' = z − h_D E_Dᵀ. Deletion orders are nested (the dimensions
deleted at 20% include those at 10%), so a whole curve costs about two LM-head passes.

    plans = deletion_plans(saliency_scores, column_norms, seeds=(0, 1, 2))
    metrics = sweep(hidden, targets, weight, bias, plans, fractions=(0.0, 0.1, …, 0.9))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tokprob.errors import TokprobError
from tokprob.progress import Progress
from tokprob.tensors import read_only_tensor

METHODS = ("saliency", "norm", "random")


@dataclass(frozen=True)
class DeletionPlan:
    """The order in which one method deletes dimensions (first = deleted first)."""

    method: str
    seed: int
    """Seed of the random baseline; −1 for the deterministic methods."""
    order: np.ndarray

    def deleted(self, fraction: float) -> np.ndarray:
        return self.order[: deleted_count(len(self.order), fraction)]


def deleted_count(d: int, fraction: float) -> int:
    """Dimensions deleted at a fraction: floor(fraction · d), robust to binary rounding."""
    return int(np.floor(fraction * d + 1e-9))


def check_fractions(fractions: tuple[float, ...]) -> None:
    if not fractions:
        raise TokprobError("The grid of fractions to prune is empty; give --fractions such "
                           "as 0,0.1,0.2,0.3.")
    for fraction in fractions:
        if not 0.0 <= fraction < 1.0 or not np.isfinite(fraction):
            raise TokprobError(f"A fraction of dimensions to prune must be in [0, 1) (got "
                               f"{fraction}): 0 keeps every dimension, 0.9 deletes 90%.")


def saliency_scores(regression: pd.DataFrame, column_std: np.ndarray, kind: str) -> np.ndarray:
    """|t_j| (kind "t"), or |A_j · std(E_·j)| (kind "slope-std"); NaN (constant) → 0."""
    if kind == "t":
        scores = np.abs(regression["t"].to_numpy())
    elif kind == "slope-std":
        scores = np.abs(regression["slope"].to_numpy() * column_std)
    else:
        raise TokprobError(f"Unknown --saliency {kind!r}; use t or slope-std.")
    return np.nan_to_num(scores, nan=0.0)


def deletion_plans(saliency: np.ndarray, column_norms: np.ndarray,
                   seeds: tuple[int, ...]) -> list[DeletionPlan]:
    """Least salient first; smallest column norm first; random permutations by seed."""
    plans = [DeletionPlan("saliency", -1, np.argsort(saliency, kind="stable")),
             DeletionPlan("norm", -1, np.argsort(column_norms, kind="stable"))]
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(saliency))
        plans.append(DeletionPlan("random", seed, order))
    return plans


def prune_columns(weight: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """A copy of E with the given columns zeroed."""
    pruned = np.array(weight, dtype=np.float32, copy=True)
    pruned[:, dims] = 0.0
    return pruned


@dataclass
class Totals:
    """Running sums of one pruned head's comparison with the original, over positions."""

    kl: float = 0.0
    js: float = 0.0
    top1: float = 0.0
    nll: float = 0.0
    alpha: torch.Tensor | None = None


def sweep(hidden: np.ndarray, targets: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
          plans: list[DeletionPlan], fractions: tuple[float, ...],
          rows_per_chunk: int = 256, progress: Progress | None = None) -> pd.DataFrame:
    """Per plan and fraction, comparing the pruned with the original next-token
    distributions at every position: mean KL(p‖p') and JS, top-1 agreement, perplexity,
    and KL and JS between the averaged distributions α and α'."""
    check_fractions(fractions)
    h_all = torch.as_tensor(np.array(hidden, dtype=np.float32))
    w = read_only_tensor(weight)
    b = None if bias is None else read_only_tensor(bias)
    t_all = torch.as_tensor(np.array(targets, dtype=np.int64))
    grid = sorted(set(fractions))
    totals = {(i, f): Totals() for i in range(len(plans)) for f in grid}
    alpha = torch.zeros(w.shape[0], dtype=torch.float64)
    original_nll = 0.0
    n, predicted = h_all.shape[0], int((t_all >= 0).sum())
    with torch.inference_mode():
        for start in range(0, n, rows_per_chunk):
            h, t = h_all[start:start + rows_per_chunk], t_all[start:start + rows_per_chunk]
            z = h @ w.T if b is None else h @ w.T + b
            log_p = torch.log_softmax(z, dim=-1)
            p = log_p.exp()
            top = z.argmax(-1)
            alpha += p.sum(0).double()
            original_nll += _nll(log_p, t)
            for i, plan in enumerate(plans):
                current, done = z.clone(), 0
                for fraction in grid:
                    dims = plan.order[done:deleted_count(len(plan.order), fraction)]
                    if len(dims):
                        index = torch.as_tensor(dims)
                        current -= h[:, index] @ w[:, index].T
                        done += len(dims)
                    accumulate(totals[i, fraction], log_p, p, top, current, t)
            if progress is not None:
                progress.update(len(h))
    rows = []
    for (i, fraction), total in totals.items():
        plan = plans[i]
        alpha_pruned = (total.alpha / n).numpy()
        reference = (alpha / n).numpy()
        rows.append({
            "method": plan.method, "seed": plan.seed, "fraction": fraction,
            "dims_deleted": deleted_count(len(plan.order), fraction),
            "kl": total.kl / n, "js": total.js / n, "top1_agreement": total.top1 / n,
            "perplexity": float(np.exp(total.nll / max(predicted, 1))),
            "original_perplexity": float(np.exp(original_nll / max(predicted, 1))),
            "alpha_kl": _kl(reference, alpha_pruned),
            "alpha_js": _js(reference, alpha_pruned),
        })
    return pd.DataFrame(rows)


def accumulate(total: Totals, log_p: torch.Tensor, p: torch.Tensor, top: torch.Tensor,
               logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Add one chunk of positions: the original log-probabilities, probabilities and
    top-1 tokens against the pruned logits (rows: positions)."""
    log_q = torch.log_softmax(logits, dim=-1)
    q = log_q.exp()
    total.kl += float((p * (log_p - log_q)).sum(-1).double().sum())
    log_m = torch.log((p + q) / 2).clamp_min(-1e30)
    js = 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)
    total.js += float(js.double().sum())
    total.top1 += float((logits.argmax(-1) == top).sum())
    total.nll += _nll(log_q, targets)
    summed = q.sum(0).double()
    total.alpha = summed if total.alpha is None else total.alpha + summed


def _nll(log_p: torch.Tensor, targets: torch.Tensor) -> float:
    has_next = targets >= 0
    return -float(log_p[has_next].gather(1, targets[has_next].unsqueeze(1)).double().sum())


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    positive = p > 0
    return float(np.sum(p[positive] * np.log(p[positive] / q[positive])))


def _js(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def headline_fraction(metrics: pd.DataFrame, method: str, split: str,
                      threshold: float) -> float:
    """The largest fraction whose averaged-distribution JS stays below the threshold
    (mean over seeds), with every smaller fraction also below it."""
    rows = metrics[(metrics["method"] == method) & (metrics["split"] == split)]
    curve = rows.groupby("fraction")["alpha_js"].mean().sort_index()
    below = (curve < threshold).to_numpy()
    if not below[0]:
        return 0.0
    last = len(below) if below.all() else int(np.argmin(below))
    return float(curve.index[last - 1])


def greedy_agreement(original: np.ndarray, pruned: np.ndarray) -> tuple[float, float]:
    """Token-level match rate of two greedy continuations (prompts × new tokens) and the
    mean first position where they differ (the continuation length if they never do)."""
    same = original == pruned
    length = original.shape[1]
    first = np.where(same.all(axis=1), length, np.argmin(same, axis=1))
    return float(same.mean()), float(first.mean())
