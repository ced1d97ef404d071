"""Stage `regression`: OLS of −log α on the output embeddings (paper §2.1, SPEC §1.2)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from prefect import task

from tasks._io import GRAM_FILE, gram_table, read_embeddings, read_probabilities
from tasks._stage import publish_markdown, register, run_stage
from tokprob.config import RegressionConfig
from tokprob.errors import TokprobError
from tokprob.regression import encoding_target, fit_ols, fit_ols_statsmodels
from tokprob.store import ArtifactRef
from tokprob.summary import regression_markdown
from tokprob.workspace import Workspace

STAGE = "regression"
REGRESSION_FILE = "regression.parquet"
FITTED_FILE = "fitted.parquet"
log = logging.getLogger("tokprob")


@task(**register(STAGE, __name__))
def regression(workspace: Workspace, probabilities: ArtifactRef, embeddings: ArtifactRef,
               config: RegressionConfig, force: bool = False) -> ArtifactRef:
    """Fit −log α_w ≈ A·E_w + B over the vocabulary and keep every statistic."""

    def compute(out):
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

    return run_stage(STAGE, workspace, {"probabilities": probabilities,
                                        "embeddings": embeddings, "config": config},
                     compute, force)
