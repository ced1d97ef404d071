"""The `pruning` flow and the `prune` flow (paper §4).

    detect (corpus, windows, embeddings, probabilities, regression)
    windows ──► hidden-detect (detecting split, fits the compensation) ──┐
    windows ──► hidden (in distribution)                                ──┤
    ood corpus ──► windows ──► hidden (out of distribution)             ──┴► pruning ──► figures

`pruning` measures how far outputs move as 0–90% of E's dimensions are deleted by
regression saliency, against random and low-norm baselines and against compensated
pruning; `prune` writes a pruned copy of the model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from annotated_types import Ge, Lt
from prefect import flow

from flows.encoding import detect, keep_hidden_states
from flows.labels import run_name, tag_run
from flows.stages import DEFAULT_OOD, PRUNING_STAGES, PruneMethod, PruningStage, documented
from tasks.corpus import corpus as corpus_stage
from tasks.hidden import hidden_states
from tasks.prune_model import save_pruned_model
from tasks.pruning import pruning as pruning_sweep
from tasks.pruning_figures import pruning_figures
from tasks.runner import StageRunner
from tasks.sources import corpus_source
from tasks.summary import summarize_pruning
from tasks.windows import windows
from tokprob.config import Corpus, Detection, HiddenConfig, PruningConfig, WindowConfig
from tokprob.pruning import check_prune_method, check_regression_target
from tokprob.specs import DEFAULT_MODEL
from tokprob.windows import DETECT, TokenBudget
from tokprob.workspace import Workspace


def heldout_readers(tokens: int, pruning_config: PruningConfig,
                    window_config: WindowConfig) -> int:
    """Held-out tokens pruning reads: the evaluated positions, and the generation prompts
    (one window each)."""
    return max(tokens, pruning_config.prompts * window_config.window)


@flow(name="pruning", flow_run_name=run_name)
@documented
def pruning(
    model: str = DEFAULT_MODEL,
    corpus: Corpus = Corpus(),
    ood_dataset: str = DEFAULT_OOD,
    detection: Detection = Detection(),
    hidden_config: HiddenConfig = HiddenConfig(),
    pruning_config: PruningConfig = PruningConfig(),
    data_dir: str | None = None,
    refresh: list[PruningStage] | None = None,
) -> dict[str, Any]:
    """How many output-embedding dimensions can go before the outputs move."""
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, refresh or [], PRUNING_STAGES)
    window_config, run_config = detection.window_config, detection.run_config
    found = detect(stage, workspace, model, corpus, detection,
                   heldout_readers(hidden_config.heldout_tokens, pruning_config, window_config))
    held = keep_hidden_states(stage, workspace, found, run_config, hidden_config)
    calibration = keep_hidden_states(stage, workspace, found, run_config, hidden_config, DETECT)
    ood_text = corpus_source(workspace, Corpus(dataset=ood_dataset))
    ood_docs = stage(corpus_stage, label="corpus-ood", workspace=workspace, source=ood_text)
    # One detecting window (the stage needs one); the held-out split is what is evaluated.
    ood_budget = TokenBudget(detect=window_config.window, heldout=heldout_readers(
        pruning_config.eval_tokens, pruning_config, window_config))
    ood_windows = stage(windows, label="windows-ood", workspace=workspace, corpus=ood_docs,
                        model=found.model, config=window_config, budget=ood_budget)
    # Out of distribution only the evaluated positions are needed, not a steering sample.
    ood_held = stage(hidden_states, label="hidden-ood", workspace=workspace,
                     windows=ood_windows, model=found.model, run=run_config,
                     config=replace(hidden_config, heldout_tokens=pruning_config.eval_tokens))
    sweep = stage(pruning_sweep, workspace=workspace, model=found.model,
                  regression=found.regression, embeddings=found.embeddings,
                  probabilities=found.probabilities, hidden_detect=calibration, hidden=held,
                  hidden_ood=ood_held, windows=found.windows, windows_ood=ood_windows,
                  config=pruning_config, run=run_config)
    stage(pruning_figures, workspace=workspace, pruning=sweep)
    return summarize_pruning(workspace, found.model, found.corpus, ood_text, stage.refs,
                             stage.states)


@flow(name="prune", flow_run_name=run_name)
@documented
def prune(
    fraction: Annotated[float, Ge(0), Lt(1)],
    out: str,
    model: str = DEFAULT_MODEL,
    corpus: Corpus = Corpus(),
    detection: Detection = Detection(),
    hidden_config: HiddenConfig = HiddenConfig(),
    pruning_config: PruningConfig = PruningConfig(),
    method: PruneMethod = "saliency",
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Write a copy of the model with output dimensions deleted by `method`: saliency
    (the least salient), compensated (the same, compensated from the kept dimensions on
    the detecting split's hidden states) or compensated-greedy.

    Args:
        fraction: Share of the dimensions to delete, in [0, 1).
        out: Folder to write the model to (new or empty).
        method: Which dimensions go: saliency (the least salient), compensated (the
            same, compensated from the kept dimensions) or compensated-greedy.
    """
    check_prune_method(method)
    check_regression_target(detection.regression_config.target)
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, [], PRUNING_STAGES)
    window_config, run_config = detection.window_config, detection.run_config
    found = detect(stage, workspace, model, corpus, detection,
                   heldout_readers(hidden_config.heldout_tokens, pruning_config, window_config))
    calibration = None
    if method != "saliency":
        calibration = keep_hidden_states(stage, workspace, found, run_config, hidden_config,
                                         DETECT)
    return save_pruned_model(found.model, found.regression, found.embeddings, fraction,
                             pruning_config, out, method, found.probabilities, calibration)
