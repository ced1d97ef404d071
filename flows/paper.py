"""The `paper` flow: the whole paper for one or several models on one dataset.

    for each model: encoding (§2) ──► steering (§3), pruning (§4)
    once: dynamics (§5) on the dataset (built-in pre-training unless checkpoints are given)
    all ──► comparison table and report

Each analysis runs as a subflow and reuses every cached stage; the encoding stages the
three per-model analyses share are computed once.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.dynamics import dynamics as dynamics_flow
from flows.encoding import encoding
from flows.labels import run_name, tag_run
from flows.pruning import pruning
from flows.stages import (
    DEFAULT_OOD,
    DYNAMICS_STAGES,
    ENCODING_STAGES,
    PRUNING_STAGES,
    STEERING_STAGES,
    PaperStage,
    documented,
)
from flows.steering import steering
from tasks.paper import compare_models
from tokprob.config import (
    Corpus,
    Detection,
    HiddenConfig,
    PretrainConfig,
    PruningConfig,
    SparsityConfig,
    SteeringConfig,
)
from tokprob.specs import DEFAULT_MODEL
from tokprob.workspace import Workspace


@flow(name="paper", flow_run_name=run_name)
@documented
def paper(
    models: list[str] | None = None,
    corpus: Corpus = Corpus(),
    ood_dataset: str = DEFAULT_OOD,
    detection: Detection = Detection(),
    sparsity_config: SparsityConfig = SparsityConfig(),
    hidden_config: HiddenConfig = HiddenConfig(),
    steering_config: SteeringConfig = SteeringConfig(),
    pruning_config: PruningConfig = PruningConfig(),
    pretrain_config: PretrainConfig = PretrainConfig(),
    with_dynamics: bool = True,
    checkpoints: list[str] | None = None,
    alpha: bool = True,
    tokens_per_step: float | None = None,
    data_dir: str | None = None,
    refresh: list[PaperStage] | None = None,
) -> dict[str, Any]:
    """Encoding, steering, pruning and training dynamics, compared across models."""
    tag_run()
    workspace = Workspace.from_env(data_dir)
    common = {"corpus": corpus, "detection": detection, "data_dir": workspace.data_dir}
    per_model = {}
    for model in models or [DEFAULT_MODEL]:
        per_model[model] = {
            "encoding": encoding(model=model, sparsity_config=sparsity_config,
                                 refresh=_only(refresh, ENCODING_STAGES), **common),
            "steering": steering(model=model, sparsity_config=sparsity_config,
                                 hidden_config=hidden_config, steering_config=steering_config,
                                 refresh=_only(refresh, STEERING_STAGES), **common),
            "pruning": pruning(model=model, ood_dataset=ood_dataset,
                               hidden_config=hidden_config, pruning_config=pruning_config,
                               refresh=_only(refresh, PRUNING_STAGES), **common),
        }
    trained = dynamics_flow(corpus=corpus, checkpoints=checkpoints, alpha=alpha,
                            tokens_per_step=tokens_per_step, pretrain_config=pretrain_config,
                            window_config=detection.window_config,
                            run_config=detection.run_config,
                            probability_config=detection.probability_config,
                            data_dir=workspace.data_dir,
                            refresh=_only(refresh, DYNAMICS_STAGES)) if with_dynamics else None
    return compare_models(workspace, per_model, trained)


def _only(refresh: list[str] | None, stages: list[str]) -> list[str]:
    """The stages to re-run that this analysis has (the others belong to another)."""
    return [stage for stage in refresh or [] if stage in stages]
