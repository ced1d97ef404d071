"""Stages `steering` and `steering-figures`: how precisely editing output embeddings
multiplies α by a chosen factor (paper §3), evaluated on the held-out
split from cached final hidden states, never by re-running the model."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from prefect import task

from tasks._stage import publish_markdown, publish_table, register, run_stage
from tasks.catalog import (
    ALPHA,
    FITTED,
    SLOPES,
    STEERING_SWEEP,
    ProbabilitiesSummary,
    RegressionSummary,
    read_alpha_prefixes,
    read_bias,
    read_embeddings,
    read_gram,
    read_hidden,
    summary_of,
)
from tokprob import plots
from tokprob.calibration import (
    Fit,
    calibrated_fits,
    closed_form_fit,
    evaluate_fits,
    relative_spread,
)
from tokprob.config import SparsityConfig, SteeringConfig
from tokprob.errors import TokprobError
from tokprob.model_sources import ModelSource
from tokprob.models import load_tokenizer
from tokprob.probabilities import alpha_percentile
from tokprob.progress import Progress
from tokprob.regression import slopes_from_gram
from tokprob.steering import (
    CALIBRATED_GOAL,
    SteeringEvaluator,
    error_summary,
    fewshot_errors,
    omega_mask,
    paired_comparison,
    resolve_targets,
    sample_targets,
    steering_direction,
    target_logits,
    window_of_positions,
    windows_to_reach,
)
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "steering"
FIGURES_STAGE = "steering-figures"
FIGURES = {
    "accuracy": "steering_accuracy.png",
    "by_percentile": "steering_error_by_percentile.png",
    "by_fewshot": "steering_error_by_fewshot.png",
}
log = logging.getLogger("tokprob")


@task(**register(STAGE, __name__))
def steering(workspace: Workspace, model: ModelSource, regression: ArtifactRef,
             embeddings: ArtifactRef, probabilities: ArtifactRef, hidden: ArtifactRef,
             detect_hidden: ArtifactRef, config: SteeringConfig,
             significance: SparsityConfig, force: bool = False) -> ArtifactRef:
    """Steer target tokens across the α range by every r with the paper's closed form
    (A from all detecting windows and, few-shot, from the first n), the calibrated edit
    and the logit-bias ceiling (solved on the first n detecting windows' hidden states)."""

    def compute(out):
        if summary_of(regression, RegressionSummary)["target"] != "alpha":
            raise TokprobError("Steering needs the regression of −log α (--target alpha), "
                               "not of the token frequency.")
        weight, bias = read_embeddings(embeddings), read_bias(embeddings)
        probs = ALPHA.read(probabilities)
        alpha = probs["alpha"].to_numpy()
        usable = np.isfinite(FITTED.read(regression, ["y"])["y"].to_numpy())
        targets = sample_targets(alpha, usable & (probs["token"] != "").to_numpy(),
                                 config.percentiles, config.tokens_per_percentile,
                                 config.target_seed)
        own = resolve_targets(config.targets, load_tokenizer(model.path), len(weight))
        targets += [(token, float("nan")) for token in own]
        if not targets:
            raise TokprobError("No target token to steer: give --targets or a positive "
                               "--tokens-per-percentile.")
        n_detect = summary_of(probabilities, ProbabilitiesSummary)["n_windows"]
        tables = {n_detect: SLOPES.read(regression)}
        if config.fewshot:
            tables |= _fewshot_fits(regression, weight, usable,
                                    read_alpha_prefixes(probabilities))
        pairs = pd.DataFrame([(token, percentile, r) for token, percentile in targets
                              for r in config.ratios], columns=["token_id", "percentile", "r"])
        tokens, ratios = pairs["token_id"].to_numpy(), pairs["r"].to_numpy()
        held = read_hidden(hidden)
        detect = read_hidden(detect_hidden)
        window = window_of_positions(detect.targets)
        windows_used = _powers_of_two(int(window.max()) + 1) if config.fewshot else [
            int(window.max()) + 1]
        with Progress(3, f"steering sweep ({len(targets)} tokens × {len(config.ratios)} "
                         "ratios, 3 methods: held-out and detecting LM-head passes, then "
                         "the fits and the KL pass)", unit="steps") as bar:
            evaluator = SteeringEvaluator(held.hidden, weight, bias, tokens)
            bar.update(1)
            detect_logits = target_logits(detect.hidden, weight, bias, evaluator.stats.tokens)
            bar.update(1)
            fits, omega_dims = _closed_form_fits(evaluator, tables, ratios, n_detect, config,
                                                 significance)
            fits += calibrated_fits(evaluator, detect_logits, detect.hidden, window, tokens,
                                    ratios, windows_used)
            sweep = evaluate_fits(evaluator, fits, tokens, ratios)
            bar.update(1)
        context = pairs.drop(columns=["token_id", "r"]).assign(
            token=probs["token"].to_numpy()[tokens], alpha=alpha[tokens],
            alpha_percentile=alpha_percentile(alpha)[tokens])
        sweep = pd.concat([sweep, pd.concat([context] * len(fits), ignore_index=True)], axis=1)
        sweep["omega"] = np.where(sweep["method"] == "closed_form", config.omega, "")
        columns = ["method", "token_id", "token", "alpha", "r", "achieved", "abs_log_error",
                   "feasible", "reachable_ratio", "step", "kl_other", "n_fit", "omega",
                   "percentile", "alpha_percentile"]
        out.write_table(STEERING_SWEEP.file, sweep[columns])
        full = sweep[(sweep["method"] == "closed_form") & (sweep["n_fit"] == n_detect)]
        out.summary.update(
            errors=error_summary(sweep), comparison=paired_comparison(sweep),
            targets=len(targets), omega=config.omega, omega_dims=omega_dims,
            median_abs_log_error=float(full["abs_log_error"].median()),
            median_kl_other={m: float(g["kl_other"].median())
                             for m, g in sweep.groupby("method", sort=False)},
            fewshot_median_error=fewshot_errors(sweep),
            calibrated_windows_for_goal=windows_to_reach(
                fewshot_errors(sweep)["calibrated"], CALIBRATED_GOAL),
            spread=_spreads(fits, evaluator, tokens),
            heldout_positions=len(held.targets), detect_positions=len(detect.targets),
        )
        publish_table(STAGE, out, out.summary["errors"],
                      f"Steering accuracy: |log(α'/α) − log r| per method and r over "
                      f"{len(targets)} tokens (feasible pairs), Ω = {config.omega} "
                      f"({omega_dims} dimensions) for the closed form")

    arguments = {"model": model, "regression": regression, "embeddings": embeddings,
                 "probabilities": probabilities, "hidden": hidden,
                 "detect_hidden": detect_hidden, "config": config,
                 "significance": significance}
    return run_stage(STAGE, workspace, arguments, compute, force)


@task(**register(FIGURES_STAGE, __name__))
def steering_figures(workspace: Workspace, steering: ArtifactRef,
                     force: bool = False) -> ArtifactRef:
    """Plots of the steering sweep."""

    def compute(out):
        sweep = STEERING_SWEEP.read(steering)
        subject = out.summary.get("subject", "")
        largest = sweep.groupby("method")["n_fit"].transform("max")
        full = sweep[sweep["n_fit"] == largest]
        plots.steering_accuracy(full, f"{subject}: steering α by editing E",
                                out.path(FIGURES["accuracy"]))
        plots.steering_error_by_percentile(full, f"{subject}: steering error by α percentile",
                                           out.path(FIGURES["by_percentile"]))
        plots.steering_error_by_fewshot(sweep, f"{subject}: steering from few detecting windows",
                                        out.path(FIGURES["by_fewshot"]))
        out.summary["figures"] = FIGURES
        publish_markdown(FIGURES_STAGE, out,
                         "\n".join(f"- `{name}`" for name in FIGURES.values()),
                         "Plots of the steering sweep (PNG files in the artifact folder)")

    return run_stage(FIGURES_STAGE, workspace, {"steering": steering}, compute, force)


def _closed_form_fits(evaluator: SteeringEvaluator, tables: dict[int, pd.DataFrame],
                      ratios: np.ndarray, n_detect: int, config: SteeringConfig,
                      significance: SparsityConfig) -> tuple[list[Fit], int]:
    """The paper's edit for each fit of A, and Ω's size for the full fit; a few-shot fit
    whose Ω is empty is skipped (the full fit must not be)."""
    fits, omega_dims = [], 0
    for n_fit, table in sorted(tables.items()):
        try:
            mask = omega_mask(table, config.omega, significance.significance, config.top_k)
        except TokprobError:
            if n_fit == n_detect:
                raise
            log.info("steering: Ω selects no dimension with %d windows; skipped", n_fit)
            continue
        direction = steering_direction(table["slope"].to_numpy(), mask)
        fits.append(closed_form_fit(evaluator, direction, ratios, n_fit))
        omega_dims = int(mask.sum())
    return fits, omega_dims


def _spreads(fits: list[Fit], evaluator: SteeringEvaluator,
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


def _powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, … below `limit`, and `limit` itself."""
    return sorted({2 ** k for k in range(limit.bit_length()) if 2 ** k < limit} | {limit})


def _fewshot_fits(regression: ArtifactRef, weight: np.ndarray, usable: np.ndarray,
                  prefixes: dict[int, np.ndarray]) -> dict[int, pd.DataFrame]:
    """The regression refit on α from the first n windows, for every stored n."""
    gram = read_gram(regression)
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
