"""Names of the encoding flow's stages and its config parameters, without importing
Prefect (the command line needs them before the engine starts)."""

from __future__ import annotations

from tokprob.config import (
    HiddenConfig,
    PretrainConfig,
    ProbabilityConfig,
    PruningConfig,
    RegressionConfig,
    RunConfig,
    SparsityConfig,
    SteeringConfig,
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

STEERING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "regression", "hidden",
                   "steering", "steering-figures"]

STEERING_CONFIGS: dict[str, type] = {
    name: ENCODING_CONFIGS[name]
    for name in ("window_config", "run_config", "probability_config", "regression_config",
                 "sparsity_config", "hidden_config")
} | {"steering_config": SteeringConfig}
"""The steering flow's config parameters and their classes."""

PRUNING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "regression", "hidden",
                  "pruning", "pruning-figures"]

PRUNING_CONFIGS: dict[str, type] = {
    name: ENCODING_CONFIGS[name]
    for name in ("window_config", "run_config", "probability_config", "regression_config",
                 "hidden_config")
} | {"pruning_config": PruningConfig}
"""The pruning flow's config parameters and their classes."""

DYNAMICS_STAGES = ["corpus", "pretrain", "unigram", "windows", "embeddings", "probabilities",
                   "checkpoint", "dynamics"]

DYNAMICS_CONFIGS: dict[str, type] = {
    "pretrain_config": PretrainConfig,
    "window_config": WindowConfig,
    "run_config": RunConfig,
    "probability_config": ProbabilityConfig,
}
"""The dynamics flow's config parameters and their classes."""


PAPER_STAGES = list(dict.fromkeys(ENCODING_STAGES + STEERING_STAGES + PRUNING_STAGES
                                  + DYNAMICS_STAGES))

PAPER_CONFIGS: dict[str, type] = (ENCODING_CONFIGS | STEERING_CONFIGS | PRUNING_CONFIGS
                                  | DYNAMICS_CONFIGS)
"""The paper flow's config parameters and their classes."""
