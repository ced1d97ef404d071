"""Stage `pruning-figures`: the pruning sweep's plots (paper §4). A module of its own, so
that editing a plot re-draws them without re-running the sweep."""

from __future__ import annotations

from prefect import task

from tasks._io import read_table
from tasks._stage import publish_markdown, register, run_stage, store_of
from tasks.pruning import METRICS_FILE
from tokprob import plots
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "pruning-figures"
FIGURES = {"metrics": "pruning_metrics.png", "alpha_js": "pruning_alpha_js.png"}


@task(**register(STAGE, __name__))
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
        publish_markdown(STAGE, out,
                         "\n".join(f"- `{name}`" for name in FIGURES.values()),
                         "Plots of the pruning sweep (PNG files in the artifact folder)")

    return run_stage(STAGE, workspace, {"pruning": pruning}, compute, force)
