"""Stage configurations: one frozen dataclass per concern, each field documented.

The command line and the flow parameters are built from these classes. A field whose
metadata says `key=False` is an execution setting (batch size, device): it changes how
fast a stage runs, not what it computes, so it is left out of the stage's cache key.

A field's annotation carries its bounds (`Annotated[int, Ge(1)]`) and choices
(`Literal`), and its docstring its description: the same declarations give the command
line its options and checks, and Prefect's parameter forms (through pydantic's JSON
schema) their descriptions, bounds and choices, which the Prefect API enforces.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import re
import textwrap
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import StringConstraints

from tokprob.errors import TokprobError
from tokprob.specs import DEFAULT_DATASET, DatasetSpec

CUDA_INDEX = r"cuda:\d+"
"""A device written with its index; the named devices are choices of their own."""

NamedDevice = Literal["auto", "cpu", "cuda", "mps"]

Device = NamedDevice | Annotated[str, StringConstraints(pattern=f"^{CUDA_INDEX}$")]

Seed = Annotated[int, Ge(0)]
"""A random seed; numpy's generators take none below 0."""


def _execution(default: Any) -> Any:
    return field(default=default, metadata={"key": False})


class Checked:
    """Base of the configs: each field is checked against the bounds and choices its
    annotation declares, with a message naming the command-line option."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"use_attribute_docstrings": True}
    """Field docstrings become the descriptions in Prefect's parameter forms."""

    def __post_init__(self) -> None:
        hints = _annotations(type(self))
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_field(item.name, hints[item.name], getattr(self, item.name))


@dataclass(frozen=True)
class WindowConfig(Checked):
    """How the corpus is cut into windows and split (paper §2.1)."""

    window: Annotated[int, Ge(2)] = 256
    """Tokens per window. Documents are packed back to back with an end-of-text token
    between them, never padded (padding would change the logits)."""

    heldout_fraction: Annotated[float, Ge(0), Lt(1)] = 0.1
    """Share of the corpus's tokens held out from detection, in whole documents, for
    steering and pruning evaluations."""

    seed: Seed = 0
    """Seed of the window shuffle and of the detecting/held-out split."""


@dataclass(frozen=True)
class RunConfig(Checked):
    """How the model is run for forward passes."""

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights and activations: float32, bfloat16, float16, or auto (the dtype the model
    was saved in); logits are always upcast to float32 before the softmax."""

    batch_size: Annotated[int, Ge(1)] = _execution(8)
    """Windows per forward pass."""

    device: Device = field(default="auto", metadata={"key": False})
    """cpu, cuda, cuda:N, mps, or auto (cuda when available, else mps, else cpu)."""

    shards: Annotated[int, Ge(1)] = _execution(1)
    """Shards of the detecting windows for α, run in parallel on a Dask cluster (1: in
    this process)."""

    dask_address: str = _execution("")
    """Address of a running Dask scheduler for --shards; empty: a local cluster."""

    checkpoint_seconds: Annotated[float, Ge(0)] = _execution(60.0)
    """Seconds of α work between two checkpoints of its partial sums, from which a killed
    run resumes (0: after every batch)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.device in get_args(NamedDevice)
                 or re.fullmatch(CUDA_INDEX, self.device) is not None,
                 "--device", "cpu, cuda, cuda:N, mps or auto", self.device)


@dataclass(frozen=True)
class ProbabilityConfig(Checked):
    """How much of the detecting split the averaged probabilities α cover (paper §2.1)."""

    max_tokens: Annotated[int, Ge(1)] = 32768
    """Tokens of the detecting split to average over, in whole windows."""


@dataclass(frozen=True)
class HiddenConfig(Checked):
    """Final hidden states of the held-out split, kept for steering and pruning."""

    heldout_tokens: Annotated[int, Ge(1)] = 16384
    """Tokens of the held-out split whose final hidden states are stored."""


@dataclass(frozen=True)
class RegressionConfig(Checked):
    """The multiple linear regression of the encoding (paper §2.1)."""

    target: Literal["alpha", "frequency"] = "alpha"
    """What is regressed on the output embeddings: −log α (alpha) or −log of the
    add-one smoothed next-token frequency in the detecting split (frequency)."""

    solver: Literal["normal", "statsmodels"] = "normal"
    """normal: chunked float64 normal equations with refinement (fast, any size);
    statsmodels: statsmodels OLS (the reference; slow and memory-hungry at large |V|)."""


@dataclass(frozen=True)
class SparsityConfig(Checked):
    """How sparsity of the encoding is measured (paper §2.2)."""

    significance: Annotated[float, Gt(0), Lt(1)] = 0.05
    """Family-wise significance level; a dimension counts as significant when its p-value
    is below significance / d (Bonferroni)."""


@dataclass(frozen=True)
class SteeringConfig(Checked):
    """Steering α by editing output embeddings (paper §3)."""

    omega: Literal["bonferroni", "all", "top-k"] = "bonferroni"
    """Dimensions the edit may move: the Bonferroni-significant ones (at --significance),
    all of them, or the top-k by |t|."""

    top_k: Annotated[int, Ge(1)] = 16
    """k for --omega top-k."""

    ratios: Annotated[tuple[Annotated[float, Gt(0)], ...], MinLen(1)] = (
        0.05, 0.1, 0.2, 0.5, 2.0, 5.0, 10.0, 20.0)
    """Factors r to multiply a token's α by (comma-separated)."""

    percentiles: tuple[Annotated[float, Ge(0), Le(100)], ...] = (
        1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0)
    """α percentiles around which target tokens are sampled (comma-separated)."""

    tokens_per_percentile: Annotated[int, Ge(0)] = 3
    """Target tokens sampled near each percentile."""

    targets: tuple[str, ...] = ()
    """More target tokens, as text (exactly one token) or as integer ids (repeatable)."""

    fewshot: bool = True
    """Also estimate A from the first 1, 2, 4, … detecting windows only."""

    target_seed: Seed = 0
    """Seed of the target sampling."""

    exact_kl: bool = False
    """Also compute the exact KL over the other tokens of each method's full-data fit:
    one more LM-head pass, plus pairs / d passes' work. Without it only its upper bound,
    which costs no pass, is reported."""


@dataclass(frozen=True)
class PruningConfig(Checked):
    """Pruning output-embedding dimensions by regression saliency (paper §4)."""

    fractions: Annotated[tuple[Annotated[float, Ge(0), Lt(1)], ...], MinLen(1)] = (
        0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """Shares of dimensions to delete, each in [0, 1) (comma-separated)."""

    saliency: Literal["t", "slope-std"] = "t"
    """Saliency of a dimension: |t| of its slope, or |slope × column std|."""

    random_seeds: tuple[Seed, ...] = (0, 1, 2)
    """Seeds of the random-dimensions baseline (comma-separated)."""

    js_threshold: Annotated[float, Gt(0)] = 1e-3
    """The headline: the largest fraction whose JS divergence between the original and
    pruned averaged distributions α stays below this."""

    eval_tokens: Annotated[int, Ge(1)] = 2048
    """Held-out positions per corpus (in-distribution and out-of-distribution) on which
    the pruned distributions are compared."""

    prompts: Annotated[int, Ge(1)] = 6
    """Prompts (starts of held-out windows) for the greedy-generation comparison."""

    prompt_tokens: Annotated[int, Ge(1)] = 32
    """Tokens of each prompt."""

    new_tokens: Annotated[int, Ge(0)] = 16
    """Tokens generated greedily per prompt (0 skips the generation comparison)."""


@dataclass(frozen=True)
class PretrainConfig(Checked):
    """The built-in pre-training run (paper §5): a small GPT-2 from scratch."""

    vocab_size: Annotated[int, Ge(300)] = 8192
    """Size of the BPE vocabulary trained on the corpus."""

    layers: Annotated[int, Ge(1)] = 4
    """Transformer layers."""

    hidden_size: Annotated[int, Ge(8)] = 256
    """Width d of the model (and of its output embeddings)."""

    heads: Annotated[int, Ge(1)] = 4
    """Attention heads."""

    context: Annotated[int, Ge(8)] = 128
    """Tokens per training window."""

    train_batch: Annotated[int, Ge(1)] = 16
    """Windows per training step."""

    steps: Annotated[int, Ge(1)] = 300
    """Optimizer steps; checkpoints at 0, 1, 2, 4, … and the last step."""

    learning_rate: Annotated[float, Gt(0)] = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""

    warmup_steps: Annotated[int, Ge(1)] = 30
    """Steps of linear warm-up."""

    tie_embeddings: bool = False
    """Tie output to input embeddings (GPT-2 does; Pythia, the paper's §5 model, does not)."""

    train_seed: Seed = 0
    """Seed of the initialization and of the batch order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.hidden_size % self.heads == 0, "--heads",
                 f"a divisor of --hidden-size {self.hidden_size}", self.heads)


def key_params(config: Any) -> dict[str, Any]:
    """The fields of a config that belong in a cache key."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.metadata.get("key", True)
    }


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, as one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@cache
def _annotations(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def _check_field(name: str, hint: Any, value: Any) -> None:
    """`value` against the choices of a Literal, the bounds of an Annotated type, and for
    a tuple its length and each item; other types declare nothing to check."""
    flag = "--" + name.replace("_", "-")
    kind, *constraints = get_args(hint) if get_origin(hint) is Annotated else (hint,)
    if get_origin(kind) is Literal:
        _require(value in get_args(kind), flag, " or ".join(get_args(kind)), value)
    elif get_origin(kind) is tuple:
        least = max((c.min_length for c in constraints if isinstance(c, MinLen)), default=0)
        _require(len(value) >= least, flag, f"at least {least} value", value)
        for item in value:
            _check_field(name, get_args(kind)[0], item)
    else:
        bounds = [c for c in constraints if isinstance(c, Ge | Gt | Le | Lt)]
        if bounds:
            _require(all(_within(value, bound) for bound in bounds), flag,
                     _describe(bounds), value)


def _within(value: Any, bound: Ge | Gt | Le | Lt) -> bool:
    if isinstance(bound, Ge):
        return value >= bound.ge
    if isinstance(bound, Gt):
        return value > bound.gt
    if isinstance(bound, Le):
        return value <= bound.le
    return value < bound.lt


def _describe(bounds: list[Ge | Gt | Le | Lt]) -> str:
    """Bounds in words: 'at least 2', 'a positive number', 'in [0, 1)'."""
    limits = {type(bound): dataclasses.astuple(bound)[0] for bound in bounds}
    low = limits.get(Ge, limits.get(Gt))
    high = limits.get(Le, limits.get(Lt))
    if low is not None and high is not None:
        return (f"in {'[' if Ge in limits else '('}{low:g}, "
                f"{high:g}{']' if Le in limits else ')'}")
    if high is not None:
        return f"at most {high:g}" if Le in limits else f"less than {high:g}"
    if Gt in limits:
        return "a positive number" if low == 0 else f"more than {low:g}"
    return {0: "zero or a positive number", 1: "a positive number"}.get(low, f"at least {low:g}")


def _require(ok: bool, flag: str, expected: str, got: Any) -> None:
    if not ok or (isinstance(got, float) and not math.isfinite(got)):
        raise TokprobError(f"Invalid {flag}: expected {expected}, got {got!r}.")


@dataclass(frozen=True)
class Corpus(Checked):
    """The text a flow reads: a dataset, its split and the column that holds the text."""

    dataset: str = DEFAULT_DATASET
    """Built-in name (wiki-leads, shakespeare), .txt/.json/.jsonl/.parquet files, or hub
    name[:config][@revision]."""

    split: str = "train"
    """Split of a hub dataset."""

    text_column: str = "text"
    """Column holding the text in .json/.jsonl/.parquet files and hub datasets."""

    def spec(self) -> DatasetSpec:
        """What `dataset` names, parsed (a malformed spec is refused here)."""
        return DatasetSpec.parse(self.dataset, self.split, self.text_column)


@dataclass(frozen=True)
class Detection(Checked):
    """How the encoding is found on the detecting split, where every analysis of a model
    starts (paper §2.1): the windows, the forward passes, α and the regression."""

    window_config: WindowConfig = WindowConfig()
    run_config: RunConfig = RunConfig()
    probability_config: ProbabilityConfig = ProbabilityConfig()
    regression_config: RegressionConfig = RegressionConfig()
