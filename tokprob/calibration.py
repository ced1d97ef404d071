"""Calibrated steering: an edit of one output row whose size is solved, not predicted
(beyond the paper: README, Steering).

Editing row w by δ = c·u moves logit w at position x by c·(h(x)·u) and nothing else.
The paper's edit (§3) takes u = v = ΩAᵀ/(AΩAᵀ) and c = −log r: right on average, but
h·v varies from position to position, so α'/α misses r. Here:

- the direction u minimizes the spread of h·u across positions for a unit mean shift
  (`calibration_direction`), so one c moves logit w by nearly the same amount everywhere;
- c is solved on the detecting split's hidden states so that α'_w/α_w = r there exactly
  (`calibrate_step`; `calibrate_jointly` for several targets sharing one normalizer);
- a target the edit cannot move that far is reported infeasible with the ratio closest
  to r that it reaches, never clipped.

    u = calibration_direction(detect_hidden)
    solved = calibrate_step(logit, log_rest, detect_hidden @ u, ratio)
    edit: E'_w = E_w + solved.step · u
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize_scalar
from scipy.special import logsumexp

from tokprob.errors import TokprobError
from tokprob.steering import (
    SteeringEvaluator,
    TargetLogits,
    kl_over_other_tokens,
    kl_over_other_tokens_bound,
    steered_alpha,
    target_logits,
)

STEP_LIMIT = 1e4
"""Largest |c| tried: with μ·u = 1 it is a mean logit shift far beyond any logit range, so
a ratio not reached by then is not reachable."""


@dataclass(frozen=True)
class Calibration:
    step: float
    """c in δ = c·u; NaN when the target is infeasible."""
    feasible: bool
    reachable: float
    """The requested ratio when feasible; otherwise the ratio closest to it that any c
    reaches (the largest for r > 1, the smallest for r < 1)."""


RIDGES = tuple(10.0 ** np.arange(-12.0, 1.01, 0.5))
"""Candidate ridge weights λ, relative to the mean variance tr(Σ)/d."""


def calibration_direction(hidden: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """u = Σ_λ⁻¹μ / (μᵀΣ_λ⁻¹μ) from hidden states h (positions × d), Σ_λ = Σ + λ·(tr Σ/d)·I,
    with μ and Σ the mean and covariance of h under `weights` (default: uniform).

    Among all u with mean shift μ·u = 1, Σ⁻¹μ minimizes the variance uᵀΣu of h·u
    (Lagrange: Σu ∝ μ), so the logit shift c·(h·u) is as constant across positions as a
    single direction allows. For one target w the positions that matter are those where
    w is probable (α_w averages p_w), so the steering sweep weights them by p_w. Directions
    of tiny sample variance are where an estimated Σ is least reliable, and trusting them
    blindly makes the shift spread again on other text; the ridge, relative to the trace
    so that it does not depend on the scale of h, guards against that. Its weight is the
    one whose direction, fitted on the first half of the positions, gives the smallest
    spread on the second half (`RIDGES`): chosen on the calibration data by the very
    quantity the edit needs, so it adapts to the model and to how much data there is
    (strong few-shot, weak with many positions), and is never tuned by hand. After a
    final LayerNorm with bias (GPT-2, Pythia, OPT) h = γ⊙n + β with n summing to zero, so
    h·(1/γ) is the same at every position: Σ is singular along 1/γ and the smallest ridges
    (down to 1e-12, so that the shift stays constant to about 1e-9) recover that direction,
    a logit bias realised as an embedding edit."""
    h = np.asarray(hidden, dtype=np.float64)
    q = np.ones(len(h)) if weights is None else np.asarray(weights, dtype=np.float64)
    half = len(h) // 2
    if half < 2 or not (q[:half].sum() > 0 and q[half:].sum() > 0):
        raise TokprobError("Calibrating a steering direction needs the hidden states of at "
                           "least four positions, weighted in both halves; raise "
                           "--heldout-tokens.")
    fit, check, weight = _moments(h[:half], q[:half]), h[half:], q[half:] / q[half:].sum()
    spreads = [relative_spread(check @ _ridge_direction(*fit, ridge), weight)
               for ridge in RIDGES]
    return _ridge_direction(*_moments(h, q), RIDGES[int(np.nanargmin(spreads))])


def _moments(h: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted μ and the eigen-decomposition of the weighted covariance Σ = Q diag(λ) Qᵀ."""
    q = weights / weights.sum()
    mean = q @ h
    centred = h - mean
    values, vectors = np.linalg.eigh((centred * q[:, None]).T @ centred)
    return mean, np.clip(values, 0.0, None), vectors


def _ridge_direction(mean: np.ndarray, values: np.ndarray, vectors: np.ndarray,
                     ridge: float) -> np.ndarray:
    scale = ridge * max(values.mean(), np.finfo(float).tiny)
    u = vectors @ ((vectors.T @ mean) / (values + scale))
    denominator = float(mean @ u)
    if not denominator > 0:
        raise TokprobError("The hidden states average to zero: no steering direction can "
                           "be calibrated from them.")
    return u / denominator


def effective_positions(weights: np.ndarray) -> float:
    """Kish's effective number of positions under `weights`, (Σw)² / Σw²: weighted by p_w,
    how many positions the calibration of w rests on (a token probable at a handful of
    positions is calibrated on a handful, whatever the split's size)."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights.sum() ** 2 / np.sum(weights ** 2))


def relative_spread(projection: np.ndarray, weights: np.ndarray | None = None) -> float:
    """std(h·u)/|mean(h·u)| (optionally weighted): how unevenly one edit shifts the logit
    across positions."""
    mean = np.average(projection, weights=weights)
    return float(np.sqrt(np.average((projection - mean) ** 2, weights=weights)) / abs(mean))


def log_steered_alpha(logit: np.ndarray, log_rest: np.ndarray, slope: np.ndarray,
                      step: float) -> float:
    """log α'_w after moving logit w by step·slope at every position (float64)."""
    moved = logit + step * slope
    return float(logsumexp(moved - np.logaddexp(log_rest, moved)) - np.log(len(moved)))


def calibrate_step(logit: np.ndarray, log_rest: np.ndarray, slope: np.ndarray,
                   ratio: float) -> Calibration:
    """The c with α'_w/α_w = ratio over these positions: logit[x] = z_w, log_rest[x] the
    log-mass of the other tokens, slope[x] = h·u."""
    start = log_steered_alpha(logit, log_rest, slope, 0.0)
    return solve_step(logit, log_rest, slope, start + np.log(ratio), ratio)


def solve_step(logit: np.ndarray, log_rest: np.ndarray, slope: np.ndarray,
               log_target: float, ratio: float) -> Calibration:
    """The c with log α'_w(c) = log_target: bracket by doubling from 0, then Brent.

    log α'(c) is monotone when h·u keeps one sign; otherwise positions of the other sign
    saturate and it may turn back, so the bracket stops at the first c past the target
    and an unreached target reports the best c found (refined by a bounded search)."""
    def miss(step: float) -> float:
        return log_steered_alpha(logit, log_rest, slope, step) - log_target

    at_zero = miss(0.0)
    if at_zero == 0.0:
        return Calibration(0.0, True, ratio)
    # Raise c when α' must grow and the shift is mostly positive, or shrink and negative.
    sign = -np.sign(at_zero) * (1.0 if float(np.mean(slope)) >= 0 else -1.0)
    low, step = 0.0, sign
    while abs(step) <= STEP_LIMIT:
        if np.sign(miss(step)) != np.sign(at_zero):
            root = brentq(miss, low, step, xtol=1e-14, rtol=1e-14, maxiter=200)
            return Calibration(float(root), True, ratio)
        low, step = step, 2.0 * step
    return Calibration(float("nan"), False, _closest_reachable(miss, sign, at_zero, ratio))


def _closest_reachable(miss, sign: float, at_zero: float, ratio: float) -> float:
    """ratio·exp(miss) at the c (on the searched side) that comes closest to the target."""
    toward = -np.sign(at_zero)  # the sign `miss` must move toward
    grid = sign * np.concatenate([[0.0], 2.0 ** np.arange(0, np.log2(STEP_LIMIT) + 1)])
    values = np.array([miss(c) for c in grid])
    best = int(np.argmax(toward * values))
    bounds = sorted((grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]))
    refined = minimize_scalar(lambda c: -toward * miss(c), bounds=bounds, method="bounded")
    closest = max(toward * values[best], -float(refined.fun))
    return float(ratio * np.exp(toward * closest))


def calibrate_jointly(logit: np.ndarray, log_rest: np.ndarray, slope: np.ndarray,
                      ratios: np.ndarray, tolerance: float = 1e-10,
                      max_sweeps: int = 200) -> list[Calibration]:
    """Steps c_k with α'_k/α_k = ratios[k] for every target k at once.

    logit and slope are (positions, targets), log_rest (positions,) the log-mass outside
    every target. The edits share one normalizer, so each c_k is solved with the others
    fixed, in turn, until no target misses by more than `tolerance` in log (coordinate
    descent on a diagonally dominant system: each edit moves its own α far more than the
    others')."""
    ratios = np.asarray(ratios, dtype=np.float64)
    steps = np.zeros(len(ratios))
    targets = _joint_log_alpha(logit, log_rest, slope, steps) + np.log(ratios)
    for _ in range(max_sweeps):
        for k in range(len(ratios)):
            solved = solve_step(logit[:, k], _rest_of(logit, log_rest, slope, steps, k),
                                slope[:, k], targets[k], float(ratios[k]))
            if not solved.feasible:
                return [Calibration(float(c), True, float(r)) if j != k else solved
                        for j, (c, r) in enumerate(zip(steps, ratios, strict=True))]
            steps[k] = solved.step
        misses = _joint_log_alpha(logit, log_rest, slope, steps) - targets
        if np.max(np.abs(misses)) <= tolerance:
            return [Calibration(float(c), True, float(r))
                    for c, r in zip(steps, ratios, strict=True)]
    raise TokprobError(f"The joint calibration of {len(ratios)} steering edits did not "
                       f"converge in {max_sweeps} rounds (misses {np.abs(misses).max():.1e} "
                       "in log). Steer fewer tokens at once, or closer ratios.")


def _joint_log_alpha(logit: np.ndarray, log_rest: np.ndarray, slope: np.ndarray,
                     steps: np.ndarray) -> np.ndarray:
    moved = logit + steps * slope
    normalizer = np.logaddexp(log_rest, logsumexp(moved, axis=1))
    return logsumexp(moved - normalizer[:, None], axis=0) - np.log(len(moved))


def _rest_of(logit: np.ndarray, log_rest: np.ndarray, slope: np.ndarray, steps: np.ndarray,
             k: int) -> np.ndarray:
    """Per position, the log-mass of everything but target k under the current edits."""
    others = np.delete(logit + steps * slope, k, axis=1)
    return np.logaddexp(log_rest, logsumexp(others, axis=1)) if others.size else log_rest


@dataclass(frozen=True)
class Fit:
    """One way of steering every (token, r) pair, fitted on some detecting data."""

    method: str
    """closed_form: the paper's edit (§3); calibrated: this module's; logit_bias: a
    calibrated bias on logit w, exact by construction but not an embedding edit (the
    ceiling)."""
    n_fit: int
    """Detecting windows the fit used."""
    heldout_slope: np.ndarray
    """(held-out positions, pairs) logit shift per unit step."""
    steps: np.ndarray
    """(pairs,) the step along that slope; NaN where infeasible."""
    feasible: np.ndarray
    reachable: np.ndarray


def closed_form_fit(evaluator: SteeringEvaluator, direction: np.ndarray, ratios: np.ndarray,
                    n_fit: int) -> Fit:
    """The paper's edit −log(r)·v: no solve, so every pair counts as feasible."""
    slope = evaluator.project(direction)
    return Fit("closed_form", n_fit, slope, -np.log(ratios), np.ones(len(ratios), bool),
               np.full(len(ratios), np.nan))


def calibrated_fits(evaluator: SteeringEvaluator, detect: TargetLogits,
                    detect_hidden: np.ndarray, window: np.ndarray, tokens: np.ndarray,
                    ratios: np.ndarray, windows_used: list[int]) -> list[Fit]:
    """The calibrated edit (one direction per target, weighted by where it is probable)
    and the logit-bias ceiling, each solved on the first n detecting windows for every n
    in `windows_used`."""
    columns = np.searchsorted(detect.tokens, tokens)
    probable = detect.probabilities()
    fits = []
    for n in windows_used:
        rows = window < n
        h = detect_hidden[rows].astype(np.float64)
        directions = np.stack([calibration_direction(h, probable[rows, k])
                               for k in range(len(detect.tokens))])
        along = h @ directions.T
        heldout = evaluator.project(directions)
        for method, slopes, shifts in (("calibrated", along[:, columns], heldout[:, columns]),
                                       ("logit_bias", np.ones((len(h), len(columns))),
                                        np.ones((len(evaluator.hidden), 1)))):
            solved = [calibrate_step(detect.logit[rows, c], detect.log_rest[rows, c],
                                     slopes[:, k], r)
                      for k, (c, r) in enumerate(zip(columns, ratios, strict=True))]
            fits.append(Fit(method, n, shifts,
                            np.array([s.step for s in solved]),
                            np.array([s.feasible for s in solved]),
                            np.array([s.reachable for s in solved])))
    return fits


def evaluate_fits(evaluator: SteeringEvaluator, fits: list[Fit], tokens: np.ndarray,
                  ratios: np.ndarray, exact_kl: bool = False) -> pd.DataFrame:
    """Every fit's pairs on held-out text, with the bound on the KL over other tokens, at a
    cost independent of |V|. With `exact_kl`, also the exact KL for each method's largest
    fit (one more LM-head pass for all of them, plus pairs / d passes' work)."""
    columns = evaluator.columns(tokens)
    alpha = evaluator.stats.probabilities()[:, columns].mean(axis=0)
    frames, full_shifts, full_rows = [], [], []
    largest = {f.method: max(g.n_fit for g in fits if g.method == f.method) for f in fits}
    for fit in fits:
        shifts = np.nan_to_num(fit.steps) * fit.heldout_slope  # (positions, pairs)
        achieved = np.where(fit.feasible,
                            steered_alpha(evaluator.stats, columns, shifts) / alpha, np.nan)
        bound = kl_over_other_tokens_bound(evaluator.stats, columns, shifts)
        frames.append(pd.DataFrame({
            "method": fit.method, "n_fit": fit.n_fit, "token_id": tokens, "r": ratios,
            "achieved": achieved, "abs_log_error": np.abs(np.log(achieved) - np.log(ratios)),
            "feasible": fit.feasible, "reachable_ratio": fit.reachable, "step": fit.steps,
            "kl_other": np.nan, "kl_other_bound": np.where(fit.feasible, bound, np.nan),
        }))
        if exact_kl and fit.n_fit == largest[fit.method]:
            full_shifts.append(shifts)
            full_rows.append(len(frames) - 1)
    if full_shifts:
        kl = np.split(kl_over_other_tokens(evaluator.hidden, evaluator.weight, evaluator.bias,
                                           evaluator.stats, np.tile(columns, len(full_shifts)),
                                           np.concatenate(full_shifts, axis=1),
                                           evaluator.rows_per_chunk), len(full_shifts))
        for row, values in zip(full_rows, kl, strict=True):
            frames[row]["kl_other"] = np.where(frames[row]["feasible"], values, np.nan)
    return pd.concat(frames, ignore_index=True)


def jointly_calibrated_edits(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                             tokens: list[int], ratios: list[float], names: list[str],
                             stats: TargetLogits | None = None) -> dict[int, np.ndarray]:
    """δ_w = c_w·u_w for every target, u_w its direction weighted by p_w and the c's solved
    jointly on `hidden` (the detecting split) so that each α'_w/α_w = r_w there; an
    unreachable ratio is an error naming the ratio that can be reached. `stats`: the
    targets' `target_logits(..., jointly=True)` on `hidden`, when already computed."""
    if stats is None:
        stats = target_logits(hidden, weight, bias, np.asarray(tokens), jointly=True)
    h = hidden.astype(np.float64)
    directions = np.stack([calibration_direction(h, p) for p in stats.probabilities().T])
    solved = calibrate_jointly(stats.logit, stats.log_rest[:, 0], h @ directions.T, ratios)
    for name, ratio, result in zip(names, ratios, solved, strict=True):
        if not result.feasible:
            bound = "at most" if ratio > 1 else "at least"
            raise TokprobError(
                f"{name!r} cannot be steered by × {ratio:g} with an output-embedding edit: "
                f"on the detecting split its ratio can reach {bound} × {result.reachable:.4g} "
                "(a probability cannot exceed 1). Ask for a ratio within that bound.")
    return {token: result.step * direction
            for token, result, direction in zip(tokens, solved, directions, strict=True)}
