"""The `dynamics` flow (paper §5) and the `pretraining` flow.

    corpus ──► pretrain (when no checkpoints are given) ──► checkpoints
    corpus + final checkpoint ──► unigram counts, windows
    per checkpoint: embeddings, probabilities ──► checkpoint ──┐
                                                  all rows ──┴► dynamics (table, plots)

Each checkpoint is its own cached stage, one model in memory at a time: adding a
checkpoint computes only the new one (and the final table).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow

from flows.labels import run_name, tag_run
from flows.stages import DYNAMICS_STAGES, DynamicsStage, documented
from tasks.checkpoints import named_checkpoint, pretrained_checkpoints
from tasks.corpus import corpus as corpus_stage
from tasks.dynamics import check_checkpoints, checkpoint_analysis, unigram
from tasks.dynamics_table import dynamics_table
from tasks.embeddings import embeddings
from tasks.pretrain import pretrain
from tasks.probabilities import probabilities
from tasks.runner import StageRunner
from tasks.sources import corpus_source
from tasks.summary import summarize_dynamics
from tasks.windows import windows
from tokprob.config import Corpus, PretrainConfig, ProbabilityConfig, RunConfig, WindowConfig
from tokprob.dynamics import checkpoint_steps
from tokprob.windows import TokenBudget
from tokprob.workspace import Workspace


@flow(name="dynamics", flow_run_name=run_name)
@documented
def dynamics(
    corpus: Corpus = Corpus(),
    checkpoints: list[str] | None = None,
    pretrain_config: PretrainConfig = PretrainConfig(),
    window_config: WindowConfig = WindowConfig(),
    run_config: RunConfig = RunConfig(),
    probability_config: ProbabilityConfig = ProbabilityConfig(),
    alpha: bool = True,
    tokens_per_step: float | None = None,
    data_dir: str | None = None,
    refresh: list[DynamicsStage] | None = None,
) -> dict[str, Any]:
    """When do output embeddings start to encode token frequency, against how far the
    parameters still are from convergence?"""
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, refresh or [], DYNAMICS_STAGES)
    text = corpus_source(workspace, corpus)
    docs = stage(corpus_stage, workspace=workspace, source=text)
    if checkpoints:
        found = [named_checkpoint(workspace, spec, step, tokens_per_step)
                 for spec, step in zip(checkpoints, checkpoint_steps(checkpoints), strict=True)]
    else:
        run = stage(pretrain, workspace=workspace, corpus=docs, config=pretrain_config)
        found = pretrained_checkpoints(run)
        # The built-in model reads at most `context` tokens at once.
        window_config = replace(window_config,
                                window=min(window_config.window, pretrain_config.context))
    ordered = check_checkpoints(found)
    final = ordered[-1].source
    counts = stage(unigram, workspace=workspace, corpus=docs, model=final)
    # α only: the held-out split is not read.
    packed = stage(windows, workspace=workspace, corpus=docs, model=final, config=window_config,
                   budget=TokenBudget(detect=probability_config.max_tokens, heldout=0)
                   ) if alpha else None
    rows = []
    for checkpoint in ordered:
        at = f"@step{checkpoint.step}"
        matrix = stage(embeddings, label=f"embeddings{at}", workspace=workspace,
                       model=checkpoint.source)
        alphas = stage(probabilities, label=f"probabilities{at}", workspace=workspace,
                       windows=packed, model=checkpoint.source, run=run_config,
                       config=probability_config) if alpha else None
        rows.append(stage(checkpoint_analysis, label=f"checkpoint{at}", workspace=workspace,
                          checkpoint=checkpoint, final=final, embeddings=matrix,
                          counts=counts, probabilities=alphas))
    stage(dynamics_table, workspace=workspace, rows=rows)
    return summarize_dynamics(workspace, text, stage.refs, stage.states,
                              training_data=not checkpoints)


@flow(name="pretraining", flow_run_name=run_name)
@documented
def pretraining(
    corpus: Corpus = Corpus(),
    pretrain_config: PretrainConfig = PretrainConfig(),
    data_dir: str | None = None,
    refresh: list[DynamicsStage] | None = None,
) -> dict[str, Any]:
    """Pre-train the built-in small GPT-2 on a corpus, keeping log-spaced checkpoints."""
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, refresh or [], DYNAMICS_STAGES)
    text = corpus_source(workspace, corpus)
    docs = stage(corpus_stage, workspace=workspace, source=text)
    run = stage(pretrain, workspace=workspace, corpus=docs, config=pretrain_config)
    return {"dataset": text.spec, "stages": stage.states, "artifact": run.path,
            "checkpoints": [{"step": c.step, "path": c.source.path, "loss": c.loss,
                             "tokens_seen": c.tokens_seen}
                            for c in pretrained_checkpoints(run)]}
