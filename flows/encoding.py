"""The `encoding` flow: α, E, the regression of −log α on E, sparsity and PCA.

    corpus ──► windows ──► probabilities ──┐
    model  ──► embeddings ─────────────────┴► regression ──► sparsity, pca ──► figures
                  windows ──► hidden (optional, for steering and pruning)

Run it with `tokprob run encoding`, or call `encoding()` from Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow

from flows.labels import run_name, tag_run
from flows.stages import ENCODING_STAGES, EncodingStage, documented
from tasks.corpus import corpus as corpus_stage
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
from tokprob.config import Corpus, Detection, HiddenConfig, RunConfig, SparsityConfig
from tokprob.corpora import CorpusSource
from tokprob.model_sources import ModelSource
from tokprob.specs import DEFAULT_MODEL
from tokprob.store import ArtifactRef
from tokprob.windows import HELDOUT, TokenBudget
from tokprob.workspace import Workspace


@dataclass(frozen=True)
class Detected:
    """The stages every analysis starts from: the encoding found on the detecting split."""

    model: ModelSource
    corpus: CorpusSource
    windows: ArtifactRef
    embeddings: ArtifactRef
    probabilities: ArtifactRef
    regression: ArtifactRef


def heldout_budget(tokens: int) -> int:
    """Held-out tokens the windows hold: the `tokens` the readers take, and at least a
    default run's `--heldout-tokens`, so that a flow reading less shares its windows, and
    with them α, with a default run (the budget is part of the windows' key)."""
    return max(HiddenConfig().heldout_tokens, tokens)


def detect(stage: StageRunner, workspace: Workspace, model: str, text: Corpus,
           detection: Detection, heldout_tokens: int) -> Detected:
    """Wire corpus → windows → probabilities and model → embeddings into the regression.
    The windows hold α's `--max-tokens` of detecting text and the held-out text the
    flow's readers take (`heldout_tokens`)."""
    source = model_source(workspace, model)
    found_text = corpus_source(workspace, text)
    docs = stage(corpus_stage, workspace=workspace, source=found_text)
    budget = TokenBudget(detect=detection.probability_config.max_tokens,
                         heldout=heldout_budget(heldout_tokens))
    packed = stage(windows, workspace=workspace, corpus=docs, model=source,
                   config=detection.window_config, budget=budget)
    matrix = stage(embeddings, workspace=workspace, model=source)
    alphas = stage(probabilities, workspace=workspace, windows=packed, model=source,
                   run=detection.run_config, config=detection.probability_config)
    fitted = stage(regression, workspace=workspace, probabilities=alphas, embeddings=matrix,
                   config=detection.regression_config)
    return Detected(source, found_text, packed, matrix, alphas, fitted)


def keep_hidden_states(stage: StageRunner, workspace: Workspace, found: Detected,
                       run_config: RunConfig, hidden_config: HiddenConfig,
                       split: str = HELDOUT) -> ArtifactRef:
    """Final hidden states of the held-out split (evaluation) or, as `hidden-detect`, of
    the detecting split (calibration of interventions)."""
    return stage(hidden_states, label=None if split == HELDOUT else f"hidden-{split}",
                 workspace=workspace, windows=found.windows, model=found.model,
                 run=run_config, config=hidden_config, split=split)


@flow(name="encoding", flow_run_name=run_name)
@documented
def encoding(
    model: str = DEFAULT_MODEL,
    corpus: Corpus = Corpus(),
    detection: Detection = Detection(),
    sparsity_config: SparsityConfig = SparsityConfig(),
    keep_hidden: bool = False,
    hidden_config: HiddenConfig = HiddenConfig(),
    data_dir: str | None = None,
    refresh: list[EncodingStage] | None = None,
) -> dict[str, Any]:
    """How the model encodes output probabilities in its output embeddings."""
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, refresh or [], ENCODING_STAGES)
    found = detect(stage, workspace, model, corpus, detection, hidden_config.heldout_tokens)
    if keep_hidden or "hidden" in stage.refresh:
        keep_hidden_states(stage, workspace, found, detection.run_config, hidden_config)
    dims = stage(sparsity, workspace=workspace, regression=found.regression,
                 config=sparsity_config)
    components = stage(pca, workspace=workspace, regression=found.regression,
                       embeddings=found.embeddings)
    stage(figures, workspace=workspace, regression=found.regression, sparsity=dims,
          pca=components)
    return summarize(workspace, found.model, found.corpus, stage.refs, stage.states)
