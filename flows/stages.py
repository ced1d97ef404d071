"""Names of the flows' stages, their config parameters and the descriptions of their
parameters, without importing Prefect (the command line needs them before the engine
starts)."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

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

EncodingStage = Literal[tuple(ENCODING_STAGES)]  # type: ignore[valid-type]
"""A stage name of the encoding flow: the choices of its `refresh` parameter, which
Prefect's forms offer and its API enforces."""

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

SteeringStage = Literal[tuple(STEERING_STAGES)]  # type: ignore[valid-type]

STEERING_CONFIGS: dict[str, type] = {
    name: ENCODING_CONFIGS[name]
    for name in ("window_config", "run_config", "probability_config", "regression_config",
                 "sparsity_config", "hidden_config")
} | {"steering_config": SteeringConfig}
"""The steering flow's config parameters and their classes."""

PRUNING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "regression", "hidden",
                  "pruning", "pruning-figures"]

PruningStage = Literal[tuple(PRUNING_STAGES)]  # type: ignore[valid-type]

PRUNING_CONFIGS: dict[str, type] = {
    name: ENCODING_CONFIGS[name]
    for name in ("window_config", "run_config", "probability_config", "regression_config",
                 "hidden_config")
} | {"pruning_config": PruningConfig}
"""The pruning flow's config parameters and their classes."""

DYNAMICS_STAGES = ["corpus", "pretrain", "unigram", "windows", "embeddings", "probabilities",
                   "checkpoint", "dynamics"]

DynamicsStage = Literal[tuple(DYNAMICS_STAGES)]  # type: ignore[valid-type]

DYNAMICS_CONFIGS: dict[str, type] = {
    "pretrain_config": PretrainConfig,
    "window_config": WindowConfig,
    "run_config": RunConfig,
    "probability_config": ProbabilityConfig,
}
"""The dynamics flow's config parameters and their classes."""


PAPER_STAGES = list(dict.fromkeys(ENCODING_STAGES + STEERING_STAGES + PRUNING_STAGES
                                  + DYNAMICS_STAGES))
PaperStage = Literal[tuple(PAPER_STAGES)]  # type: ignore[valid-type]

PAPER_CONFIGS: dict[str, type] = (ENCODING_CONFIGS | STEERING_CONFIGS | PRUNING_CONFIGS
                                  | DYNAMICS_CONFIGS)
"""The paper flow's config parameters and their classes."""

PARAMETER_DOCS: dict[str, str] = {
    "model": "Built-in name, hub id[@revision], model folder or .gguf file.",
    "models": "Model specs, each as for --model (comma-separated).",
    "dataset": "Built-in name (wiki-leads, shakespeare), .txt/.json/.jsonl/.parquet files, "
               "or hub name[:config][@revision].",
    "ood_dataset": "Out-of-distribution corpus for pruning.",
    "split": "Split of a hub dataset.",
    "text_column": "Column holding the text in .json/.jsonl/.parquet files and hub datasets.",
    "keep_hidden": "Also store final hidden states of the held-out split.",
    "with_dynamics": "Include the training dynamics.",
    "checkpoints": "Checkpoints (hub id@revision or folders, comma-separated), oldest first; "
                   "none: pre-train the built-in model.",
    "alpha": "Also regress −log α of each checkpoint (on --dataset's detecting split).",
    "tokens_per_step": "Tokens per training step of the given checkpoints, for the "
                       "tokens-seen axis (e.g. 2097152 for Pythia).",
    "data_dir": "Artifact store (default: $TOKPROB_DATA, else the checkout's data/ folder).",
    "refresh": "Stages to recompute, with every stage that depends on them, instead of "
               "reusing their cached artifacts.",
} | {name: " ".join(config.__doc__.split()) for name, config in PAPER_CONFIGS.items()}
"""What the flows' shared parameters mean: the command line's help and, through each
flow's docstring, the descriptions in Prefect's parameter forms."""

Flow = TypeVar("Flow", bound=Callable[..., Any])


def documented(fn: Flow) -> Flow:
    """`fn` with its shared parameters described in its docstring's `Args:` section
    (added when missing, after the flow's own parameters). Prefect reads that section
    into the descriptions of the flow's parameter form."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    if not re.search(r"^Args:$", doc, re.MULTILINE):
        doc += "\n\nArgs:"
    own = set(re.findall(r"^    (\w+):", doc, re.MULTILINE))
    doc += "".join(f"\n    {name}: {PARAMETER_DOCS[name]}"
                   for name in inspect.signature(fn).parameters if name not in own)
    fn.__doc__ = doc
    return fn


@dataclass(frozen=True)
class FlowInfo:
    """A flow as the command line, the Python API and `tokprob serve` know it before
    Prefect is imported: its module flows/<name>.py, its stages and its configs."""

    name: str
    stages: list[str]
    configs: dict[str, type]

    def load(self) -> Any:
        """The flow itself (imports Prefect: prepare the environment first)."""
        return getattr(importlib.import_module(f"flows.{self.name}"), self.name)

    def describe(self, result: dict[str, Any]) -> str:
        """The flow's result as the text the command prints without --json."""
        from tokprob import summary

        return getattr(summary, f"{self.name}_text")(result)


FLOWS: dict[str, FlowInfo] = {info.name: info for info in (
    FlowInfo("encoding", ENCODING_STAGES, ENCODING_CONFIGS),
    FlowInfo("steering", STEERING_STAGES, STEERING_CONFIGS),
    FlowInfo("pruning", PRUNING_STAGES, PRUNING_CONFIGS),
    FlowInfo("dynamics", DYNAMICS_STAGES, DYNAMICS_CONFIGS),
    FlowInfo("paper", PAPER_STAGES, PAPER_CONFIGS),
)}
"""Every flow, by name."""
