"""The `encoding` flow: α, E, the regression of −log α on E, sparsity and PCA.

    corpus ──► windows ──► probabilities ──┐
    model  ──► embeddings ─────────────────┴► regression ──► sparsity, pca ──► figures
                  windows ──► hidden (optional, for steering and pruning)

Run it with `tokprob run encoding`, or call `encoding()` from Python.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import ENCODING_STAGES
from tasks.corpus import corpus
from tasks.embeddings import embeddings
from tasks.figures import figures
from tasks.hidden import hidden_states
from tasks.pca import pca
from tasks.probabilities import probabilities
from tasks.regression import regression
from tasks.runner import StageRunner
from tasks.sources import corpus_source, model_source
from tasks.sparsity import sparsity
from tasks.summary import summarize
from tasks.windows import windows
from tokprob.config import (
    HiddenConfig,
    ProbabilityConfig,
    RegressionConfig,
    RunConfig,
    SparsityConfig,
    WindowConfig,
)
from tokprob.specs import DEFAULT_DATASET, DEFAULT_MODEL
from tokprob.workspace import Workspace


@flow(name="encoding")
def encoding(
    model: str = DEFAULT_MODEL,
    dataset: str = DEFAULT_DATASET,
    split: str = "train",
    text_column: str = "text",
    window_config: WindowConfig = WindowConfig(),
    run_config: RunConfig = RunConfig(),
    probability_config: ProbabilityConfig = ProbabilityConfig(),
    regression_config: RegressionConfig = RegressionConfig(),
    sparsity_config: SparsityConfig = SparsityConfig(),
    keep_hidden: bool = False,
    hidden_config: HiddenConfig = HiddenConfig(),
    data_dir: str | None = None,
    refresh: list[str] | None = None,
) -> dict[str, Any]:
    """How the model encodes output probabilities in its output embeddings."""
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, refresh or [], ENCODING_STAGES)
    source = model_source(workspace, model)
    text = corpus_source(workspace, dataset, split, text_column)

    docs = stage(corpus, workspace=workspace, source=text)
    packed = stage(windows, workspace=workspace, corpus=docs, model=source, config=window_config)
    matrix = stage(embeddings, workspace=workspace, model=source)
    alphas = stage(probabilities, workspace=workspace, windows=packed, model=source,
                   run=run_config, config=probability_config)
    if keep_hidden or "hidden" in stage.refresh:
        stage(hidden_states, workspace=workspace, windows=packed, model=source, run=run_config,
              config=hidden_config)
    fitted = stage(regression, workspace=workspace, probabilities=alphas, embeddings=matrix,
                   config=regression_config)
    dims = stage(sparsity, workspace=workspace, regression=fitted, config=sparsity_config)
    components = stage(pca, workspace=workspace, regression=fitted, embeddings=matrix)
    stage(figures, workspace=workspace, regression=fitted, sparsity=dims, pca=components)

    return summarize(workspace, source, text, stage.refs, stage.states)
