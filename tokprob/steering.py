"""Steering output probabilities by editing output embeddings (paper §3, SPEC §1.4).

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

import numpy as np
import pandas as pd
import torch

from tokprob.errors import TokprobError
from tokprob.probabilities import alpha_percentile
from tokprob.tensors import read_only_tensor

OMEGAS = ("bonferroni", "all", "top-k")


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


def error_summary(sweep: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Median and 90th percentile of |log(α'/α) − log r| per r, for the full-data fit."""
    full = sweep[sweep["n_fit"] == sweep["n_fit"].max()]
    return {
        f"{r:g}": {"median": float(group["abs_log_error"].median()),
                   "p90": float(group["abs_log_error"].quantile(0.9)),
                   "median_achieved": float(group["achieved"].median())}
        for r, group in full.groupby("r")
    }


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

    @property
    def achieved(self) -> np.ndarray:
        return self.steered_alpha / self.alpha


class SteeringEvaluator:
    """Evaluates edits of single output rows from cached final hidden states.

    With the logits z = hEᵀ + b of a position, editing row w by −log(r)·v moves only
    z_w, to z_w − log(r)·(h·v); the normalizer follows in closed form. One pass over the
    positions evaluates any number of (token, r) pairs.
    """

    def __init__(self, hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                 rows_per_chunk: int = 1024) -> None:
        self.hidden = read_only_tensor(hidden)
        self.weight = read_only_tensor(weight)
        self.bias = None if bias is None else read_only_tensor(bias)
        self.rows_per_chunk = rows_per_chunk

    def evaluate(self, tokens: np.ndarray, ratios: np.ndarray, directions: np.ndarray,
                 with_kl: bool = True) -> SteeringEffects:
        """Effects of steering each tokens[k] by ratios[k] along directions[k] (or one
        shared direction), one edit at a time. Without `with_kl`, kl_other is NaN and
        the pass costs O(positions × pairs) instead of O(positions × vocab × pairs)."""
        tokens = torch.as_tensor(np.array(tokens, dtype=np.int64))
        pairs = len(tokens)
        log_r = torch.as_tensor(np.log(np.asarray(ratios, dtype=np.float64)))
        v = torch.as_tensor(np.broadcast_to(np.asarray(directions, dtype=np.float32),
                                            (pairs, self.weight.shape[1])).copy())
        vocab = self.weight.shape[0]
        # Σ_x p_j(x)·(1 − p'_w(x))/(1 − p_w(x)): α' of every non-target token, per pair.
        reweighted = torch.zeros(vocab, pairs if with_kl else 0, dtype=torch.float64)
        alpha = torch.zeros(vocab, dtype=torch.float64)
        target_before = torch.zeros(pairs, dtype=torch.float64)
        target_after = torch.zeros(pairs, dtype=torch.float64)
        n = self.hidden.shape[0]
        with torch.inference_mode():
            for start in range(0, n, self.rows_per_chunk):
                h = self.hidden[start:start + self.rows_per_chunk]
                logits = h @ self.weight.T
                if self.bias is not None:
                    logits = logits + self.bias
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)
                z = logits.gather(1, tokens.expand(len(h), -1)).double()
                shifted = z - log_r * (h @ v.T).double()
                p_before = torch.exp(z - lse.double())
                rest = torch.clamp(1.0 - p_before, min=0.0)
                new_lse = torch.logaddexp(torch.log(rest) + lse.double(), shifted)
                p_after = torch.exp(shifted - new_lse)
                target_before += p_before.sum(0)
                target_after += p_after.sum(0)
                if with_kl:
                    probs = torch.exp(logits - lse)  # float32: only summed, never divided
                    alpha += probs.sum(0).double()
                    factor = (1.0 - p_after) / rest.clamp_min(1e-300)
                    reweighted += (probs.T @ factor.float()).double()
        kl = (_kl_over_non_targets((alpha / n).numpy(), (reweighted / n).numpy(),
                                   tokens.numpy()) if with_kl else np.full(pairs, np.nan))
        return SteeringEffects(alpha=(target_before / n).numpy(),
                               steered_alpha=(target_after / n).numpy(), kl_other=kl)


def _kl_over_non_targets(alpha: np.ndarray, steered: np.ndarray,
                         tokens: np.ndarray) -> np.ndarray:
    kl = np.empty(len(tokens))
    for k, token in enumerate(tokens):
        keep = np.ones(len(alpha), dtype=bool)
        keep[token] = False
        p = alpha[keep] / alpha[keep].sum()
        q = steered[keep, k] / steered[keep, k].sum()
        positive = p > 0
        kl[k] = float(np.sum(p[positive] * np.log(p[positive] / q[positive])))
    return kl


def steer_model(model, targets: dict[int, float], direction: np.ndarray) -> None:
    """Edit a loaded model in place: untie its output embeddings, then move each target
    row by −log(r)·v. The input embeddings and every other row stay as they were."""
    from tokprob.models import output_head, untie_output_embeddings

    untie_output_embeddings(model)
    weight = output_head(model).weight
    steered = steer_embeddings(weight.float().cpu().numpy(), targets, direction)
    rows = torch.as_tensor(sorted(targets))
    with torch.no_grad():
        weight[rows] = torch.as_tensor(steered[rows.numpy()], dtype=weight.dtype,
                                       device=weight.device)
