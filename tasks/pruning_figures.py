"""Stage `pruning-figures`: the pruning sweep's plots (paper §4). A module of its own, so
that editing a plot re-draws them without re-running the sweep."""

from __future__ import annotations

from tasks._stage import publish_markdown, stage
from tasks.catalog import PRUNING_METRICS, PruningSummary, summary_of
from tokprob import plots
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "pruning-figures"
FIGURES = {"metrics": "pruning_metrics.png", "alpha_js": "pruning_alpha_js.png"}


@stage(STAGE)
def pruning_figures(out: ArtifactWriter, pruning: ArtifactRef) -> None:
    """Every metric against the fraction pruned: saliency against baselines, id and ood."""
    table = PRUNING_METRICS.read(pruning)
    subject = out.summary.get("subject", "")
    plots.pruning_metrics(table, f"{subject}: pruning output-embedding dimensions",
                          out.path(FIGURES["metrics"]))
    threshold = summary_of(pruning, PruningSummary)["js_threshold"]
    plots.pruning_alpha_js(table, threshold, f"{subject}: JS(α, α') after pruning",
                           out.path(FIGURES["alpha_js"]))
    out.summary["figures"] = FIGURES
    publish_markdown(STAGE, out,
                     "\n".join(f"- `{name}`" for name in FIGURES.values()),
                     "Plots of the pruning sweep (PNG files in the artifact folder)")
