"""Stage `figures`: the encoding analysis as PNG plots (Figure 1 of the paper and more)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from tasks._io import read_table
from tasks._stage import publish_markdown, register, run_stage, store_of
from tasks.pca import COMPONENTS_FILE, SCORES_FILE
from tasks.pca import TOPK_FILE as PCA_TOPK
from tasks.regression import FITTED_FILE
from tasks.sparsity import DIMENSIONS_FILE
from tasks.sparsity import TOPK_FILE as DIMENSION_TOPK
from tokprob import plots
from tokprob.probabilities import alpha_percentile
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "figures"
FIGURES = {
    "pca_scatter": "pca_scatter.png",
    "abs_t": "abs_t_sorted.png",
    "topk": "topk_adj_r2.png",
    "predicted": "predicted_vs_actual.png",
    "components": "component_correlations.png",
}


@task(**register(STAGE, __name__))
def figures(workspace: Workspace, regression: ArtifactRef, sparsity: ArtifactRef,
            pca: ArtifactRef, force: bool = False) -> ArtifactRef:
    """Draw every plot of the encoding analysis."""

    def compute(out):
        reg = store_of(regression).manifest(regression).summary
        sp = store_of(sparsity).manifest(sparsity).summary
        subject = reg.get("subject", "")
        scores = read_table(pca, SCORES_FILE)
        plots.pca_scatter(scores[["pc1", "pc2"]].to_numpy(),
                          alpha_percentile(scores["alpha"].to_numpy()),
                          f"{subject}: output embeddings, first two PCs",
                          out.path(FIGURES["pca_scatter"]))
        plots.abs_t_sorted(read_table(sparsity, DIMENSIONS_FILE), sp["bonferroni_abs_t"],
                           f"{subject}: |t| per dimension", out.path(FIGURES["abs_t"]))
        curves = pd.concat([read_table(sparsity, DIMENSION_TOPK), read_table(pca, PCA_TOPK)])
        plots.topk_adj_r2(curves, reg["adj_r2"], f"{subject}: sparsity of the encoding",
                          out.path(FIGURES["topk"]))
        fitted = read_table(regression, FITTED_FILE)
        usable = np.isfinite(fitted["y"].to_numpy())
        plots.predicted_vs_actual(fitted["y"].to_numpy()[usable],
                                  fitted["fitted"].to_numpy()[usable], reg["r2"],
                                  f"{subject}: MLR of −log α on E", out.path(FIGURES["predicted"]))
        plots.component_correlations(read_table(pca, COMPONENTS_FILE),
                                     f"{subject}: leading components",
                                     out.path(FIGURES["components"]))
        out.summary["figures"] = FIGURES
        publish_markdown(STAGE, out, "\n".join(f"- `{name}`" for name in FIGURES.values()),
                         "Plots of the encoding analysis (PNG files in the artifact folder)")

    return run_stage(STAGE, workspace,
                     {"regression": regression, "sparsity": sparsity, "pca": pca}, compute, force)
