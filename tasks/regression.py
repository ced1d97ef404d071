"""Stage `regression`: OLS of −log α on the output embeddings (paper §2.1)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks._io import read_embeddings, read_probabilities
from tasks._stage import publish_markdown, stage
from tokprob.config import RegressionConfig
from tokprob.errors import TokprobError
from tokprob.regression import CenteredGram, encoding_target, fit_ols, fit_ols_statsmodels
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.summary import regression_markdown

STAGE = "regression"
REGRESSION_FILE = "regression.parquet"
FITTED_FILE = "fitted.parquet"
GRAM_FILE = "gram.parquet"
log = logging.getLogger("tokprob")


@stage(STAGE)
def regression(out: ArtifactWriter, probabilities: ArtifactRef, embeddings: ArtifactRef,
               config: RegressionConfig) -> None:
    """Fit −log α_w ≈ A·E_w + B over the vocabulary and keep every statistic."""
    matrix = read_embeddings(embeddings)
    probs = read_probabilities(probabilities)
    if len(probs) != len(matrix):
        raise TokprobError(
            f"α covers {len(probs)} tokens but E has {len(matrix)} rows: the probabilities "
            "and embeddings artifacts come from different models."
        )
    y = encoding_target(probs["alpha"].to_numpy(), probs["count"].to_numpy(), config.target)
    usable = np.isfinite(y)
    if not usable.all():
        log.warning("regression: %d tokens have α = 0 (underflow) and are left out",
                    int((~usable).sum()))
    solver = fit_ols if config.solver == "normal" else fit_ols_statsmodels
    fit = solver(matrix[usable], y[usable])
    fitted = np.full(len(y), np.nan)
    fitted[usable] = fit.fitted
    out.write_table(REGRESSION_FILE, fit.table())
    out.write_table(FITTED_FILE, pd.DataFrame({
        "token_id": probs["token_id"], "token": probs["token"], "alpha": probs["alpha"],
        "y": np.where(usable, y, np.nan), "fitted": fitted,
    }))
    out.write_table(GRAM_FILE, gram_table(fit.gram))
    out.summary.update(fit.statistics(), target=config.target,
                       excluded_tokens=int((~usable).sum()))
    publish_markdown(STAGE, out, regression_markdown(out.summary, fit.table()),
                     "Multiple linear regression of the encoding")


def gram_table(gram: CenteredGram) -> pa.Table:
    """The centred Gram statistics; the scalars ride in the schema metadata."""
    columns = {"mean_x": gram.mean_x, "cross": gram.cross}
    columns |= {f"g{j}": gram.gram[:, j] for j in range(gram.gram.shape[1])}
    table = pa.table(columns)
    scalars = {"n": str(gram.n), "mean_y": repr(gram.mean_y), "tss": repr(gram.tss)}
    return table.replace_schema_metadata(scalars)


def read_gram(ref: ArtifactRef) -> CenteredGram:
    table = pq.read_table(ref.file(GRAM_FILE))
    scalars = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    k = table.num_rows
    matrix = np.empty((k, k))
    for j in range(k):
        matrix[:, j] = table.column(f"g{j}").to_numpy()
    return CenteredGram(n=int(scalars["n"]), mean_x=table.column("mean_x").to_numpy(),
                        mean_y=float(scalars["mean_y"]), gram=matrix,
                        cross=table.column("cross").to_numpy(), tss=float(scalars["tss"]))
