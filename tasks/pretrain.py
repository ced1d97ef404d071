"""Stage `pretrain`: the built-in pre-training run, its checkpoints as a cached artifact.

Training works in `data/work/pretrain-<key>/`, outside the artifact's temporary folder,
so that a killed run resumes from its last checkpoint; the finished checkpoints then
move into the artifact and the work folder goes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

import pandas as pd
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks._stage import identify, publish_table, register, run_stage, store_of
from tokprob.config import PretrainConfig
from tokprob.models import ModelSource
from tokprob.pretrain import Pretraining, PretrainSettings, checkpoint_steps, train_tokenizer
from tokprob.progress import Progress
from tokprob.store import ArtifactRef
from tokprob.windows import pack, tokenize
from tokprob.workspace import Workspace

STAGE = "pretrain"
LOSS_FILE = "loss.parquet"


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


@task(**register(STAGE, __name__, environment=("torch", "transformers", "tokenizers")))
def pretrain(workspace: Workspace, corpus: ArtifactRef, config: PretrainConfig,
             force: bool = False) -> ArtifactRef:
    """Train a BPE tokenizer and a small GPT-2 on the corpus, keeping log-spaced
    checkpoints and the loss of every step."""
    arguments = {"corpus": corpus, "config": config}

    def compute(out):
        work = workspace.root / "work" / f"{STAGE}-{identify(STAGE, arguments).key}"
        if force:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        documents = pq.read_table(corpus.file("corpus.parquet"), columns=["text"]) \
            .column("text").to_pylist()
        tokenizer_dir = work / "tokenizer"
        if not (tokenizer_dir / "tokenizer.json").exists():
            train_tokenizer(documents, config.vocab_size).save_pretrained(tokenizer_dir)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        windows = pack(tokenize(tokenizer, documents), config.context, tokenizer.eos_token_id)
        settings = PretrainSettings(
            vocab_size=config.vocab_size, layers=config.layers,
            hidden_size=config.hidden_size, heads=config.heads, context=config.context,
            batch_size=config.train_batch, steps=config.steps,
            learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
            tie_embeddings=config.tie_embeddings, seed=config.train_seed)
        run = Pretraining(settings, tokenizer, windows, work / "checkpoints")
        with Progress(config.steps, "pre-training", unit="steps", log_every=20) as progress:
            losses = run.train(progress)
        for step in run.checkpoints:
            target = out.path(f"checkpoints/step-{step:06d}")
            shutil.move(str(run.checkpoint_dir(step)), str(target))
        out.write_table(LOSS_FILE, pd.DataFrame(losses))
        out.summary.update(
            checkpoints=run.checkpoints, steps=config.steps,
            tokens_per_step=config.train_batch * config.context,
            corpus_windows=len(windows), vocab_size=len(tokenizer),
            final_loss=losses[-1]["loss"], first_loss=losses[0]["loss"],
            settings=asdict(settings),
        )
        publish_table(STAGE, out, [{"step": r["step"], "loss": r["loss"]} for r in losses
                                   if r["step"] in checkpoint_steps(config.steps)],
                      f"Pre-training loss at the checkpoints ({config.steps} steps)")
        shutil.rmtree(work, ignore_errors=True)

    return run_stage(STAGE, workspace, arguments, compute, force)


@task(name="checkpoints", cache_policy=NO_CACHE)
def pretrained_checkpoints(run: ArtifactRef) -> list[Checkpoint]:
    """The checkpoints of a pre-training artifact, oldest first."""
    summary = store_of(run).manifest(run).summary
    losses = pd.read_parquet(run.file(LOSS_FILE)).set_index("step")["loss"]
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
def named_checkpoint(workspace: Workspace, spec: str, index: int,
                     tokens_per_step: float | None) -> Checkpoint:
    """A checkpoint the user named (hub revision or folder); its step from its name
    (step1000, step-000128), else its place in the list."""
    from tokprob.dynamics import step_of
    from tokprob.models import resolve_model
    from tokprob.specs import ModelSpec

    source = resolve_model(ModelSpec.parse(spec), workspace)
    step = step_of(spec)
    step = index if step is None else step
    tokens = float(step * tokens_per_step) if tokens_per_step else float("nan")
    return Checkpoint(source=source, step=step, tokens_seen=tokens, loss=float("nan"))
