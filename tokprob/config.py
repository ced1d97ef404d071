"""Stage configurations: one frozen dataclass per concern, each field documented.

The command line and the flow parameters are built from these classes. A field whose
metadata says `key=False` is an execution setting (batch size, device): it changes how
fast a stage runs, not what it computes, so it is left out of the stage's cache key.
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
from typing import Any, Literal

from tokprob.errors import TokprobError

DTYPES = ("float32", "bfloat16", "float16", "auto")


def _execution(default: Any) -> Any:
    return field(default=default, metadata={"key": False})


@dataclass(frozen=True)
class WindowConfig:
    """How the corpus is cut into windows and split (paper §2.1)."""

    window: int = 256
    """Tokens per window. Documents are packed back to back with an end-of-text token
    between them, never padded (padding would change the logits)."""

    heldout_fraction: float = 0.1
    """Share of the corpus's tokens held out from detection, in whole documents, for
    steering and pruning evaluations."""

    seed: int = 0
    """Seed of the window shuffle and of the detecting/held-out split."""

    def __post_init__(self) -> None:
        _require(self.window >= 2, "--window", "at least 2 tokens", self.window)
        _require(0.0 <= self.heldout_fraction < 1.0, "--heldout-fraction", "in [0, 1)",
                 self.heldout_fraction)


@dataclass(frozen=True)
class RunConfig:
    """How the model is run for forward passes."""

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights and activations: float32, bfloat16, float16, or auto (the dtype the model
    was saved in); logits are always upcast to float32 before the softmax."""

    batch_size: int = _execution(8)
    """Windows per forward pass."""

    device: str = _execution("auto")
    """cpu, cuda, cuda:N, mps, or auto (cuda when available, else mps, else cpu)."""

    shards: int = _execution(1)
    """Shards of the detecting windows for α, run in parallel on a Dask cluster (1: in
    this process)."""

    dask_address: str = _execution("")
    """Address of a running Dask scheduler for --shards; empty: a local cluster."""

    checkpoint_seconds: float = _execution(60.0)
    """Seconds of α work between two checkpoints of its partial sums, from which a killed
    run resumes (0: after every batch)."""

    def __post_init__(self) -> None:
        _require(self.shards >= 1, "--shards", "at least 1", self.shards)
        _require(self.dtype in DTYPES, "--dtype", " or ".join(DTYPES), self.dtype)
        _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
                 "--device", "cpu, cuda, cuda:N, mps or auto", self.device)
        _require(self.batch_size > 0, "--batch-size", "a positive number of windows",
                 self.batch_size)
        _require(self.checkpoint_seconds >= 0, "--checkpoint-seconds",
                 "zero or a positive number of seconds", self.checkpoint_seconds)


@dataclass(frozen=True)
class ProbabilityConfig:
    """How much of the detecting split the averaged probabilities α cover (paper §2.1)."""

    max_tokens: int = 32768
    """Tokens of the detecting split to average over, in whole windows."""

    def __post_init__(self) -> None:
        _require(self.max_tokens > 0, "--max-tokens", "a positive number of tokens",
                 self.max_tokens)


@dataclass(frozen=True)
class HiddenConfig:
    """Final hidden states of the held-out split, kept for steering and pruning."""

    heldout_tokens: int = 16384
    """Tokens of the held-out split whose final hidden states are stored."""

    def __post_init__(self) -> None:
        _require(self.heldout_tokens > 0, "--heldout-tokens", "a positive number of tokens",
                 self.heldout_tokens)


@dataclass(frozen=True)
class RegressionConfig:
    """The multiple linear regression of the encoding (paper §2.1)."""

    target: Literal["alpha", "frequency"] = "alpha"
    """What is regressed on the output embeddings: −log α (alpha) or −log of the
    add-one smoothed next-token frequency in the detecting split (frequency)."""

    solver: Literal["normal", "statsmodels"] = "normal"
    """normal: chunked float64 normal equations with refinement (fast, any size);
    statsmodels: statsmodels OLS (the reference; slow and memory-hungry at large |V|)."""

    def __post_init__(self) -> None:
        _require(self.target in ("alpha", "frequency"), "--target", "alpha or frequency",
                 self.target)
        _require(self.solver in ("normal", "statsmodels"), "--solver",
                 "normal or statsmodels", self.solver)


@dataclass(frozen=True)
class SparsityConfig:
    """How sparsity of the encoding is measured (paper §2.2)."""

    significance: float = 0.05
    """Family-wise significance level; a dimension counts as significant when its p-value
    is below significance / d (Bonferroni)."""

    def __post_init__(self) -> None:
        _require(0.0 < self.significance < 1.0, "--significance", "in (0, 1)",
                 self.significance)


@dataclass(frozen=True)
class SteeringConfig:
    """Steering α by editing output embeddings (paper §3)."""

    omega: Literal["bonferroni", "all", "top-k"] = "bonferroni"
    """Dimensions the edit may move: the Bonferroni-significant ones (at --significance),
    all of them, or the top-k by |t|."""

    top_k: int = 16
    """k for --omega top-k."""

    ratios: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 2.0, 5.0, 10.0, 20.0)
    """Factors r to multiply a token's α by (comma-separated)."""

    percentiles: tuple[float, ...] = (1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0)
    """α percentiles around which target tokens are sampled (comma-separated)."""

    tokens_per_percentile: int = 3
    """Target tokens sampled near each percentile."""

    targets: tuple[str, ...] = ()
    """More target tokens, as text (exactly one token) or as integer ids (repeatable)."""

    fewshot: bool = True
    """Also estimate A from the first 1, 2, 4, … detecting windows only."""

    target_seed: int = 0
    """Seed of the target sampling."""

    def __post_init__(self) -> None:
        _require(self.top_k >= 1, "--top-k", "at least 1", self.top_k)
        _require(self.tokens_per_percentile >= 0, "--tokens-per-percentile",
                 "0 or more", self.tokens_per_percentile)
        _require(len(self.ratios) > 0, "--ratios", "at least one ratio", self.ratios)
        for ratio in self.ratios:
            _require(ratio > 0, "--ratios", "positive finite factors (r = 2 doubles α)",
                     ratio)
        for percentile in self.percentiles:
            _require(0.0 <= percentile <= 100.0, "--percentiles", "in [0, 100]", percentile)


@dataclass(frozen=True)
class PruningConfig:
    """Pruning output-embedding dimensions by regression saliency (paper §4)."""

    fractions: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """Shares of dimensions to delete, each in [0, 1) (comma-separated)."""

    saliency: Literal["t", "slope-std"] = "t"
    """Saliency of a dimension: |t| of its slope, or |slope × column std|."""

    random_seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the random-dimensions baseline (comma-separated)."""

    js_threshold: float = 1e-3
    """The headline: the largest fraction whose JS divergence between the original and
    pruned averaged distributions α stays below this."""

    eval_tokens: int = 2048
    """Held-out positions per corpus (in-distribution and out-of-distribution) on which
    the pruned distributions are compared."""

    prompts: int = 6
    """Prompts (starts of held-out windows) for the greedy-generation comparison."""

    prompt_tokens: int = 32
    """Tokens of each prompt."""

    new_tokens: int = 16
    """Tokens generated greedily per prompt (0 skips the generation comparison)."""

    def __post_init__(self) -> None:
        _require(len(self.fractions) > 0, "--fractions", "at least one fraction such as "
                 "0,0.1,0.2", self.fractions)
        for fraction in self.fractions:
            _require(0.0 <= fraction < 1.0, "--fractions", "fractions in [0, 1)", fraction)
        _require(self.js_threshold > 0, "--js-threshold", "a positive number",
                 self.js_threshold)
        _require(self.eval_tokens > 0, "--eval-tokens", "a positive number of tokens",
                 self.eval_tokens)
        _require(self.prompts >= 1, "--prompts", "at least 1", self.prompts)
        _require(self.prompt_tokens >= 1, "--prompt-tokens", "at least 1", self.prompt_tokens)
        _require(self.new_tokens >= 0, "--new-tokens", "0 or more", self.new_tokens)


@dataclass(frozen=True)
class PretrainConfig:
    """The built-in pre-training run (paper §5): a small GPT-2 from scratch."""

    vocab_size: int = 8192
    """Size of the BPE vocabulary trained on the corpus."""

    layers: int = 4
    """Transformer layers."""

    hidden_size: int = 256
    """Width d of the model (and of its output embeddings)."""

    heads: int = 4
    """Attention heads."""

    context: int = 128
    """Tokens per training window."""

    train_batch: int = 16
    """Windows per training step."""

    steps: int = 300
    """Optimizer steps; checkpoints at 0, 1, 2, 4, … and the last step."""

    learning_rate: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""

    warmup_steps: int = 30
    """Steps of linear warm-up."""

    tie_embeddings: bool = False
    """Tie output to input embeddings (GPT-2 does; Pythia, the paper's §5 model, does not)."""

    train_seed: int = 0
    """Seed of the initialization and of the batch order."""

    def __post_init__(self) -> None:
        for flag, value, least in (("--vocab-size", self.vocab_size, 300),
                                   ("--layers", self.layers, 1),
                                   ("--hidden-size", self.hidden_size, 8),
                                   ("--heads", self.heads, 1), ("--context", self.context, 8),
                                   ("--train-batch", self.train_batch, 1),
                                   ("--steps", self.steps, 1),
                                   ("--warmup-steps", self.warmup_steps, 1)):
            _require(value >= least, flag, f"at least {least}", value)
        _require(self.hidden_size % self.heads == 0, "--heads",
                 f"a divisor of --hidden-size {self.hidden_size}", self.heads)
        _require(self.learning_rate > 0, "--learning-rate", "a positive rate",
                 self.learning_rate)


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


def _require(ok: bool, flag: str, expected: str, got: Any) -> None:
    if not ok or (isinstance(got, float) and not math.isfinite(got)):
        raise TokprobError(f"Invalid {flag}: expected {expected}, got {got!r}.")
