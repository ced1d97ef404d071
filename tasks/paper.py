"""The comparison across models at the end of the `paper` flow."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.runs import publish_run
from tokprob.steering import method_errors
from tokprob.workspace import Workspace


def comparison_row(encoding: dict[str, Any], steering: dict[str, Any],
                   pruning: dict[str, Any]) -> dict[str, Any]:
    """One model's headline numbers from its three analyses."""
    closed_form = {row["r"]: row["median"] for row in steering["errors"]
                   if row["method"] == "closed_form"}
    return {
        "model": encoding["model"], "vocab_size": encoding["vocab_size"],
        "hidden_size": encoding["hidden_size"], "tied": encoding["tied"],
        "perplexity": encoding["perplexity"], "adj_r2": encoding["adj_r2"],
        "share_significant_dims": encoding["share_significant"],
        "adj_r2_top4_dims": encoding["topk_dims_adj_r2"].get("4"),
        "pc1_r": encoding["pc1_r"],
        "steering_error_r2": closed_form.get("2"),
        "steering_error_r20": closed_form.get("20"),
        "steering_calibrated_error": method_errors(steering["errors"], "calibrated")["median"],
        "steering_calibrated_error_well_measured": (
            steering.get("comparison_well_measured") or {}).get("calibrated_median"),
        "steering_kl_other_bound": steering["median_kl_other_bound"]["closed_form"],
        "prunable_saliency_id": pruning["headline"]["saliency/id"],
        "prunable_saliency_ood": pruning["headline"]["saliency/ood"],
        "prunable_random_id": pruning["headline"]["random/id"],
    }


@task(name="compare-models", cache_policy=NO_CACHE)
def compare_models(workspace: Workspace, per_model: dict[str, dict[str, Any]],
                   dynamics: dict[str, Any] | None) -> dict[str, Any]:
    """The comparison table across models, as a Prefect table artifact and in the run's
    report."""
    rows = [comparison_row(r["encoding"], r["steering"], r["pruning"])
            for r in per_model.values()]
    create_table_artifact(table=rows, key="paper-comparison",
                          description="Encoding, steering and pruning across models")
    plots = {f"{model}/{flow}/{name}": path for model, results in per_model.items()
             for flow, result in results.items() for name, path in result["plots"].items()}
    if dynamics is not None:
        plots |= {f"dynamics/{name}": path for name, path in dynamics["plots"].items()}
    result = {"models": list(per_model), "comparison": rows, "plots": plots,
              "stages": {}, "freq_half_step": (dynamics or {}).get("freq_half_step"),
              "distance_half_step": (dynamics or {}).get("distance_half_step")}
    return publish_run(workspace, "paper", result)
