"""The steering sweep (paper §3, and the calibrated edits beyond it): target tokens across
the α range, each multiplied by every r, by the paper's closed form, the calibrated edit
and the logit-bias ceiling, each fitted on all detecting windows and, few-shot, on the
first 1, 2, 4, … of them, and measured on held-out text from cached final hidden states.

    pairs = target_pairs(targets, ratios)
    sweep = run_sweep(held, detect, weight, bias, pairs, regressions, n_detect, config,
                      significance)
    table = sweep_table(sweep.table, pairs, alpha, token_text, omega)
    summary = sweep_summary(table, sweep, n_detect)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tokprob.calibration import (
    Fit,
    calibrated_fits,
    closed_form_fit,
    effective_positions,
    evaluate_fits,
    relative_spread,
)
from tokprob.config import SteeringConfig
from tokprob.errors import TokprobError
from tokprob.hidden import HiddenStates
from tokprob.probabilities import alpha_percentile
from tokprob.progress import Progress
from tokprob.regression import CenteredGram, slopes_from_gram
from tokprob.steering import (
    CALIBRATED_GOAL,
    SteeringEvaluator,
    TargetLogits,
    error_summary,
    errors_by_support,
    fewshot_errors,
    omega_mask,
    paired_comparison,
    steering_direction,
    target_logits,
    well_measured,
    window_of_positions,
    windows_to_reach,
)

SWEEP_COLUMNS = ["method", "token_id", "token", "alpha", "r", "achieved", "abs_log_error",
                 "feasible", "reachable_ratio", "step", "kl_other", "kl_other_bound", "n_fit",
                 "omega", "percentile", "alpha_percentile", "detect_effective_positions",
                 "heldout_effective_positions"]
"""Columns of the sweep table, one row per (method, token, r, n_fit)."""
log = logging.getLogger("tokprob")


@dataclass(frozen=True)
class Sweep:
    """The sweep's rows and what its summary needs besides them."""

    table: pd.DataFrame
    """One row per (method, token, r, n_fit), in `evaluate_fits`' columns."""
    omega_dims: int
    """Dimensions Ω selects for the closed form fitted on every detecting window."""
    spread: dict[str, float]
    """Per embedding edit, the median relative spread of its logit shift (`edit_spreads`)."""
    targets: int
    heldout_positions: int
    detect_positions: int


def target_pairs(targets: list[tuple[int, float]], ratios: tuple[float, ...]) -> pd.DataFrame:
    """One row per (target token, r): `token_id`, `percentile` (NaN for a named target), `r`."""
    if not targets:
        raise TokprobError("No target token to steer: give --targets or a positive "
                           "--tokens-per-percentile.")
    return pd.DataFrame([(token, percentile, r) for token, percentile in targets
                         for r in ratios], columns=["token_id", "percentile", "r"])


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, … below `limit`, and `limit` itself."""
    return sorted({2 ** k for k in range(limit.bit_length()) if 2 ** k < limit} | {limit})


def fewshot_regressions(gram: CenteredGram, weight: np.ndarray, usable: np.ndarray,
                        prefixes: dict[int, np.ndarray]) -> dict[int, pd.DataFrame]:
    """The regression of −log α on the output embeddings (paper §2.1) refit on α from the
    first n detecting windows, for every n in `prefixes`, reusing the design's X'X; an n
    whose α underflows for some usable token is skipped."""
    design = weight[usable]
    fits = {}
    for n, alpha in sorted(prefixes.items()):
        with np.errstate(divide="ignore"):
            y = -np.log(alpha[usable])
        if not np.isfinite(y).all():
            log.info("steering: α from %d windows underflows for some tokens; skipped", n)
            continue
        fits[n], _ = slopes_from_gram(gram.with_target(design, y))
    return fits


def closed_form_fits(evaluator: SteeringEvaluator, regressions: dict[int, pd.DataFrame],
                     ratios: np.ndarray, n_detect: int, config: SteeringConfig,
                     significance: float) -> tuple[list[Fit], int]:
    """The paper's edit for each fit of A (keyed by detecting windows used), and Ω's size
    for the full fit; a few-shot fit whose Ω is empty is skipped (the full fit must not
    be)."""
    fits, omega_dims = [], 0
    for n_fit, table in sorted(regressions.items()):
        try:
            mask = omega_mask(table, config.omega, significance, config.top_k)
        except TokprobError:
            if n_fit == n_detect:
                raise
            log.info("steering: Ω selects no dimension with %d windows; skipped", n_fit)
            continue
        direction = steering_direction(table["slope"].to_numpy(), mask)
        fits.append(closed_form_fit(evaluator, direction, ratios, n_fit))
        omega_dims = int(mask.sum())
    return fits, omega_dims


def run_sweep(held: HiddenStates, detect: HiddenStates, weight: np.ndarray,
              bias: np.ndarray | None, pairs: pd.DataFrame,
              regressions: dict[int, pd.DataFrame], n_detect: int, config: SteeringConfig,
              significance: float) -> Sweep:
    """Every pair of `pairs` steered by the three methods and measured on `held`.

    `regressions` holds the regression table of every fit of A, keyed by the detecting
    windows it used (`n_detect`: all of them); the calibrated edits are solved on the
    hidden states of `detect`, on its first 1, 2, 4, … windows with `config.fewshot`.
    Two LM-head passes in all, for the held-out and the detecting statistics; a third
    with `config.exact_kl`, for the exact KL over other tokens."""
    tokens, ratios = pairs["token_id"].to_numpy(), pairs["r"].to_numpy()
    window = window_of_positions(detect.targets)
    n_windows = int(window.max()) + 1
    windows_used = powers_of_two(n_windows) if config.fewshot else [n_windows]
    targets = len(pairs) // len(config.ratios)
    kl_pass = ", then the exact KL's pass" if config.exact_kl else ""
    with Progress(3, f"steering sweep ({targets} tokens × {len(config.ratios)} ratios, "
                     "3 methods: held-out and detecting LM-head passes, then the fits"
                     f"{kl_pass})", unit="steps") as bar:
        evaluator = SteeringEvaluator(held.hidden, weight, bias, tokens)
        bar.update(1)
        detect_logits = target_logits(detect.hidden, weight, bias, evaluator.stats.tokens)
        bar.update(1)
        fits, omega_dims = closed_form_fits(evaluator, regressions, ratios, n_detect, config,
                                            significance)
        fits += calibrated_fits(evaluator, detect_logits, detect.hidden, window, tokens,
                                ratios, windows_used)
        table = evaluate_fits(evaluator, fits, tokens, ratios, config.exact_kl)
        table = table.assign(**{
            f"{split}_effective_positions": effective_positions_of(stats, table["token_id"])
            for split, stats in (("detect", detect_logits), ("heldout", evaluator.stats))})
        bar.update(1)
    return Sweep(table, omega_dims, edit_spreads(fits, evaluator, tokens), targets,
                 heldout_positions=len(held.targets), detect_positions=len(detect.targets))


def effective_positions_of(stats: TargetLogits, tokens: pd.Series) -> np.ndarray:
    """Per row, the effective number of positions (Kish, under p_w) that the α of its
    target token rests on in the split of `stats`."""
    per_target = [effective_positions(p) for p in stats.probabilities().T]
    return np.asarray(per_target)[np.searchsorted(stats.tokens, tokens.to_numpy())]


def sweep_table(rows: pd.DataFrame, pairs: pd.DataFrame, alpha: np.ndarray,
                token_text: np.ndarray, omega: str) -> pd.DataFrame:
    """The sweep's rows (every fit repeats `pairs` in order) with each target's text, α,
    α percentile and sampling percentile, and Ω for the closed form, in `SWEEP_COLUMNS`."""
    tokens = pairs["token_id"].to_numpy()
    context = pairs.drop(columns=["token_id", "r"]).assign(
        token=token_text[tokens], alpha=alpha[tokens],
        alpha_percentile=alpha_percentile(alpha)[tokens])
    fits = len(rows) // len(pairs)
    table = pd.concat([rows, pd.concat([context] * fits, ignore_index=True)], axis=1)
    table["omega"] = np.where(table["method"] == "closed_form", omega, "")
    return table[SWEEP_COLUMNS]


def sweep_summary(table: pd.DataFrame, sweep: Sweep, n_detect: int) -> dict:
    """The numbers a run reports: errors per method and r, the paired comparison of the
    closed form with the calibrated edit, the KL over other tokens, few-shot errors and
    the windows the calibrated edit needs to reach its goal."""
    full = table[(table["method"] == "closed_form") & (table["n_fit"] == n_detect)]
    fewshot = fewshot_errors(table)
    errors = error_summary(table)
    measured = well_measured(table)
    return {
        "errors": errors, "comparison": paired_comparison(table),
        "errors_by_support": errors_by_support(table),
        "comparison_well_measured": paired_comparison(measured) if len(measured) else None,
        "targets": sweep.targets,
        "omega_dims": sweep.omega_dims,
        "median_abs_log_error": float(full["abs_log_error"].median()),
        "median_kl_other": {m: _median_or_none(g["kl_other"])
                            for m, g in table.groupby("method", sort=False)},
        "median_kl_other_bound": {row["method"]: row["median_kl_other_bound"]
                                  for row in errors if row["r"] == "all"},
        "fewshot_median_error": fewshot,
        "calibrated_windows_for_goal": windows_to_reach(fewshot["calibrated"],
                                                        CALIBRATED_GOAL),
        "calibrated_windows_for_goal_well_measured": windows_to_reach(
            fewshot_errors(measured).get("calibrated", {}), CALIBRATED_GOAL),
        "spread": sweep.spread,
        "heldout_positions": sweep.heldout_positions,
        "detect_positions": sweep.detect_positions,
    }


def _median_or_none(values: pd.Series) -> float | None:
    """The median of the values computed; None where none was (JSON has no NaN)."""
    return float(values.median()) if values.notna().any() else None


def edit_spreads(fits: list[Fit], evaluator: SteeringEvaluator,
                 tokens: np.ndarray) -> dict[str, float]:
    """Relative spread std/|mean| of the per-unit logit shift h·direction on held-out text,
    weighted by p_w (where α_w comes from), median over the targets, for each embedding
    edit fitted on the most data."""
    weights = evaluator.stats.probabilities()[:, evaluator.columns(tokens)]
    spreads = {}
    for method in ("closed_form", "calibrated"):
        largest = max((f for f in fits if f.method == method), key=lambda f: f.n_fit)
        slopes = np.broadcast_to(largest.heldout_slope, weights.shape)
        spreads[method] = float(np.median([relative_spread(slopes[:, k], weights[:, k])
                                           for k in range(weights.shape[1])]))
    return spreads
