"""Stage `figures`: the encoding analysis as PNG plots (Figure 1 of the paper and more)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks._stage import publish_markdown, stage
from tasks.catalog import (
    COMPONENT_TOPK,
    COMPONENTS,
    DIMENSION_TOPK,
    DIMENSIONS,
    FITTED,
    PC_SCORES,
    RegressionSummary,
    SparsitySummary,
    summary_of,
)
from tokprob import plots
from tokprob.probabilities import alpha_percentile
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "figures"
FIGURES = {
    "pca_scatter": "pca_scatter.png",
    "abs_t": "abs_t_sorted.png",
    "topk": "topk_adj_r2.png",
    "predicted": "predicted_vs_actual.png",
    "components": "component_correlations.png",
}


@stage(STAGE)
def figures(out: ArtifactWriter, regression: ArtifactRef, sparsity: ArtifactRef,
            pca: ArtifactRef) -> None:
    """Draw every plot of the encoding analysis."""
    reg = summary_of(regression, RegressionSummary)
    sp = summary_of(sparsity, SparsitySummary)
    subject = reg.get("subject", "")
    scores = PC_SCORES.read(pca)
    plots.pca_scatter(scores[["pc1", "pc2"]].to_numpy(),
                      alpha_percentile(scores["alpha"].to_numpy()),
                      f"{subject}: output embeddings, first two PCs",
                      out.path(FIGURES["pca_scatter"]))
    plots.abs_t_sorted(DIMENSIONS.read(sparsity), sp["bonferroni_abs_t"],
                       f"{subject}: |t| per dimension", out.path(FIGURES["abs_t"]))
    curves = pd.concat([DIMENSION_TOPK.read(sparsity), COMPONENT_TOPK.read(pca)])
    plots.topk_adj_r2(curves, reg["adj_r2"], f"{subject}: sparsity of the encoding",
                      out.path(FIGURES["topk"]))
    fitted = FITTED.read(regression)
    usable = np.isfinite(fitted["y"].to_numpy())
    plots.predicted_vs_actual(fitted["y"].to_numpy()[usable],
                              fitted["fitted"].to_numpy()[usable], reg["r2"],
                              f"{subject}: MLR of −log α on E", out.path(FIGURES["predicted"]))
    plots.component_correlations(COMPONENTS.read(pca),
                                 f"{subject}: leading components",
                                 out.path(FIGURES["components"]))
    out.summary["figures"] = FIGURES
    publish_markdown(STAGE, out, "\n".join(f"- `{name}`" for name in FIGURES.values()),
                     "Plots of the encoding analysis (PNG files in the artifact folder)")
