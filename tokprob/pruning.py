"""Pruning output-embedding dimensions by regression saliency (paper §4), and pruning
that compensates for what it deletes.

Saliency of dimension j is |t_j| from the regression (or |A_j · std(E_·j)|). Deleting
the k% least salient dimensions zeroes those columns of E (the bias stays); two baselines
delete random dimensions or those of smallest column norm. Zeroing column j of E is the
same as zeroing coordinate j of every final hidden state, so the pruned logits follow
from cached hidden states: z' = z − h_D E_Dᵀ. Deletion orders are nested (the dimensions
deleted at 20% include those at 10%), so a whole curve costs about two LM-head passes.

Compensated pruning predicts the deleted coordinates from the kept ones, h_D ≈ h_K M
(least squares on the detecting split's hidden states, no intercept), and folds M into
the kept columns: E'_K = E_K + E_D Mᵀ, E'_D = 0. The model keeps |D| zero columns and
gains nothing else; its logits are z − (h_D − h_K M) E_Dᵀ. Only HᵀH is needed.

    plans = deletion_plans(saliency_scores, column_norms, seeds=(0, 1, 2),
                           moment=second_moment(detect_hidden), metric=embedding_metric(E))
    metrics = sweep(hidden, targets, weight, bias, plans, fractions=(0.0, 0.1, …, 0.9))

Generations of the pruned models: `tokprob.generation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tokprob.distribution_change import Reference, Totals, accumulate
from tokprob.errors import TokprobError
from tokprob.progress import Progress
from tokprob.regression import CenteredGram
from tokprob.tensors import read_only_tensor

METHODS = ("saliency", "norm", "random", "compensated", "compensated-greedy")

SPLITS = ("id", "ood")
"""Where the pruned outputs are compared: held-out text of the detecting corpus (in
distribution) and of another corpus (out of distribution)."""

MAIN_METRICS = ("kl", "js", "alpha_kl", "alpha_js", "top1_agreement", "perplexity",
                "generation_match", "first_divergence")
"""The columns a reader compares across methods (the generation ones when measured)."""

RIDGE = 1e-6
"""Relative ridge of the compensation's normal equations, times the mean diagonal of HᵀH.
It keeps the float64 solve well posed when kept coordinates are (nearly) collinear or
the positions are fewer than the dimensions, and moves M only along directions carrying
less than a millionth of the average coordinate's energy, which hardly reach the logits."""


@dataclass(frozen=True)
class DeletionPlan:
    """The order in which one method deletes dimensions (first = deleted first), and the
    compensation its pruned models get (HᵀH of the detecting split; None: plain zeroing)."""

    method: str
    seed: int
    """Seed of the random baseline; −1 for the deterministic methods."""
    order: np.ndarray
    moment: np.ndarray | None = None

    def deleted(self, fraction: float) -> np.ndarray:
        return self.order[: deleted_count(len(self.order), fraction)]

    def pruned_weight(self, weight: np.ndarray, fraction: float) -> np.ndarray:
        """E with this plan's dimensions deleted at `fraction`, compensated if it is."""
        dims = self.deleted(fraction)
        if self.moment is None:
            return prune_columns(weight, dims)
        return compensated_weight(weight, dims, self.moment)


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


PRUNE_METHODS = ("saliency", "compensated", "compensated-greedy")
"""The methods `tokprob prune` writes a model by (the baselines are for comparison only)."""


def check_prune_method(method: str) -> None:
    if method not in PRUNE_METHODS:
        raise TokprobError(f"Unknown pruning method {method!r}; use one of "
                           f"{', '.join(PRUNE_METHODS)}.")


def check_regression_target(target: str) -> None:
    """Saliency is |t| of the regression of −log α (paper §4): refuse another target."""
    if target != "alpha":
        raise TokprobError(f"Pruning ranks dimensions by the regression of −log α on the "
                           f"output embeddings, not of −log {target}; run it with --target "
                           f"alpha (the default).")


def saliency_scores(regression: pd.DataFrame, column_std: np.ndarray, kind: str) -> np.ndarray:
    """|t_j| (kind "t"), or |A_j · std(E_·j)| (kind "slope-std"); NaN (constant) → 0."""
    if kind == "t":
        scores = np.abs(regression["t"].to_numpy())
    elif kind == "slope-std":
        scores = np.abs(regression["slope"].to_numpy() * column_std)
    else:
        raise TokprobError(f"Unknown --saliency {kind!r}; use t or slope-std.")
    return np.nan_to_num(scores, nan=0.0)


def column_std(gram: CenteredGram) -> np.ndarray:
    """std(E_·j) of every column over the fitted rows (n − 1 denominator), for the
    slope-std saliency."""
    return np.sqrt(np.diag(gram.gram) / (gram.n - 1))


def deletion_plans(saliency: np.ndarray, column_norms: np.ndarray, seeds: tuple[int, ...],
                   moment: np.ndarray | None = None,
                   metric: np.ndarray | None = None) -> list[DeletionPlan]:
    """Least salient first; smallest column norm first; random permutations by seed. With
    the detecting split's HᵀH (`moment`) and the embeddings' logit metric (`metric`, see
    `embedding_metric`): least salient first again, compensated, and the compensated
    greedy order."""
    by_saliency = np.argsort(saliency, kind="stable")
    plans = [DeletionPlan("saliency", -1, by_saliency),
             DeletionPlan("norm", -1, np.argsort(column_norms, kind="stable"))]
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(saliency))
        plans.append(DeletionPlan("random", seed, order))
    if moment is not None:
        plans.append(DeletionPlan("compensated", -1, by_saliency, moment))
        if metric is not None:
            plans.append(DeletionPlan("compensated-greedy", -1,
                                      compensated_greedy_order(moment, metric), moment))
    return plans


def prune_columns(weight: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """A copy of E with the given columns zeroed."""
    pruned = np.array(weight, dtype=np.float32, copy=True)
    pruned[:, dims] = 0.0
    return pruned


def second_moment(hidden: np.ndarray, rows_per_chunk: int = 4096) -> np.ndarray:
    """HᵀH in float64 over the rows of H (positions × d), without an intercept: the
    pruned model must not gain a bias."""
    d = hidden.shape[1]
    moment = np.zeros((d, d))
    for start in range(0, len(hidden), rows_per_chunk):
        chunk = np.asarray(hidden[start:start + rows_per_chunk], dtype=np.float64)
        moment += chunk.T @ chunk
    return moment


def _ridged(moment: np.ndarray) -> np.ndarray:
    """HᵀH + λI with λ = RIDGE × mean diagonal (see RIDGE)."""
    ridge = RIDGE * float(np.trace(moment)) / len(moment)
    return moment + ridge * np.eye(len(moment))


def compensation(moment: np.ndarray, deleted: np.ndarray) -> np.ndarray:
    """M (|K| × |D|, kept in increasing index order) minimizing ‖H_D − H_K M‖² from HᵀH:
    M = (H_KᵀH_K)⁻¹ H_KᵀH_D in float64. The same M minimizes the squared logit
    error ‖(H_D − H_K M) E_Dᵀ‖² for any E_D: least squares minimizes the residual
    covariance itself, not only its trace."""
    kept = np.setdiff1d(np.arange(len(moment)), deleted)
    ridged = _ridged(moment)
    return np.linalg.solve(ridged[np.ix_(kept, kept)], ridged[np.ix_(kept, deleted)])


def compensated_weight(weight: np.ndarray, deleted: np.ndarray,
                       moment: np.ndarray) -> np.ndarray:
    """E' with E'_K = E_K + E_D Mᵀ and E'_D = 0 (float32, like the LM head)."""
    deleted = np.asarray(deleted, dtype=np.int64)
    kept = np.setdiff1d(np.arange(weight.shape[1]), deleted)
    source = np.asarray(weight, dtype=np.float64)
    pruned = np.zeros(weight.shape, dtype=np.float32)
    folded = source[:, deleted] @ compensation(moment, deleted).T if len(deleted) else 0.0
    pruned[:, kept] = source[:, kept] + folded
    return pruned


def embedding_metric(weight: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Eᵀ W E (d × d, float64) for the vocabulary metric W that scores a logit error e:
    eᵀWe. Softmax ignores a shift shared by every token, so W removes the mean: with α,
    W = diag(α) − ααᵀ (the α-weighted variance of e, the second-order change of the KL
    divergence when every position's distribution is α); without, the plain variance."""
    source = np.asarray(weight, dtype=np.float64)
    if alpha is None:
        centred = source - source.mean(axis=0)
        return centred.T @ centred / len(source)
    weights = np.asarray(alpha, dtype=np.float64) / float(np.sum(alpha))
    centred = source - weights @ source
    return centred.T @ (centred * weights[:, None])


def compensated_greedy_order(moment: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """Every dimension, deleted first = adds least logit error under compensation.

    With D deleted and compensated from K, deleting j ∈ K too and refitting adds exactly
    RSS_j · E'_jᵀ W E'_j to Σ_x ‖(h_D − h_K M) E_Dᵀ‖²_W, where RSS_j = 1/(H_KᵀH_K)⁻¹_jj is
    the residual sum of squares of h_j given the other kept coordinates and E'_j is j's
    column already compensated: the new residual is orthogonal to every kept
    coordinate, so the cross term vanishes. Greedy on that increment, with rank-one
    updates of the precision (H_KᵀH_K)⁻¹ and of E'ᵀWE' (O(d³) in all)."""
    precision = np.linalg.inv(_ridged(moment))
    folded = np.array(metric, dtype=np.float64, copy=True)
    kept = list(range(len(moment)))
    order = []
    while kept:
        increments = np.diag(folded) / np.diag(precision)
        pick = int(np.argmin(increments))
        order.append(kept.pop(pick))
        others = np.arange(len(increments)) != pick
        # h_j ≈ h_others · m; folding: E'_others += E'_j mᵀ.
        m = -precision[others, pick] / precision[pick, pick]
        cross = folded[others, pick]
        folded = (folded[np.ix_(others, others)] + np.outer(cross, m) + np.outer(m, cross)
                  + folded[pick, pick] * np.outer(m, m))
        precision = (precision[np.ix_(others, others)]
                     - np.outer(precision[others, pick], precision[pick, others])
                     / precision[pick, pick])
    return np.array(order, dtype=np.int64)


@dataclass(frozen=True)
class Fold:
    """One compensated deletion: the deleted and kept dimensions and M (float32)."""

    deleted: torch.Tensor
    kept: torch.Tensor
    compensation: torch.Tensor

    @classmethod
    def of(cls, plan: DeletionPlan, fraction: float) -> Fold:
        deleted = np.asarray(plan.deleted(fraction), dtype=np.int64)
        kept = np.setdiff1d(np.arange(len(plan.order)), deleted)
        return cls(torch.as_tensor(deleted), torch.as_tensor(kept),
                   torch.as_tensor(compensation(plan.moment, deleted), dtype=torch.float32))

    def logit_change(self, hidden: torch.Tensor, columns: torch.Tensor,
                     out: torch.Tensor) -> torch.Tensor:
        """−(h_D − h_K M) E_Dᵀ, written into `out` (positions × vocab): how the compensated
        head's logits differ from the original's. `columns` is Eᵀ (d × vocab,
        contiguous), so E_Dᵀ is a row gather."""
        if len(self.deleted) == 0:
            return out.zero_()
        residual = hidden[:, self.kept] @ self.compensation - hidden[:, self.deleted]
        return torch.mm(residual, columns[self.deleted], out=out)


def sweep(hidden: np.ndarray, targets: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
          plans: list[DeletionPlan], fractions: tuple[float, ...],
          rows_per_chunk: int = 256, progress: Progress | None = None) -> pd.DataFrame:
    """Per plan and fraction, comparing the pruned with the original next-token
    distributions at every position: mean KL(p‖p') and JS, top-1 agreement, perplexity,
    and KL and JS between the averaged distributions α and α'."""
    check_fractions(fractions)
    h_all = torch.as_tensor(np.array(hidden, dtype=np.float32))
    w = read_only_tensor(weight)
    # Eᵀ once: deleting dimensions gathers columns of E, which in E's own layout touches
    # every row of it; in Eᵀ they are contiguous rows.
    columns = w.T.contiguous()
    b = None if bias is None else read_only_tensor(bias)
    t_all = torch.as_tensor(np.array(targets, dtype=np.int64))
    grid = sorted(set(fractions))
    totals = {(i, f): Totals() for i in range(len(plans)) for f in grid}
    folds = {(i, f): Fold.of(plan, f) for i, plan in enumerate(plans) for f in grid
             if plan.moment is not None}
    alpha = torch.zeros(w.shape[0], dtype=torch.float64)
    original_nll = 0.0
    n, predicted = h_all.shape[0], int((t_all >= 0).sum())
    with torch.inference_mode():
        for start in range(0, n, rows_per_chunk):
            h, t = h_all[start:start + rows_per_chunk], t_all[start:start + rows_per_chunk]
            reference = Reference.of(h @ w.T if b is None else h @ w.T + b, t)
            alpha += reference.alpha_sum()
            original_nll -= float(reference.log_p_next.double().sum())
            change = torch.empty_like(reference.logits)
            for i, plan in enumerate(plans):
                if plan.moment is not None:
                    for fraction in grid:
                        folds[i, fraction].logit_change(h, columns, out=change)
                        accumulate(totals[i, fraction], reference, change)
                    continue
                change.zero_()
                done = 0
                for fraction in grid:
                    dims = plan.order[done:deleted_count(len(plan.order), fraction)]
                    if len(dims):
                        index = torch.as_tensor(dims)
                        change.addmm_(h[:, index], columns[index], alpha=-1.0)
                        done += len(dims)
                    accumulate(totals[i, fraction], reference, change)
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


def headline_fractions(metrics: pd.DataFrame, threshold: float) -> dict[str, float]:
    """`headline_fraction` of every method on every split, keyed `method/split`."""
    return {f"{method}/{split}": headline_fraction(metrics, method, split, threshold)
            for method in METHODS for split in SPLITS}


def metrics_table(per_split: list[pd.DataFrame]) -> pd.DataFrame:
    """The splits' metrics in one table, led by the columns that identify a row."""
    table = pd.concat(per_split, ignore_index=True)
    leading = ["method", "seed", "fraction", "split"]
    return table[leading + [c for c in table if c not in leading]]


def main_metrics(metrics: pd.DataFrame) -> list[dict]:
    """Per method, split and fraction, seeds averaged: the numbers a reader compares."""
    columns = [c for c in MAIN_METRICS if c in metrics]
    grouped = metrics.groupby(["method", "split", "fraction"], sort=True)[columns].mean()
    return [dict(zip(["method", "split", "fraction"], key, strict=True)) | row
            for key, row in zip(grouped.index, grouped.to_dict("records"), strict=True)]


def one_random_seed(plans: list[DeletionPlan]) -> list[DeletionPlan]:
    """The plans without the random baseline's seeds but the last: generation runs the
    whole model per plan and fraction, so it is the expensive part."""
    seeds = [plan.seed for plan in plans if plan.method == "random"]
    return [plan for plan in plans if plan.method != "random" or plan.seed == seeds[-1]]
