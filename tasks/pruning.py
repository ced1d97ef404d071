"""Stages `pruning` and `pruning-figures`: how far the outputs move as output-embedding
dimensions are deleted by regression saliency, against random and low-norm baselines,
and with the deleted coordinates compensated from the kept ones, in and out of
distribution (paper §4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks._io import read_bias, read_embeddings, read_probabilities, read_table
from tasks._stage import publish_markdown, publish_table, register, run_stage, store_of
from tasks.hidden import HIDDEN_FILE
from tasks.regression import REGRESSION_FILE, read_gram
from tasks.windows import read_windows
from tokprob import plots
from tokprob.config import PruningConfig
from tokprob.head import output_head, untie_output_embeddings
from tokprob.hidden import read_hidden_states
from tokprob.model_sources import ModelSource
from tokprob.models import load_model
from tokprob.progress import Progress
from tokprob.pruning import (
    METHODS,
    DeletionPlan,
    check_regression_target,
    deletion_plans,
    embedding_metric,
    greedy_agreement,
    headline_fraction,
    saliency_scores,
    second_moment,
    sweep,
)
from tokprob.store import ArtifactRef
from tokprob.windows import HELDOUT
from tokprob.workspace import Workspace

STAGE = "pruning"
FIGURES_STAGE = "pruning-figures"
METRICS_FILE = "pruning.parquet"
FIGURES = {"metrics": "pruning_metrics.png", "alpha_js": "pruning_alpha_js.png"}
SPLITS = ("id", "ood")


def plan_deletions(regression: ArtifactRef, embeddings: ArtifactRef,
                   probabilities: ArtifactRef | None, hidden_detect: ArtifactRef | None,
                   config: PruningConfig,
                   seeds: tuple[int, ...]) -> tuple[np.ndarray, list[DeletionPlan]]:
    """E and the deletion orders: by saliency, the baselines and, given the detecting
    split's hidden states, the compensated methods (greedy: given α too)."""
    check_regression_target(store_of(regression).manifest(regression).summary["target"])
    weight = read_embeddings(embeddings)
    gram = read_gram(regression)
    scores = saliency_scores(read_table(regression, REGRESSION_FILE),
                             np.sqrt(np.diag(gram.gram) / (gram.n - 1)), config.saliency)
    moment = metric = None
    if hidden_detect is not None:
        moment = second_moment(read_hidden_states(hidden_detect.file(HIDDEN_FILE)).hidden)
    if probabilities is not None:
        metric = embedding_metric(weight, read_probabilities(probabilities)["alpha"].to_numpy())
    return weight, deletion_plans(scores, np.linalg.norm(weight, axis=0), seeds, moment, metric)


@task(**register(STAGE, __name__, environment=("torch", "transformers"),
                     loads_model=True))
def pruning(workspace: Workspace, model: ModelSource, regression: ArtifactRef,
            embeddings: ArtifactRef, probabilities: ArtifactRef, hidden_detect: ArtifactRef,
            hidden: ArtifactRef, hidden_ood: ArtifactRef, windows: ArtifactRef,
            windows_ood: ArtifactRef, config: PruningConfig,
            force: bool = False) -> ArtifactRef:
    """Delete 0–90% of the dimensions of E by each method and compare the outputs."""

    def compute(out):
        weight, plans = plan_deletions(regression, embeddings, probabilities, hidden_detect,
                                       config, config.random_seeds)
        bias = read_bias(embeddings)
        frames = []
        for split, states, texts in (("id", hidden, windows), ("ood", hidden_ood, windows_ood)):
            stored = read_hidden_states(states.file(HIDDEN_FILE))
            count = min(config.eval_tokens, len(stored.targets))
            with Progress(count, f"pruning sweep ({split}, {len(plans)} deletion orders × "
                                 f"{len(config.fractions)} fractions)", unit="positions") as bar:
                metrics = sweep(stored.hidden[:count], stored.targets[:count], weight, bias,
                                plans, config.fractions, progress=bar)
            if config.new_tokens:
                metrics = metrics.merge(_generations(model, weight, plans, config, texts),
                                        on=["method", "seed", "fraction"], how="left")
            frames.append(metrics.assign(split=split, positions=count))
        table = pd.concat(frames, ignore_index=True)
        leading = ["method", "seed", "fraction", "split"]
        out.write_table(METRICS_FILE, table[leading + [c for c in table if c not in leading]])
        headline = {f"{method}/{split}": headline_fraction(table, method, split,
                                                           config.js_threshold)
                    for method in METHODS for split in SPLITS}
        out.summary.update(headline=headline, js_threshold=config.js_threshold,
                           dimensions=weight.shape[1], saliency=config.saliency,
                           table=_main_metrics(table))
        publish_table(STAGE, out, _main_metrics(table),
                      f"Pruning E by {config.saliency}-saliency against baselines; fraction "
                      f"with α-JS below {config.js_threshold:g}: " + ", ".join(
                          f"{k} {v:.0%}" for k, v in headline.items()))

    arguments = {"model": model, "regression": regression, "embeddings": embeddings,
                 "probabilities": probabilities, "hidden_detect": hidden_detect,
                 "hidden": hidden, "hidden_ood": hidden_ood, "windows": windows,
                 "windows_ood": windows_ood, "config": config}
    return run_stage(STAGE, workspace, arguments, compute, force)


@task(**register(FIGURES_STAGE, __name__))
def pruning_figures(workspace: Workspace, pruning: ArtifactRef,
                    force: bool = False) -> ArtifactRef:
    """Every metric against the fraction pruned: saliency against baselines, id and ood."""

    def compute(out):
        table = read_table(pruning, METRICS_FILE)
        subject = out.summary.get("subject", "")
        plots.pruning_metrics(table, f"{subject}: pruning output-embedding dimensions",
                              out.path(FIGURES["metrics"]))
        threshold = store_of(pruning).manifest(pruning).summary["js_threshold"]
        plots.pruning_alpha_js(table, threshold, f"{subject}: JS(α, α') after pruning",
                               out.path(FIGURES["alpha_js"]))
        out.summary["figures"] = FIGURES
        publish_markdown(FIGURES_STAGE, out,
                         "\n".join(f"- `{name}`" for name in FIGURES.values()),
                         "Plots of the pruning sweep (PNG files in the artifact folder)")

    return run_stage(FIGURES_STAGE, workspace, {"pruning": pruning}, compute, force)


def _generations(model: ModelSource, weight: np.ndarray, plans: list[DeletionPlan],
                 config: PruningConfig, texts: ArtifactRef) -> pd.DataFrame:
    """Greedy continuations of held-out prompts by the pruned models against the
    original's (one random seed: generation needs the whole model, so it is the
    expensive part)."""
    heldout = read_windows(texts).take(HELDOUT)[: config.prompts, : config.prompt_tokens]
    prompts = torch.as_tensor(heldout, dtype=torch.long)
    lm = load_model(model.path, dtype="float32", device="cpu")
    untie_output_embeddings(lm)
    head = output_head(lm).weight
    chosen = [p for p in plans if p.method != "random" or p.seed in config.random_seeds[-1:]]
    reference = _greedy(lm, prompts, config.new_tokens)
    rows = []
    with Progress(len(chosen) * len(config.fractions), "greedy generations",
                  unit="runs") as bar:
        for plan in chosen:
            for fraction in config.fractions:
                with torch.no_grad():
                    head.copy_(torch.from_numpy(plan.pruned_weight(weight, fraction)))
                match, first = greedy_agreement(reference, _greedy(lm, prompts,
                                                                   config.new_tokens))
                rows.append({"method": plan.method, "seed": plan.seed, "fraction": fraction,
                             "generation_match": match, "first_divergence": first})
                bar.update(1)
    return pd.DataFrame(rows)


def _greedy(lm, prompts: torch.Tensor, new_tokens: int) -> np.ndarray:
    with torch.inference_mode():
        generated = lm.generate(prompts, attention_mask=torch.ones_like(prompts),
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=0)
    return generated[:, prompts.shape[1]:].numpy()


def _main_metrics(table: pd.DataFrame) -> list[dict]:
    """Per method, split and fraction, seeds averaged: the numbers a reader compares."""
    columns = [c for c in ("kl", "js", "alpha_kl", "alpha_js", "top1_agreement", "perplexity",
                           "generation_match", "first_divergence") if c in table]
    grouped = table.groupby(["method", "split", "fraction"], sort=True)[columns].mean()
    return [dict(zip(["method", "split", "fraction"], key, strict=True)) | row
            for key, row in zip(grouped.index, grouped.to_dict("records"), strict=True)]
