"""The checkpoints the dynamics flow analyses: those of a built-in pre-training run, or
those the user names (hub revisions, folders)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.catalog import LOSSES, PretrainSummary, summary_of
from tokprob.model_sources import ModelSource, resolve_model
from tokprob.specs import ModelSpec
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace


class Checkpoint(BaseModel):
    """One checkpoint of a training run, as the dynamics flow sees it."""

    model_config = ConfigDict(frozen=True)

    source: ModelSource
    step: int
    tokens_seen: float
    """NaN where unknown (a hub checkpoint without --tokens-per-step)."""
    loss: float
    """Training loss at that step; NaN where unknown."""

    def cache_identity(self) -> dict[str, object]:
        """What a stage's key takes from a checkpoint: its weights' identity, not where
        the folder is."""
        return {"fingerprint": self.source.fingerprint, "step": self.step,
                "tokens_seen": self.tokens_seen, "loss": self.loss}


@task(name="checkpoints", cache_policy=NO_CACHE)
def pretrained_checkpoints(run: ArtifactRef) -> list[Checkpoint]:
    """The checkpoints of a pre-training artifact, oldest first."""
    summary = summary_of(run, PretrainSummary)
    losses = LOSSES.read(run).set_index("step")["loss"]
    checkpoints = []
    for step in summary["checkpoints"]:
        folder = run.file(f"checkpoints/step-{step:06d}")
        source = ModelSource(spec=str(folder), path=str(folder),
                             fingerprint=f"pretrain:{run.key}:step-{step}",
                             display_name=f"pretrain-{run.key[:8]}@step{step}")
        checkpoints.append(Checkpoint(source=source, step=step,
                                      tokens_seen=float(step * summary["tokens_per_step"]),
                                      loss=float(losses.get(step, float("nan")))))
    return checkpoints


@task(name="checkpoint", cache_policy=NO_CACHE)
def named_checkpoint(workspace: Workspace, spec: str, step: int,
                     tokens_per_step: float | None) -> Checkpoint:
    """A checkpoint the user named (hub revision or folder), at the step
    `checkpoint_steps` gives it."""
    source = resolve_model(ModelSpec.parse(spec), workspace)
    tokens = float(step * tokens_per_step) if tokens_per_step else float("nan")
    return Checkpoint(source=source, step=step, tokens_seen=tokens, loss=float("nan"))
