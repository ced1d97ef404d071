"""Stage `regression`: OLS of −log α on the output embeddings (paper §2.1)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tasks._stage import publish_markdown, stage
from tasks.catalog import ALPHA, FITTED, GRAM, SLOPES, gram_table, read_embeddings
from tokprob.config import RegressionConfig
from tokprob.errors import TokprobError
from tokprob.regression import encoding_target, fit_ols, fit_ols_statsmodels
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.summary import regression_markdown

STAGE = "regression"
log = logging.getLogger("tokprob")


@stage(STAGE)
def regression(out: ArtifactWriter, probabilities: ArtifactRef, embeddings: ArtifactRef,
               config: RegressionConfig) -> None:
    """Fit −log α_w ≈ A·E_w + B over the vocabulary and keep every statistic."""
    matrix = read_embeddings(embeddings)
    probs = ALPHA.read(probabilities)
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
    out.write_table(SLOPES.file, fit.table())
    out.write_table(FITTED.file, pd.DataFrame({
        "token_id": probs["token_id"], "token": probs["token"], "alpha": probs["alpha"],
        "y": np.where(usable, y, np.nan), "fitted": fitted,
    }))
    out.write_table(GRAM.file, gram_table(fit.gram))
    out.summary.update(fit.statistics(), target=config.target,
                       excluded_tokens=int((~usable).sum()))
    publish_markdown(STAGE, out, regression_markdown(out.summary, fit.table()),
                     "Multiple linear regression of the encoding")

