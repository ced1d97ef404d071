"""The flows by name, their stages and the descriptions of their single-value parameters,
without importing Prefect (the command line needs them before the engine starts; each
flow's parameters are read from its signature, flows/parameters.py)."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from flows.parameters import Parameter, class_doc, flow_signature
from tokprob.pruning import PRUNE_METHODS

ENCODING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "hidden", "regression",
                   "sparsity", "pca", "figures"]

EncodingStage = Literal[tuple(ENCODING_STAGES)]  # type: ignore[valid-type]
"""A stage name of the encoding flow: the choices of its `refresh` parameter, which
Prefect's forms offer and its API enforces."""


STEERING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "regression", "hidden",
                   "steering", "steering-figures"]

SteeringStage = Literal[tuple(STEERING_STAGES)]  # type: ignore[valid-type]


PRUNING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "regression", "hidden",
                  "pruning", "pruning-figures"]

PruningStage = Literal[tuple(PRUNING_STAGES)]  # type: ignore[valid-type]


DYNAMICS_STAGES = ["corpus", "pretrain", "unigram", "windows", "embeddings", "probabilities",
                   "checkpoint", "dynamics"]

DynamicsStage = Literal[tuple(DYNAMICS_STAGES)]  # type: ignore[valid-type]


PAPER_STAGES = list(dict.fromkeys(ENCODING_STAGES + STEERING_STAGES + PRUNING_STAGES
                                  + DYNAMICS_STAGES))
PaperStage = Literal[tuple(PAPER_STAGES)]  # type: ignore[valid-type]


PARAMETER_DOCS: dict[str, str] = {
    "model": "Built-in name, hub id[@revision], model folder or .gguf file.",
    "models": "Model specs, each as for --model (comma-separated; default: the built-in "
              "model).",
    "ood_dataset": "Out-of-distribution corpus for pruning.",
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
}
"""What the flows' shared single-value parameters mean (a parameter object's meaning is
its class docstring): the command line's help and, through each flow's docstring, the
descriptions in Prefect's parameter forms."""

DEFAULT_OOD = "shakespeare"
"""The out-of-distribution corpus of pruning."""

PruneMethod = Literal[PRUNE_METHODS]  # type: ignore[valid-type]
"""How `prune` chooses and deletes dimensions."""

Flow = TypeVar("Flow", bound=Callable[..., Any])


def documented(fn: Flow) -> Flow:
    """`fn` with its shared parameters described in its docstring's `Args:` section
    (added when missing, after the flow's own parameters). Prefect reads that section
    into the descriptions of the flow's parameter form."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    if not re.search(r"^Args:$", doc, re.MULTILINE):
        doc += "\n\nArgs:"
    own = set(re.findall(r"^    (\w+):", doc, re.MULTILINE))
    hints = typing.get_type_hints(fn)
    doc += "".join(f"\n    {name}: {PARAMETER_DOCS.get(name) or class_doc(hints[name])}"
                   for name in inspect.signature(fn).parameters if name not in own)
    fn.__doc__ = doc
    return fn


@dataclass(frozen=True)
class FlowInfo:
    """A flow as the command line, the Python API and `tokprob serve` know it before
    Prefect is imported: its module flows/<name>.py, its stages and its parameters."""

    name: str
    stages: list[str]

    def parameters(self) -> tuple[Parameter, ...]:
        """Its parameters and their objects' fields, read from its signature."""
        return flow_signature(self.name)

    def load(self) -> Any:
        """The flow itself (imports Prefect: prepare the environment first)."""
        return getattr(importlib.import_module(f"flows.{self.name}"), self.name)

    def describe(self, result: dict[str, Any]) -> str:
        """The flow's result as the text the command prints without --json."""
        from tokprob import summary

        return getattr(summary, f"{self.name}_text")(result)


FLOWS: dict[str, FlowInfo] = {info.name: info for info in (
    FlowInfo("encoding", ENCODING_STAGES),
    FlowInfo("steering", STEERING_STAGES),
    FlowInfo("pruning", PRUNING_STAGES),
    FlowInfo("dynamics", DYNAMICS_STAGES),
    FlowInfo("paper", PAPER_STAGES),
)}
"""Every flow, by name."""
