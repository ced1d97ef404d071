"""The `steering` flow and the `steer` flow (paper §3).

    detect (corpus, windows, embeddings, probabilities, regression) ──┐
                     windows ──► hidden (held-out, detecting) ────────┴► steering ──► figures

`steering` measures how precisely editing output embeddings multiplies α by r, on the
held-out split, from cached hidden states; `steer` writes a steered copy of the model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Gt
from prefect import flow

from flows.encoding import detect, keep_hidden_states
from flows.labels import run_name, tag_run
from flows.stages import STEERING_STAGES, SteeringStage, documented
from tasks.runner import StageRunner
from tasks.steer_model import save_steered_model
from tasks.steering import steering as steering_sweep
from tasks.steering_figures import steering_figures
from tasks.summary import summarize_steering
from tokprob.config import Corpus, Detection, HiddenConfig, SparsityConfig, SteeringConfig
from tokprob.specs import DEFAULT_MODEL
from tokprob.windows import DETECT
from tokprob.workspace import Workspace


@flow(name="steering", flow_run_name=run_name)
@documented
def steering(
    model: str = DEFAULT_MODEL,
    corpus: Corpus = Corpus(),
    detection: Detection = Detection(),
    sparsity_config: SparsityConfig = SparsityConfig(),
    hidden_config: HiddenConfig = HiddenConfig(),
    steering_config: SteeringConfig = SteeringConfig(),
    data_dir: str | None = None,
    refresh: list[SteeringStage] | None = None,
) -> dict[str, Any]:
    """How accurately editing output embeddings steers averaged output probabilities."""
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, refresh or [], STEERING_STAGES)
    found = detect(stage, workspace, model, corpus, detection, hidden_config.heldout_tokens)
    held = keep_hidden_states(stage, workspace, found, detection.run_config, hidden_config)
    calibration = keep_hidden_states(stage, workspace, found, detection.run_config,
                                     hidden_config, DETECT)
    sweep = stage(steering_sweep, workspace=workspace, model=found.model,
                  regression=found.regression, embeddings=found.embeddings,
                  probabilities=found.probabilities, hidden=held, detect_hidden=calibration,
                  config=steering_config, significance=sparsity_config)
    stage(steering_figures, workspace=workspace, steering=sweep)
    return summarize_steering(workspace, found.model, found.corpus, stage.refs, stage.states)


@flow(name="steer", flow_run_name=run_name)
@documented
def steer(
    tokens: list[str],
    edit_ratios: list[Annotated[float, Gt(0)]],
    out: str,
    method: Literal["calibrated", "closed_form"] = "calibrated",
    model: str = DEFAULT_MODEL,
    corpus: Corpus = Corpus(),
    detection: Detection = Detection(),
    sparsity_config: SparsityConfig = SparsityConfig(),
    hidden_config: HiddenConfig = HiddenConfig(),
    steering_config: SteeringConfig = SteeringConfig(),
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Write a copy of the model whose output embeddings steer the given tokens: by edits
    calibrated jointly on the detecting split (method calibrated) or by the paper's closed
    form (closed_form).

    Args:
        tokens: Tokens to steer: text that is exactly one token, or an id.
        edit_ratios: The factor for each token's probability, in the order of `tokens` (2
            doubles it).
        out: Folder to write the model to (new or empty).
        method: How the edits are found: calibrated (jointly on the detecting split, so
            that each ratio holds there) or closed_form (the paper's edit).
    """
    tag_run()
    workspace = Workspace.from_env(data_dir)
    stage = StageRunner(workspace, [], STEERING_STAGES)
    found = detect(stage, workspace, model, corpus, detection, hidden_config.heldout_tokens)
    held = keep_hidden_states(stage, workspace, found, detection.run_config, hidden_config)
    calibration = (keep_hidden_states(stage, workspace, found, detection.run_config,
                                      hidden_config, DETECT)
                   if method == "calibrated" else None)
    return save_steered_model(found.model, found.regression, found.embeddings,
                              found.probabilities, held, calibration, tokens, edit_ratios, method,
                              steering_config, sparsity_config, out)
