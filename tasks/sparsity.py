"""Stage `sparsity`: how few dimensions carry the encoding (paper §2.2)."""

from __future__ import annotations

from tasks._stage import publish_table, stage
from tasks.catalog import (
    DIMENSION_TOPK,
    DIMENSIONS,
    SLOPES,
    RegressionSummary,
    read_gram,
    summary_of,
)
from tokprob.config import SparsityConfig
from tokprob.sparsity import (
    adj_r2_at,
    bonferroni_threshold,
    dimension_table,
    salience_order,
    smallest_k_reaching,
    topk_curve,
)
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "sparsity"


@stage(STAGE)
def sparsity(out: ArtifactWriter, regression: ArtifactRef, config: SparsityConfig) -> None:
    """Per-dimension statistics, Bonferroni significance and the top-k dimension curve."""
    gram = read_gram(regression)
    table = dimension_table(SLOPES.read(regression), gram,
                            config.significance)
    curve = topk_curve(gram, salience_order(table["abs_t"].to_numpy()))
    out.write_table(DIMENSIONS.file, table)
    out.write_table(DIMENSION_TOPK.file, curve)
    d = len(table)
    significant = int(table["significant"].sum())
    df_resid = summary_of(regression, RegressionSummary)["df_resid"]
    out.summary.update(
        dimensions=d, significant=significant, share_significant=significant / d,
        bonferroni_abs_t=bonferroni_threshold(config.significance, d, df_resid),
        k_for_90pct_adj_r2=smallest_k_reaching(curve, 0.9),
        topk_adj_r2=adj_r2_at(curve),
    )
    publish_table(STAGE, out, curve.to_dict("records"),
                  f"Adjusted R² of the top-k dimensions by |t|; {significant} of {d} "
                  f"dimensions are Bonferroni-significant")
