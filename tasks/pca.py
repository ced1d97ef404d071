"""Stage `pca`: principal components of E against −log α (paper §2.2)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks._stage import publish_table, stage
from tasks.catalog import COMPONENT_TOPK, COMPONENTS, FITTED, PC_SCORES, read_embeddings, read_gram
from tokprob.pca import pca_from_gram
from tokprob.sparsity import adj_r2_at, smallest_k_reaching
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "pca"


@stage(STAGE)
def pca(out: ArtifactWriter, regression: ArtifactRef, embeddings: ArtifactRef) -> None:
    """Explained variance and correlation with −log α of every component."""
    result = pca_from_gram(read_gram(regression))
    fitted = FITTED.read(regression)
    usable = np.isfinite(fitted["y"].to_numpy())
    scores = result.scores(read_embeddings(embeddings)[usable], 2)
    components = result.table()
    curve = result.topk_curve()
    out.write_table(COMPONENTS.file, components)
    out.write_table(COMPONENT_TOPK.file, curve)
    out.write_table(PC_SCORES.file, pd.DataFrame({
        "token_id": fitted["token_id"][usable].to_numpy(), "pc1": scores[:, 0],
        "pc2": scores[:, 1], "alpha": fitted["alpha"][usable].to_numpy(),
    }))
    out.summary.update(
        pc1_r=float(result.correlation[0]), pc2_r=float(result.correlation[1]),
        pc1_variance_ratio=float(components["explained_variance_ratio"].iloc[0]),
        max_r_component=int(np.argmax(result.correlation)),
        max_r=float(result.correlation.max()),
        k_for_90pct_adj_r2=smallest_k_reaching(curve, 0.9),
        topk_adj_r2=adj_r2_at(curve),
    )
    publish_table(STAGE, out, components.head(16).to_dict("records"),
                  "Leading principal components of E: variance and r with −log α")
