"""Stage `steering`: how precisely editing output embeddings multiplies α by a chosen
factor (paper §3), evaluated on the held-out split from cached final hidden states, never
by re-running the model. Its plots are the stage `steering-figures`
(tasks/steering_figures.py)."""

from __future__ import annotations

import numpy as np

from tasks._stage import publish_table, stage
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
from tokprob.config import SparsityConfig, SteeringConfig
from tokprob.errors import TokprobError
from tokprob.model_sources import ModelSource
from tokprob.models import load_tokenizer
from tokprob.steering import resolve_targets, sample_targets
from tokprob.steering_sweep import (
    fewshot_regressions,
    run_sweep,
    sweep_summary,
    sweep_table,
    target_pairs,
)
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "steering"


@stage(STAGE)
def steering(out: ArtifactWriter, model: ModelSource, regression: ArtifactRef,
             embeddings: ArtifactRef, probabilities: ArtifactRef, hidden: ArtifactRef,
             detect_hidden: ArtifactRef, config: SteeringConfig,
             significance: SparsityConfig) -> None:
    """Steer target tokens across the α range by every r with the paper's closed form
    (A from all detecting windows and, few-shot, from the first n), the calibrated edit
    and the logit-bias ceiling (solved on the first n detecting windows' hidden states)."""
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
    pairs = target_pairs(targets + [(token, float("nan")) for token in own], config.ratios)
    n_detect = summary_of(probabilities, ProbabilitiesSummary)["n_windows"]
    regressions = {n_detect: SLOPES.read(regression)}
    if config.fewshot:
        regressions |= fewshot_regressions(read_gram(regression), weight, usable,
                                           read_alpha_prefixes(probabilities))
    sweep = run_sweep(read_hidden(hidden), read_hidden(detect_hidden), weight, bias,
                      pairs, regressions, n_detect, config, significance.significance)
    table = sweep_table(sweep.table, pairs, alpha, probs["token"].to_numpy(), config.omega)
    out.write_table(STEERING_SWEEP.file, table)
    out.summary.update(sweep_summary(table, sweep, n_detect), omega=config.omega)
    publish_table(STAGE, out, [row | {"support": "all"} for row in out.summary["errors"]]
                  + out.summary["errors_by_support"],
                  f"Steering accuracy: |log(α'/α) − log r| per method and r over "
                  f"{sweep.targets} tokens (feasible pairs), then over all r by the targets' "
                  "support (effective positions their α rests on, the fewer of the two "
                  f"splits), Ω = {config.omega} ({sweep.omega_dims} dimensions) for the "
                  "closed form")
