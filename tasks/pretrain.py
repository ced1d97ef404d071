"""Stage `pretrain`: the built-in pre-training run, its checkpoints as a cached artifact.

Training works in `data/work/pretrain-<key>/`, outside the artifact's temporary folder,
so that a killed run resumes from its last checkpoint; the finished checkpoints then
move into the artifact and the work folder goes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

import pandas as pd

from tasks._stage import publish_table, stage
from tasks.catalog import LOSSES, all_documents
from tokprob.config import PretrainConfig
from tokprob.pretrain import Pretraining, PretrainSettings, checkpoint_steps, train_tokenizer
from tokprob.progress import Progress
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.windows import pack, tokenize
from tokprob.workspace import Workspace

STAGE = "pretrain"


@stage(STAGE, environment=("torch", "transformers", "tokenizers"), loads_model=True)
def pretrain(out: ArtifactWriter, workspace: Workspace, corpus: ArtifactRef,
             config: PretrainConfig) -> None:
    """Train a BPE tokenizer and a small GPT-2 on the corpus, keeping log-spaced
    checkpoints and the loss of every step."""
    # Kept where an interrupted run leaves it (the trained tokenizer is reused), cleared
    # by a forced run and once the artifact is published.
    work = out.partial
    work.mkdir(parents=True, exist_ok=True)
    documents = all_documents(workspace, corpus)
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
    out.write_table(LOSSES.file, pd.DataFrame(losses))
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
