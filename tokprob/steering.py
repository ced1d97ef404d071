"""Steering output probabilities by editing output embeddings (paper §3).

To multiply the averaged probability α_w of token w by r, move its output embedding
along the encoding direction found by the regression:

    E'_w = E_w − log(r) · Ω Aᵀ / (A Ω Aᵀ)

A is the regression slope (paper §2.1), Ω a 0/1 mask over dimensions. Only the LM head
changes, so the effect on held-out text follows from the cached final hidden states h:
the logit of w moves by −log(r)·(h·v) with v = ΩAᵀ/(AΩAᵀ), the other logits stay.

    mask = omega_mask(regression_table, "bonferroni")
    v = steering_direction(slope, mask)
    effects = SteeringEvaluator(hidden, weight, bias).evaluate(token_ids, ratios, v)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import torch

from tokprob.errors import TokprobError
from tokprob.probabilities import alpha_percentile
from tokprob.resampling import percentile_interval, resample_groups
from tokprob.tensors import read_only_tensor
from tokprob.windows import NO_TARGET

OMEGAS = ("bonferroni", "all", "top-k")
STEER_TOLERANCE = 0.05
"""|log(α'/α) − log r| on held-out text within which an edit of `tokprob steer` lands on
its ratio; beyond it the command says so."""

CALIBRATED_GOAL = 0.03
"""Median |log(α'/α) − log r| the calibrated edit aims at on held-out text; the sweep
reports how many detecting windows it needs to get there."""

SUPPORT_BINS = (0.0, 3.0, 10.0, 30.0, np.inf)
"""Edges of the bins of a target's support: the effective number of positions (Kish, under
p_w) its α rests on, the fewer of the detecting and the held-out split's."""
WELL_MEASURED = 10.0
"""Support from which a target's α is an average over enough positions to be steered
measurably. Below it, α on each split is carried by a handful of positions (often one or
two where the token is near certain), so α'/α on held-out text depends on which positions
the split happens to hold more than on the edit: even the logit-bias ceiling misses there.
Errors of the targets below it are reported apart, never dropped."""


def omega_mask(regression: pd.DataFrame, omega: str, significance: float = 0.05,
               top_k: int = 16) -> np.ndarray:
    """Which dimensions the edit may move: Bonferroni-significant ones, all, or the top-k
    by |t|. `regression` has one row per dimension with `slope`, `t` and `p`."""
    d = len(regression)
    informative = np.isfinite(regression["t"].to_numpy())
    if omega == "bonferroni":
        mask = informative & (regression["p"].to_numpy() < significance / d)
    elif omega == "all":
        mask = informative
    elif omega == "top-k":
        if top_k < 1:
            raise TokprobError(f"--top-k must be at least 1 (got {top_k}).")
        order = np.argsort(-np.nan_to_num(np.abs(regression["t"].to_numpy()), nan=-1.0))
        mask = np.zeros(d, dtype=bool)
        mask[order[:top_k]] = True
        mask &= informative
    else:
        raise TokprobError(f"Unknown --omega {omega!r}; choose one of {', '.join(OMEGAS)}.")
    if not mask.any():
        raise TokprobError(
            f"Ω = {omega} selects no dimension of the {d} (none is "
            + ("significant after Bonferroni correction" if omega == "bonferroni"
               else "informative") + "). Use --omega all or --omega top-k, or more data."
        )
    return mask


def steering_direction(slope: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """v = Ω Aᵀ / (A Ω Aᵀ): moving an embedding by −log(r)·v changes A·E by −log r."""
    masked = np.where(mask, slope, 0.0).astype(np.float64)
    norm = float(masked @ masked)
    if norm == 0.0:
        raise TokprobError("The regression slope is zero on every selected dimension; "
                           "there is no encoding direction to steer along.")
    return masked / norm


def resolve_targets(targets: tuple[str, ...], tokenizer, vocab_size: int) -> list[int]:
    """Token ids of user targets: an integer is an id, anything else must be exactly one
    token of the model's tokenizer."""
    ids = []
    for target in targets:
        if target.strip().lstrip("-").isdigit():
            token = int(target)
            if not 0 <= token < vocab_size:
                raise TokprobError(
                    f"Token id {token} is not in the model's vocabulary of {vocab_size} "
                    f"output rows (ids 0 to {vocab_size - 1})."
                )
            ids.append(token)
            continue
        pieces = tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            shown = ", ".join(repr(tokenizer.decode([p])) for p in pieces)
            raise TokprobError(
                f"{target!r} is not one token: the model's tokenizer makes {len(pieces)} "
                f"of it ({shown or 'none'}). Steer one token at a time (each of those is "
                "one), or give its integer id."
            )
        ids.append(int(pieces[0]))
    return ids


def sample_targets(alpha: np.ndarray, usable: np.ndarray, percentiles: tuple[float, ...],
                   per_percentile: int, seed: int) -> list[tuple[int, float]]:
    """(token, percentile) pairs: tokens whose α sits near each percentile, by seed."""
    rank = alpha_percentile(alpha)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, float]] = []
    taken: set[int] = set()
    for percentile in percentiles:
        distance = np.where(usable, np.abs(rank - percentile), np.inf)
        distance[list(taken)] = np.inf
        near = np.flatnonzero(distance <= 0.5)
        if len(near) < per_percentile:  # too few near it: the closest ones
            near = np.argsort(distance, kind="stable")[:per_percentile]
        for token in rng.choice(near, size=min(per_percentile, len(near)), replace=False):
            chosen.append((int(token), float(percentile)))
            taken.add(int(token))
    return chosen


def error_summary(sweep: pd.DataFrame) -> list[dict]:
    """Per method, for its fit on the most detecting data: median and 90th percentile of
    |log(α'/α) − log r| over the feasible pairs, the median bound on the KL over other
    tokens, and the counts of feasible and infeasible pairs; one row per r and one for
    all r together."""
    rows = []
    for method, pairs in sweep.groupby("method", sort=False):
        full = pairs[pairs["n_fit"] == pairs["n_fit"].max()]
        rows += [{"method": method, "r": f"{r:g}"} | _error_stats(group)
                 for r, group in full.groupby("r")]
        rows.append({"method": method, "r": "all"} | _error_stats(full))
    return rows


def support(sweep: pd.DataFrame) -> pd.Series:
    """Per row, the target's support: the effective positions its α rests on, the fewer of
    the two splits (a ratio is only as precise as the split with fewer of them)."""
    return np.minimum(sweep["detect_effective_positions"], sweep["heldout_effective_positions"])


def errors_by_support(sweep: pd.DataFrame) -> list[dict]:
    """`error_summary`'s statistics over all r, per method and bin of the targets' support:
    how the error depends on how many positions the target's α rests on."""
    edges = SUPPORT_BINS
    labels = [f"{low:g}–{high:g}" if np.isfinite(high) else f"≥ {low:g}"
              for low, high in pairwise(edges)]
    rows = []
    for method, pairs in sweep.groupby("method", sort=False):
        full = pairs[pairs["n_fit"] == pairs["n_fit"].max()]
        bins = pd.cut(support(full), edges, right=False, labels=labels)
        rows += [{"method": method, "r": "all", "support": str(label)} | _error_stats(group)
                 for label, group in full.groupby(bins, observed=True)]
    return rows


def well_measured(sweep: pd.DataFrame) -> pd.DataFrame:
    """The rows of the targets whose support reaches `WELL_MEASURED`."""
    return sweep[support(sweep) >= WELL_MEASURED]


def method_errors(rows: list[dict], method: str, r: str = "all") -> dict:
    """The row of `error_summary` for one method and r."""
    return next(row for row in rows if row["method"] == method and row["r"] == r)


def _error_stats(pairs: pd.DataFrame) -> dict[str, float]:
    feasible = pairs[pairs["feasible"]]
    errors = feasible["abs_log_error"]
    return {"median": float(errors.median()), "p90": float(errors.quantile(0.9)),
            "median_achieved": float(feasible["achieved"].median()),
            "median_kl_other_bound": float(feasible["kl_other_bound"].median()),
            "feasible": len(feasible), "infeasible": int(len(pairs) - len(feasible))}


def fewshot_errors(sweep: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per method, the median error over feasible pairs by detecting windows used."""
    feasible = sweep[sweep["feasible"]]
    return {method: {str(n): float(g["abs_log_error"].median())
                     for n, g in rows.groupby("n_fit")}
            for method, rows in feasible.groupby("method", sort=False)}


def paired_comparison(sweep: pd.DataFrame) -> dict[str, Any]:
    """Closed form against calibrated on the same pairs (those the calibrated edit can
    reach), each fitted on the most detecting data: medians and their ratio, with 95%
    intervals of the calibrated median and of the ratio over resampled target tokens
    (tokprob.resampling: the pairs of one target are not independent)."""
    full = {method: rows[rows["n_fit"] == rows["n_fit"].max()].set_index(["token_id", "r"])
            for method, rows in sweep.groupby("method", sort=False)}
    reachable = full["calibrated"].index[full["calibrated"]["feasible"].to_numpy()]
    closed = full["closed_form"].loc[reachable, "abs_log_error"].to_numpy()
    calibrated = full["calibrated"].loc[reachable, "abs_log_error"].to_numpy()
    if not len(reachable):
        return {"pairs": 0, "closed_form_median": float("nan"),
                "calibrated_median": float("nan"), "calibrated_p90": float("nan"),
                "improvement": float("nan")}

    def medians(rows: np.ndarray) -> tuple[float, float]:
        """The calibrated median and its gain over the closed form, on these pairs."""
        calibrated_median = float(np.nanmedian(calibrated[rows]))
        closed_median = float(np.nanmedian(closed[rows]))
        return (calibrated_median, closed_median / calibrated_median
                if calibrated_median > 0 else float("inf"))

    calibrated_median, improvement = medians(np.arange(len(reachable)))
    replicates = resample_groups(reachable.get_level_values("token_id").to_numpy(), medians)
    return {"pairs": len(reachable), "closed_form_median": float(np.nanmedian(closed)),
            "calibrated_median": calibrated_median,
            "calibrated_p90": float(np.nanquantile(calibrated, 0.9)),
            "improvement": improvement,
            "calibrated_median_interval": percentile_interval(replicates[:, 0]),
            "improvement_interval": percentile_interval(replicates[:, 1])}


def windows_to_reach(fewshot: dict[str, float], error: float) -> int | None:
    """The fewest detecting windows whose fit has a median error ≤ `error` (None: none)."""
    return min((int(n) for n, median in fewshot.items() if median <= error), default=None)


def window_of_positions(targets: np.ndarray) -> np.ndarray:
    """Window index of every stored position (a window's last position has no next token)."""
    ends = np.asarray(targets) == NO_TARGET
    return np.concatenate([[0], np.cumsum(ends)[:-1]]).astype(np.int64)


def check_ratios(ratios: list[float]) -> None:
    for ratio in ratios:
        if not np.isfinite(ratio) or ratio <= 0:
            raise TokprobError(
                f"A steering ratio must be a positive finite number (got {ratio}); "
                "r = 2 doubles a token's probability, r = 0.5 halves it."
            )


def check_edits(tokens: list[str], ratios: list[float]) -> None:
    """One positive finite ratio per token, as `tokprob steer --token T --ratio R` takes."""
    if len(tokens) != len(ratios):
        raise TokprobError(f"Give one --ratio per --token ({len(tokens)} tokens, "
                           f"{len(ratios)} ratios).")
    check_ratios(ratios)


def steer_embeddings(weight: np.ndarray, targets: dict[int, float],
                     direction: np.ndarray) -> np.ndarray:
    """A copy of E with E_w − log(r_w)·v for each target token w."""
    check_ratios(list(targets.values()))
    steered = np.array(weight, dtype=np.float32, copy=True)
    for token, ratio in targets.items():
        steered[token] = weight[token] - np.log(ratio) * direction
    return steered


@dataclass(frozen=True)
class SteeringEffects:
    """Per (token, r) pair, on the held-out positions."""

    alpha: np.ndarray
    """α_w before the edit."""
    steered_alpha: np.ndarray
    """α'_w after it."""
    kl_other: np.ndarray
    """KL(α ‖ α') between the averaged distributions over the non-target tokens
    (each renormalized): how much the edit disturbs every other token."""
    kl_other_bound: np.ndarray
    """An upper bound on kl_other that costs no LM-head pass (`kl_over_other_tokens_bound`)."""

    @property
    def achieved(self) -> np.ndarray:
        return self.steered_alpha / self.alpha


@dataclass(frozen=True)
class TargetLogits:
    """What an edit of target rows needs from the LM head at every position, in float64:
    the targets' logits and the log-mass of every other token. Editing row w by δ moves
    only z_w (by h·δ), so these two numbers give p'_w exactly for any edit."""

    tokens: np.ndarray
    """(targets,) the target token ids, one column each."""
    logit: np.ndarray
    """(positions, targets) z_w."""
    log_rest: np.ndarray
    """(positions, targets) log Σ_{j≠w} exp z_j; with `jointly`, one shared column of the
    log-mass outside every target."""
    lse: np.ndarray
    """(positions,) log Σ_j exp z_j."""

    def probabilities(self) -> np.ndarray:
        """(positions, targets) p_w before any edit."""
        return np.exp(self.logit - self.lse[:, None])


def target_logits(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                  tokens: np.ndarray, jointly: bool = False,
                  rows_per_chunk: int = 1024) -> TargetLogits:
    """One LM-head pass: per position the float64 log-sum-exp, the targets' logits and the
    log-mass of the other tokens, without the cancellation of log(1 − p_w) at p_w ≈ 1.

    Alone (the sweep, one edit at a time): where w is the argmax the other tokens' mass is
    the log-sum-exp with the argmax column left out, computed directly; elsewhere
    p_w ≤ 1/2 and lse + log1p(−p_w) is exact. Jointly (several edits at once): the
    log-sum-exp with every target column left out."""
    tokens = np.asarray(tokens, dtype=np.int64)
    h_all, w, b = read_only_tensor(hidden), read_only_tensor(weight), _optional(bias)
    index = torch.as_tensor(tokens)
    logit, rest, lse = [], [], []
    with torch.inference_mode():
        for start in range(0, len(h_all), rows_per_chunk):
            logits = h_all[start:start + rows_per_chunk] @ w.T
            if b is not None:
                logits += b
            z = logits[:, index].double()
            total = _logsumexp64(logits)
            if jointly:
                logits[:, index] = -torch.inf
                other = _logsumexp64(logits)[:, None]
            else:
                top = logits.argmax(dim=1, keepdim=True)
                logits.scatter_(1, top, -torch.inf)
                without_top = _logsumexp64(logits)[:, None]
                p = torch.exp(z - total[:, None]).clamp(max=0.5)
                other = torch.where(index == top, without_top,
                                    total[:, None] + torch.log1p(-p))
            logit.append(z)
            rest.append(other)
            lse.append(total)
    return TargetLogits(tokens=tokens, logit=torch.cat(logit).numpy(),
                        log_rest=torch.cat(rest).numpy(), lse=torch.cat(lse).numpy())


def _optional(bias: np.ndarray | None) -> torch.Tensor | None:
    return None if bias is None else read_only_tensor(bias)


def _logsumexp64(logits: torch.Tensor) -> torch.Tensor:
    """Row log-sum-exp of float32 logits, accumulated in float64 (rows of −inf give −inf)."""
    top = logits.max(dim=1, keepdim=True).values
    finite = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(logits - finite).sum(dim=1, dtype=torch.float64)
    return finite[:, 0].double() + torch.log(total)


def steered_log_normalizer(stats: TargetLogits, columns: np.ndarray,
                           shifts: np.ndarray) -> np.ndarray:
    """(positions, pairs) log-sum-exp after moving logit `columns[k]` by `shifts[:, k]`,
    one edit per pair."""
    moved = stats.logit[:, columns] + shifts
    return np.logaddexp(stats.log_rest[:, columns], moved)


def steered_alpha(stats: TargetLogits, columns: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """α'_w of each pair (one edit per pair) over the positions of `stats`."""
    moved = stats.logit[:, columns] + shifts
    return np.exp(moved - steered_log_normalizer(stats, columns, shifts)).mean(axis=0)


def kl_over_other_tokens_bound(stats: TargetLogits, columns: np.ndarray,
                               shifts: np.ndarray, pairs_per_chunk: int = 64) -> np.ndarray:
    """An upper bound on `kl_over_other_tokens` of each pair at a cost independent of |V|.

    Editing row w leaves every position's distribution over the other tokens, renormalized,
    as it was: only the position's share of non-target mass, 1 − p_w(x), changes. The
    averaged non-target distributions before and after are therefore mixtures of the same
    per-position distributions, with weights a(x) ∝ 1 − p_w(x) and b(x) ∝ 1 − p'_w(x), and
    by the data-processing inequality their KL is at most KL(a ‖ b), a sum over positions.
    The bound is reached when positions predict disjoint sets of tokens; the more they
    share, the looser it is."""
    bounds = [_mixture_weight_kl(stats, columns[start:start + pairs_per_chunk],
                                 shifts[:, start:start + pairs_per_chunk])
              for start in range(0, len(columns), pairs_per_chunk)]
    return np.concatenate(bounds) if bounds else np.empty(0)


def _mixture_weight_kl(stats: TargetLogits, columns: np.ndarray,
                       shifts: np.ndarray) -> np.ndarray:
    """KL(a ‖ b) over positions for each pair, a ∝ 1 − p_w, b ∝ 1 − p'_w = a·exp(−g) up
    to normalization, with g = lse' − lse the change of the log-normalizer.

    With m the a-weighted mean of g and y = g − m, KL(a ‖ b) = log Σ a·exp(−y)
    = log1p(Σ a·(expm1(−y) + y)): a sum of non-negative second-order terms, so a rare
    target's KL of 1e-30 keeps its digits."""
    log_p = stats.logit[:, columns] - stats.lse[:, None]
    log_rest = stats.log_rest[:, columns] - stats.lse[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # g = log(1 − p + p·e^s): log1p is exact where p ≤ 1/2; above, 1 − p is kept as
        # the log-mass of the other tokens, which the LM-head pass computed directly.
        g = np.where(log_p <= -np.log(2.0),
                     np.log1p(np.exp(log_p) * np.expm1(shifts)),
                     np.logaddexp(log_rest, log_p + shifts))
    weight = np.exp(log_rest - log_rest.max(axis=0))
    weight /= weight.sum(axis=0)
    y = g - np.sum(weight * g, axis=0)
    return np.log1p(np.sum(weight * _expm1_neg_plus(y), axis=0))


def _expm1_neg_plus(y: np.ndarray) -> np.ndarray:
    """exp(−y) − 1 + y, without the cancellation of its terms near y = 0 (Taylor series
    to y⁵ below |y| = 1e-2, where the next term is below 1e-16 of the sum)."""
    series = y * y * (1 / 2 - y * (1 / 6 - y * (1 / 24 - y / 120)))
    return np.where(np.abs(y) < 1e-2, series, np.expm1(-y) + y)


def kl_over_other_tokens(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                         stats: TargetLogits, columns: np.ndarray, shifts: np.ndarray,
                         rows_per_chunk: int = 1024) -> np.ndarray:
    """KL(α ‖ α') over the non-target tokens of each pair, renormalized (one LM-head pass).

    An edit of row w scales every other token's probability at x by
    f(x) = exp(lse(x) − lse'(x)), so α'_j = α_j + mean_x p_j(x)·(f(x) − 1) for j ≠ w.
    f − 1 is kept apart from the 1, which float32 would round away for a rare target.
    Besides the pass, the (|V| × positions) @ (positions × pairs) product costs
    pairs / d LM-head passes."""
    h_all, w, b = read_only_tensor(hidden), read_only_tensor(weight), _optional(bias)
    change = torch.as_tensor(
        np.expm1(stats.lse[:, None] - steered_log_normalizer(stats, columns, shifts)))
    lse = torch.as_tensor(stats.lse)
    alpha = torch.zeros(w.shape[0], dtype=torch.float64)
    moved = torch.zeros(w.shape[0], len(columns), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(h_all), rows_per_chunk):
            stop = start + rows_per_chunk
            logits = h_all[start:stop] @ w.T
            if b is not None:
                logits += b
            probs = torch.exp(logits - lse[start:stop, None].float())
            alpha += probs.sum(0, dtype=torch.float64)
            moved += (probs.T @ change[start:stop].float()).double()
    n = len(h_all)
    return _kl_over_non_targets((alpha / n).numpy(), (moved / n).numpy(),
                                stats.tokens[columns])


class SteeringEvaluator:
    """Evaluates edits of single output rows from cached final hidden states.

    With the logits z = hEᵀ + b of a position, editing row w by δ moves only z_w, to
    z_w + h·δ; the normalizer follows in closed form. One LM-head pass at construction
    keeps, per position, the log-sum-exp and the targets' logits; any number of edits is
    then evaluated at a cost independent of |V|, with the bound on the KL over other
    tokens (the exact KL takes one more pass for all of them together).
    """

    def __init__(self, hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                 tokens: np.ndarray, rows_per_chunk: int = 1024) -> None:
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.rows_per_chunk = rows_per_chunk
        self.stats = target_logits(hidden, weight, bias, np.unique(tokens),
                                   rows_per_chunk=rows_per_chunk)

    def columns(self, tokens: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.stats.tokens, np.asarray(tokens, dtype=np.int64))

    def effects(self, tokens: np.ndarray, shifts: np.ndarray,
                with_kl: bool = True) -> SteeringEffects:
        """Effects of moving logit tokens[k] by shifts[:, k] (positions × pairs), one edit
        at a time. Without `with_kl`, kl_other is NaN and no LM-head pass is made (its
        bound is always computed)."""
        columns = self.columns(tokens)
        kl = (kl_over_other_tokens(self.hidden, self.weight, self.bias, self.stats, columns,
                                   shifts, self.rows_per_chunk)
              if with_kl else np.full(len(columns), np.nan))
        return SteeringEffects(alpha=self.stats.probabilities()[:, columns].mean(axis=0),
                               steered_alpha=steered_alpha(self.stats, columns, shifts),
                               kl_other=kl,
                               kl_other_bound=kl_over_other_tokens_bound(self.stats, columns,
                                                                         shifts))

    def evaluate(self, tokens: np.ndarray, ratios: np.ndarray, directions: np.ndarray,
                 with_kl: bool = True) -> SteeringEffects:
        """The paper's edits: each tokens[k] moved by −log(ratios[k])·directions[k] (or
        one shared direction)."""
        log_r = np.log(np.asarray(ratios, dtype=np.float64))
        projected = self.project(np.atleast_2d(np.asarray(directions, dtype=np.float64)))
        if projected.shape[1] == 1:
            projected = np.repeat(projected, len(log_r), axis=1)
        return self.effects(tokens, -log_r * projected, with_kl)

    def project(self, directions: np.ndarray) -> np.ndarray:
        """(positions, k) h·u for each row u of `directions`, in float64."""
        return self.hidden.astype(np.float64) @ np.atleast_2d(directions).T


def _kl_over_non_targets(alpha: np.ndarray, moved: np.ndarray,
                         tokens: np.ndarray) -> np.ndarray:
    """KL(α ‖ α + moved[:, k]) over the tokens other than tokens[k], both renormalized.

    With δ_j = moved_j/α_j and m its α-weighted mean, KL = Σ p_j(δ_j − log1p δ_j) −
    (m − log1p m): two sums of second-order terms, so a KL of 1e-18 keeps its digits
    instead of drowning in the rounding of log(p/q)."""
    kl = np.empty(len(tokens))
    for k, token in enumerate(tokens):
        keep = alpha > 0
        keep[token] = False
        p = alpha[keep] / alpha[keep].sum()
        delta = moved[keep, k] / alpha[keep]
        mean = float(p @ delta)
        kl[k] = float(p @ (delta - np.log1p(delta))) - (mean - np.log1p(mean))
    return kl


def closed_form_edits(targets: dict[int, float], direction: np.ndarray) -> dict[int, np.ndarray]:
    """The paper's edit of each target row: δ_w = −log(r_w)·v."""
    check_ratios(list(targets.values()))
    return {token: -np.log(ratio) * np.asarray(direction, dtype=np.float64)
            for token, ratio in targets.items()}


def steer_model(model, edits: dict[int, np.ndarray]) -> None:
    """Edit a loaded model in place: untie its output embeddings, then move each target
    row w by its δ_w. The input embeddings and every other row stay as they were."""
    from tokprob.head import output_head, untie_output_embeddings

    untie_output_embeddings(model)
    weight = output_head(model).weight
    rows = torch.as_tensor(sorted(edits))
    moved = np.stack([weight[token].double().cpu().numpy() + edits[token]
                      for token in rows.tolist()])
    with torch.no_grad():
        weight[rows] = torch.as_tensor(moved, dtype=weight.dtype, device=weight.device)
