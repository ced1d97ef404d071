"""Stages `steering` and `steering-figures`: how precisely editing output embeddings
multiplies α by a chosen factor (paper §3, SPEC §1.4), evaluated on the held-out
split from cached final hidden states, never by re-running the model."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from prefect import task

from tasks._io import (
    read_alpha_prefixes,
    read_bias,
    read_embeddings,
    read_probabilities,
    read_table,
)
from tasks._stage import publish_markdown, publish_table, register, run_stage, store_of
from tasks.hidden import HIDDEN_FILE
from tasks.regression import FITTED_FILE, REGRESSION_FILE, read_gram
from tokprob import plots
from tokprob.config import SparsityConfig, SteeringConfig
from tokprob.errors import TokprobError
from tokprob.hidden import read_hidden_states
from tokprob.models import ModelSource, load_tokenizer
from tokprob.probabilities import alpha_percentile
from tokprob.progress import Progress
from tokprob.regression import slopes_from_gram
from tokprob.steering import (
    SteeringEvaluator,
    error_summary,
    omega_mask,
    resolve_targets,
    sample_targets,
    steering_direction,
)
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "steering"
FIGURES_STAGE = "steering-figures"
SWEEP_FILE = "steering.parquet"
FIGURES = {
    "accuracy": "steering_accuracy.png",
    "by_percentile": "steering_error_by_percentile.png",
    "by_fewshot": "steering_error_by_fewshot.png",
}
log = logging.getLogger("tokprob")


@task(**register(STAGE, __name__))
def steering(workspace: Workspace, model: ModelSource, regression: ArtifactRef,
             embeddings: ArtifactRef, probabilities: ArtifactRef, hidden: ArtifactRef,
             config: SteeringConfig, significance: SparsityConfig,
             force: bool = False) -> ArtifactRef:
    """Steer target tokens across the α range by every r, with A from all detecting
    windows and (few-shot) from the first n windows."""

    def compute(out):
        if store_of(regression).manifest(regression).summary.get("target") != "alpha":
            raise TokprobError("Steering needs the regression of −log α (--target alpha), "
                               "not of the token frequency.")
        weight = read_embeddings(embeddings)
        probs = read_probabilities(probabilities)
        alpha = probs["alpha"].to_numpy()
        usable = np.isfinite(read_table(regression, FITTED_FILE)["y"].to_numpy())
        targets = sample_targets(alpha, usable & (probs["token"] != "").to_numpy(),
                                 config.percentiles, config.tokens_per_percentile,
                                 config.target_seed)
        own = resolve_targets(config.targets, load_tokenizer(model.path), len(weight))
        targets += [(token, float("nan")) for token in own]
        if not targets:
            raise TokprobError("No target token to steer: give --targets or a positive "
                               "--tokens-per-percentile.")
        n_detect = store_of(probabilities).manifest(probabilities).summary["n_windows"]
        fits = {n_detect: read_table(regression, REGRESSION_FILE)}
        if config.fewshot:
            fits |= _fewshot_fits(regression, weight, usable, read_alpha_prefixes(probabilities))
        stored = read_hidden_states(hidden.file(HIDDEN_FILE))
        evaluator = SteeringEvaluator(stored.hidden, weight, read_bias(embeddings))
        pairs = pd.DataFrame([(token, percentile, r) for token, percentile in targets
                              for r in config.ratios], columns=["token_id", "percentile", "r"])
        context = pairs.assign(token=probs["token"].to_numpy()[pairs["token_id"]],
                               alpha=alpha[pairs["token_id"]],
                               alpha_percentile=alpha_percentile(alpha)[pairs["token_id"]])
        frames = []
        with Progress(len(fits), f"steering sweep ({len(targets)} tokens × "
                                 f"{len(config.ratios)} ratios, A from the first n windows)",
                      unit="fits") as bar:
            for n_fit, table in sorted(fits.items()):
                frames.append(_steer_with_fit(evaluator, context, table, n_fit, n_fit == n_detect,
                                              config, significance))
                bar.update(1)
        sweep = pd.concat(frames, ignore_index=True)
        columns = ["token_id", "token", "alpha", "r", "achieved", "abs_log_error", "kl_other",
                   "n_fit", "omega", "omega_dims", "percentile", "alpha_percentile",
                   "heldout_alpha", "steered_alpha"]
        out.write_table(SWEEP_FILE, sweep[columns])
        full = sweep[sweep["n_fit"] == n_detect]
        out.summary.update(
            errors=error_summary(sweep), targets=len(targets),
            omega=config.omega, omega_dims=int(full["omega_dims"].iloc[0]),
            median_abs_log_error=float(full["abs_log_error"].median()),
            median_kl_other=float(full["kl_other"].median()),
            fewshot_median_error={str(n): float(g["abs_log_error"].median())
                                  for n, g in sweep.groupby("n_fit")},
            heldout_positions=len(stored.targets),
        )
        publish_table(STAGE, out, [{"r": r} | stats for r, stats in
                                   out.summary["errors"].items()],
                      f"Steering accuracy: |log(α'/α) − log r| per r over {len(targets)} "
                      f"tokens, Ω = {config.omega} ({out.summary['omega_dims']} dimensions)")

    arguments = {"model": model, "regression": regression, "embeddings": embeddings,
                 "probabilities": probabilities, "hidden": hidden, "config": config,
                 "significance": significance}
    return run_stage(STAGE, workspace, arguments, compute, force)


@task(**register(FIGURES_STAGE, __name__))
def steering_figures(workspace: Workspace, steering: ArtifactRef,
                     force: bool = False) -> ArtifactRef:
    """Plots of the steering sweep."""

    def compute(out):
        sweep = read_table(steering, SWEEP_FILE)
        subject = out.summary.get("subject", "")
        full = sweep[sweep["n_fit"] == sweep["n_fit"].max()]
        plots.steering_accuracy(full, f"{subject}: steering α by editing E",
                                out.path(FIGURES["accuracy"]))
        plots.steering_error_by_percentile(full, f"{subject}: steering error by α percentile",
                                           out.path(FIGURES["by_percentile"]))
        plots.steering_error_by_fewshot(sweep, f"{subject}: few-shot estimates of A",
                                        out.path(FIGURES["by_fewshot"]))
        out.summary["figures"] = FIGURES
        publish_markdown(FIGURES_STAGE, out,
                         "\n".join(f"- `{name}`" for name in FIGURES.values()),
                         "Plots of the steering sweep (PNG files in the artifact folder)")

    return run_stage(FIGURES_STAGE, workspace, {"steering": steering}, compute, force)


def _steer_with_fit(evaluator: SteeringEvaluator, pairs: pd.DataFrame, table: pd.DataFrame,
                    n_fit: int, full: bool, config: SteeringConfig,
                    significance: SparsityConfig) -> pd.DataFrame | None:
    """Every (token, r) pair steered along the direction of one fit of A; None when a
    few-shot fit leaves Ω empty (the full fit must not)."""
    try:
        mask = omega_mask(table, config.omega, significance.significance, config.top_k)
    except TokprobError:
        if full:
            raise
        log.info("steering: Ω selects no dimension with %d windows; skipped", n_fit)
        return None
    direction = steering_direction(table["slope"].to_numpy(), mask)
    effects = evaluator.evaluate(pairs["token_id"].to_numpy(), pairs["r"].to_numpy(),
                                 direction, with_kl=full)
    return pairs.assign(
        heldout_alpha=effects.alpha, steered_alpha=effects.steered_alpha,
        achieved=effects.achieved,
        abs_log_error=np.abs(np.log(effects.achieved) - np.log(pairs["r"])),
        kl_other=effects.kl_other, n_fit=n_fit, omega=config.omega,
        omega_dims=int(mask.sum()),
    )


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
