"""Stages `steering` and `steering-figures`: how precisely editing output embeddings
multiplies α by a chosen factor (paper §3), evaluated on the held-out
split from cached final hidden states, never by re-running the model."""

from __future__ import annotations

import numpy as np
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
from tokprob.steering import resolve_targets, sample_targets
from tokprob.steering_sweep import (
    fewshot_regressions,
    run_sweep,
    sweep_summary,
    sweep_table,
    target_pairs,
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


@task(**register(STAGE, __name__))
def steering(workspace: Workspace, model: ModelSource, regression: ArtifactRef,
             embeddings: ArtifactRef, probabilities: ArtifactRef, hidden: ArtifactRef,
             detect_hidden: ArtifactRef, config: SteeringConfig,
             significance: SparsityConfig, force: bool = False) -> ArtifactRef:
    """Steer target tokens across the α range by every r with the paper's closed form
    (A from all detecting windows and, few-shot, from the first n), the calibrated edit
    and the logit-bias ceiling (solved on the first n detecting windows' hidden states)."""

    def compute(out):
        if store_of(regression).manifest(regression).summary.get("target") != "alpha":
            raise TokprobError("Steering needs the regression of −log α (--target alpha), "
                               "not of the token frequency.")
        weight, bias = read_embeddings(embeddings), read_bias(embeddings)
        probs = read_probabilities(probabilities)
        alpha = probs["alpha"].to_numpy()
        usable = np.isfinite(read_table(regression, FITTED_FILE)["y"].to_numpy())
        targets = sample_targets(alpha, usable & (probs["token"] != "").to_numpy(),
                                 config.percentiles, config.tokens_per_percentile,
                                 config.target_seed)
        own = resolve_targets(config.targets, load_tokenizer(model.path), len(weight))
        pairs = target_pairs(targets + [(token, float("nan")) for token in own],
                             config.ratios)
        n_detect = store_of(probabilities).manifest(probabilities).summary["n_windows"]
        regressions = {n_detect: read_table(regression, REGRESSION_FILE)}
        if config.fewshot:
            regressions |= fewshot_regressions(read_gram(regression), weight, usable,
                                               read_alpha_prefixes(probabilities))
        sweep = run_sweep(read_hidden_states(hidden.file(HIDDEN_FILE)),
                          read_hidden_states(detect_hidden.file(HIDDEN_FILE)), weight, bias,
                          pairs, regressions, n_detect, config, significance.significance)
        table = sweep_table(sweep.table, pairs, alpha, probs["token"].to_numpy(),
                            config.omega)
        out.write_table(SWEEP_FILE, table)
        out.summary.update(sweep_summary(table, sweep, n_detect), omega=config.omega)
        publish_table(STAGE, out, out.summary["errors"],
                      f"Steering accuracy: |log(α'/α) − log r| per method and r over "
                      f"{sweep.targets} tokens (feasible pairs), Ω = {config.omega} "
                      f"({sweep.omega_dims} dimensions) for the closed form")

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
        sweep = read_table(steering, SWEEP_FILE)
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
