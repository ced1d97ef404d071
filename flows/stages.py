"""Names of the encoding flow's stages and its config parameters, without importing
Prefect (the command line needs them before the engine starts)."""

from __future__ import annotations

from tokprob.config import (
    HiddenConfig,
    ProbabilityConfig,
    RegressionConfig,
    RunConfig,
    SparsityConfig,
    WindowConfig,
)

ENCODING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "hidden", "regression",
                   "sparsity", "pca", "figures"]

ENCODING_CONFIGS: dict[str, type] = {
    "window_config": WindowConfig,
    "run_config": RunConfig,
    "probability_config": ProbabilityConfig,
    "regression_config": RegressionConfig,
    "sparsity_config": SparsityConfig,
    "hidden_config": HiddenConfig,
}
"""The encoding flow's config parameters and their classes."""
