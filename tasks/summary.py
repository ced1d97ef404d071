"""The end of the encoding flow: one result dictionary and a Markdown summary artifact."""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks._stage import artifact_key
from tasks.catalog import (
    DYNAMICS_TABLE,
    DynamicsSummary,
    EmbeddingsSummary,
    FiguresSummary,
    PCASummary,
    ProbabilitiesSummary,
    PruningSummary,
    RegressionSummary,
    SparsitySummary,
    SteeringSummary,
    main_file,
    summary_of,
)
from tasks.runs import publish_run
from tokprob.corpora import CorpusSource
from tokprob.model_sources import ModelSource
from tokprob.store import ArtifactRef
from tokprob.summary import (
    dynamics_markdown,
    encoding_markdown,
    frequency_note,
    pruning_markdown,
    steering_markdown,
)
from tokprob.workspace import Workspace

# The steering stage's summary entries a steering run reports as they are.
STEERING_RESULT = (
    "omega", "omega_dims", "targets", "errors", "comparison", "errors_by_support",
    "comparison_well_measured", "median_abs_log_error", "median_kl_other",
    "median_kl_other_bound", "fewshot_median_error", "spread", "calibrated_windows_for_goal",
    "calibrated_windows_for_goal_well_measured", "heldout_positions", "detect_positions",
)


def _publish(workspace: Workspace, flow: str, result: dict[str, Any], markdown: str,
             key: str, description: str) -> dict[str, Any]:
    """A run's Markdown summary artifact, then its record and report (tasks/runs.py)."""
    create_markdown_artifact(markdown=markdown, key=key, description=description)
    return publish_run(workspace, flow, result)


def outputs(refs: dict[str, ArtifactRef], figures: str) -> dict[str, dict[str, str]]:
    """Where a run's results are: each stage's main Parquet file and folder, and the PNG
    plots of its figures stage (listed in that stage's manifest)."""
    plots = summary_of(refs[figures], FiguresSummary)["figures"]
    main_files = {name: main_file(ref) for name, ref in refs.items()}
    return {
        "artifacts": {name: str(file) for name, file in main_files.items() if file},
        "artifact_dirs": {name: ref.path for name, ref in refs.items()},
        "plots": {name: str(refs[figures].file(file)) for name, file in plots.items()},
    }


@task(name="summary", cache_policy=NO_CACHE)
def summarize(workspace: Workspace, model: ModelSource, corpus: CorpusSource,
              refs: dict[str, ArtifactRef], stages: dict[str, str]) -> dict[str, Any]:
    """Collect the key numbers of every stage into one result."""
    emb = summary_of(refs["embeddings"], EmbeddingsSummary)
    probs = summary_of(refs["probabilities"], ProbabilitiesSummary)
    reg = summary_of(refs["regression"], RegressionSummary)
    sp = summary_of(refs["sparsity"], SparsitySummary)
    pc = summary_of(refs["pca"], PCASummary)
    result: dict[str, Any] = {
        "model": model.display_name, "model_spec": model.spec,
        "model_fingerprint": model.fingerprint, "dataset": corpus.spec,
        "n_tokens": probs["n_tokens"], "n_windows": probs["n_windows"],
        "window": probs["window"], "perplexity": probs["perplexity"],
        "vocab_size": emb["vocab_size"], "hidden_size": emb["hidden_size"],
        "tied": emb["tied"], "has_bias": emb["has_bias"],
        "r2": reg["r2"], "adj_r2": reg["adj_r2"], "f_stat": reg["f_stat"],
        "f_pvalue": reg["f_pvalue"], "target": reg["target"],
        "significant_dims": sp["significant"], "share_significant": sp["share_significant"],
        "k_dims_90pct": sp["k_for_90pct_adj_r2"], "k_components_90pct": pc["k_for_90pct_adj_r2"],
        "topk_dims_adj_r2": sp["topk_adj_r2"], "topk_components_adj_r2": pc["topk_adj_r2"],
        "pc1_r": pc["pc1_r"], "pc2_r": pc["pc2_r"],
        "stages": stages,
    } | outputs(refs, "figures")
    return _publish(workspace, "encoding", result, encoding_markdown(result),
                    artifact_key("encoding", model.display_name, corpus.display_name),
                    f"Encoding analysis of {model.display_name}")


@task(name="steering-summary", cache_policy=NO_CACHE)
def summarize_steering(workspace: Workspace, model: ModelSource, corpus: CorpusSource,
                       refs: dict[str, ArtifactRef], stages: dict[str, str]) -> dict[str, Any]:
    """The steering sweep's key numbers in one result, and a Markdown summary artifact."""
    sweep = summary_of(refs["steering"], SteeringSummary)
    result: dict[str, Any] = {
        "model": model.display_name, "model_spec": model.spec, "dataset": corpus.spec,
        **{name: sweep[name] for name in STEERING_RESULT},
        "stages": stages,
    } | outputs(refs, "steering-figures")
    return _publish(workspace, "steering", result, steering_markdown(result),
                    artifact_key("steering-summary", model.display_name, corpus.display_name),
                    f"Steering of {model.display_name}")


@task(name="pruning-summary", cache_policy=NO_CACHE)
def summarize_pruning(workspace: Workspace, model: ModelSource, corpus: CorpusSource,
                      ood: CorpusSource, refs: dict[str, ArtifactRef],
                      stages: dict[str, str]) -> dict[str, Any]:
    """The pruning sweep's key numbers in one result, and a Markdown summary artifact."""
    sweep = summary_of(refs["pruning"], PruningSummary)
    result: dict[str, Any] = {
        "model": model.display_name, "model_spec": model.spec, "dataset": corpus.spec,
        "ood_dataset": ood.spec, "saliency": sweep["saliency"],
        "dimensions": sweep["dimensions"], "js_threshold": sweep["js_threshold"],
        "headline": sweep["headline"], "metrics": sweep["table"],
        "stages": stages,
    } | outputs(refs, "pruning-figures")
    return _publish(workspace, "pruning", result, pruning_markdown(result),
                    artifact_key("pruning-summary", model.display_name, corpus.display_name),
                    f"Pruning of {model.display_name}")


@task(name="dynamics-summary", cache_policy=NO_CACHE)
def summarize_dynamics(workspace: Workspace, corpus: CorpusSource,
                       refs: dict[str, ArtifactRef], stages: dict[str, str],
                       training_data: bool) -> dict[str, Any]:
    """Per checkpoint the main numbers, and when the encoding and convergence set in.
    training_data: whether the corpus f_w is counted on is the one the checkpoints were
    trained on (the built-in pre-training run), not so for checkpoints the user names."""
    summary = summary_of(refs["dynamics"], DynamicsSummary)
    table = DYNAMICS_TABLE.read(refs["dynamics"])
    columns = ["step", "tokens_seen", "loss", "eval_nll", "adj_r2_freq", "adj_r2_alpha",
               "rel_distance_mean", "cosine_mean"]
    result: dict[str, Any] = {
        "dataset": corpus.spec, "model": summary["subject"],
        "checkpoints": json.loads(table[columns].to_json(orient="records")),
        "freq_half_step": summary["freq_half_step"],
        "distance_half_step": summary["distance_half_step"],
        "final_adj_r2_freq": summary["final_adj_r2_freq"],
        "frequency_on_training_data": training_data,
        "frequency_note": frequency_note(corpus.spec, training_data),
        "stages": stages,
    } | outputs(refs, "dynamics")
    return _publish(workspace, "dynamics", result, dynamics_markdown(result),
                    artifact_key("dynamics-summary", corpus.display_name),
                    f"Training dynamics on {corpus.spec}")
