"""Stage `pruning`: how far the outputs move as output-embedding dimensions are deleted
by regression saliency, against random and low-norm baselines, and with the deleted
coordinates compensated from the kept ones, in and out of distribution (paper §4). Its
plots are the stage `pruning-figures` (tasks/pruning_figures.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tasks._stage import publish_table, stage
from tasks.catalog import (
    ALPHA,
    PRUNING_METRICS,
    SLOPES,
    RegressionSummary,
    read_bias,
    read_embeddings,
    read_gram,
    read_hidden,
    read_windows,
    summary_of,
)
from tokprob.config import PruningConfig, RunConfig
from tokprob.generation import generation_agreement
from tokprob.head import untie_output_embeddings
from tokprob.model_sources import ModelSource
from tokprob.models import load_model
from tokprob.progress import Progress
from tokprob.pruning import (
    DeletionPlan,
    check_regression_target,
    column_std,
    deletion_plans,
    embedding_metric,
    headline_fractions,
    main_metrics,
    metrics_table,
    one_random_seed,
    saliency_scores,
    second_moment,
    sweep,
)
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.windows import HELDOUT

STAGE = "pruning"


def plan_deletions(regression: ArtifactRef, embeddings: ArtifactRef,
                   probabilities: ArtifactRef | None, hidden_detect: ArtifactRef | None,
                   config: PruningConfig,
                   seeds: tuple[int, ...]) -> tuple[np.ndarray, list[DeletionPlan]]:
    """E and the deletion orders: by saliency, the baselines and, given the detecting
    split's hidden states, the compensated methods (greedy: given α too)."""
    check_regression_target(summary_of(regression, RegressionSummary)["target"])
    weight = read_embeddings(embeddings)
    gram = read_gram(regression)
    scores = saliency_scores(SLOPES.read(regression), column_std(gram),
                             config.saliency)
    moment = metric = None
    if hidden_detect is not None:
        moment = second_moment(read_hidden(hidden_detect).hidden)
    if probabilities is not None:
        metric = embedding_metric(weight, ALPHA.read(probabilities, ["alpha"])["alpha"].to_numpy())
    return weight, deletion_plans(scores, np.linalg.norm(weight, axis=0), seeds, moment, metric)


@stage(STAGE, environment=("torch", "transformers"), loads_model=True)
def pruning(out: ArtifactWriter, model: ModelSource, regression: ArtifactRef,
            embeddings: ArtifactRef, probabilities: ArtifactRef, hidden_detect: ArtifactRef,
            hidden: ArtifactRef, hidden_ood: ArtifactRef, windows: ArtifactRef,
            windows_ood: ArtifactRef, config: PruningConfig, run: RunConfig) -> None:
    """Delete 0–90% of the dimensions of E by each method and compare the outputs."""
    weight, plans = plan_deletions(regression, embeddings, probabilities, hidden_detect,
                                   config, config.random_seeds)
    bias = read_bias(embeddings)
    lm = None
    if config.new_tokens:  # generation runs the whole model, as the forward passes do
        lm = load_model(model.path, dtype=run.dtype, device=run.device)
        untie_output_embeddings(lm)
    frames = []
    for split, states, texts in (("id", hidden, windows), ("ood", hidden_ood, windows_ood)):
        stored = read_hidden(states)
        count = min(config.eval_tokens, len(stored.targets))
        with Progress(count, f"pruning sweep ({split}, {len(plans)} deletion orders × "
                             f"{len(config.fractions)} fractions)", unit="positions") as bar:
            metrics = sweep(stored.hidden[:count], stored.targets[:count], weight, bias,
                            plans, config.fractions, progress=bar)
        if lm is not None:
            metrics = metrics.merge(_generations(lm, weight, plans, config, texts),
                                    on=["method", "seed", "fraction"], how="left")
        frames.append(metrics.assign(split=split, positions=count))
    table = metrics_table(frames)
    out.write_table(PRUNING_METRICS.file, table)
    headline = headline_fractions(table, config.js_threshold)
    out.summary.update(headline=headline, js_threshold=config.js_threshold,
                       dimensions=weight.shape[1], saliency=config.saliency,
                       table=main_metrics(table))
    publish_table(STAGE, out, main_metrics(table),
                  f"Pruning E by {config.saliency}-saliency against baselines; fraction "
                  f"with α-JS below {config.js_threshold:g}: " + ", ".join(
                      f"{k} {v:.0%}" for k, v in headline.items()))


def _generations(lm, weight: np.ndarray, plans: list[DeletionPlan],
                 config: PruningConfig, texts: ArtifactRef) -> pd.DataFrame:
    """Greedy continuations of held-out prompts by the pruned models against the
    original's (one random seed: generation needs the whole model, so it is the
    expensive part)."""
    heldout = read_windows(texts).take(HELDOUT)[: config.prompts, : config.prompt_tokens]
    prompts = torch.as_tensor(heldout, dtype=torch.long)
    chosen = one_random_seed(plans)
    with Progress(len(chosen) * len(config.fractions), "greedy generations",
                  unit="runs") as bar:
        return generation_agreement(lm, weight, chosen, config.fractions, prompts,
                                    config.new_tokens, bar)
