"""Stages `unigram` and `checkpoint`: frequency encoding and parameter convergence of
each training checkpoint (paper §5). The stage `dynamics` gathers them into one table and
its plots (tasks/dynamics_table.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._io import read_embeddings, read_probabilities, read_table
from tasks._stage import register, run_stage, store_of
from tasks.checkpoints import Checkpoint
from tasks.corpus import all_documents
from tokprob.dynamics import check_checkpoint_count, convergence, encoding_fits, unigram_counts
from tokprob.errors import TokprobError
from tokprob.model_sources import ModelSource
from tokprob.models import load_tokenizer
from tokprob.store import ArtifactRef
from tokprob.windows import tokenize
from tokprob.workspace import Workspace

UNIGRAM = "unigram"
CHECKPOINT = "checkpoint"
COUNTS_FILE = "counts.parquet"
ROW_FILE = "checkpoint.parquet"


@task(**register(UNIGRAM, __name__, environment=("transformers", "tokenizers")))
def unigram(workspace: Workspace, corpus: ArtifactRef, model: ModelSource,
            force: bool = False) -> ArtifactRef:
    """How often every token occurs in the whole corpus under the model's tokenizer."""

    def compute(out):
        from transformers import AutoConfig

        documents = all_documents(workspace, corpus)
        tokenizer = load_tokenizer(model.path)
        rows = int(AutoConfig.from_pretrained(model.path).vocab_size)
        counts, tokens = unigram_counts(tokenize(tokenizer, documents), rows)
        out.write_table(COUNTS_FILE, pa.table({"token_id": np.arange(rows, dtype=np.int32),
                                               "count": counts}))
        out.summary.update(tokens=tokens, vocab_size=rows, unseen=int((counts == 0).sum()))

    return run_stage(UNIGRAM, workspace, {"corpus": corpus, "model": model}, compute, force)


@task(name="check-checkpoints", cache_policy=NO_CACHE)
def check_checkpoints(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """At least two checkpoints of one vocabulary, ordered by step."""
    from transformers import AutoConfig

    check_checkpoint_count(len(checkpoints))
    sizes = {c.source.spec: int(AutoConfig.from_pretrained(c.source.path).vocab_size)
             for c in checkpoints}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{spec}: {size}" for spec, size in sizes.items())
        raise TokprobError(f"The checkpoints have different vocabularies ({listed}); "
                           "compare checkpoints of one training run.")
    return sorted(checkpoints, key=lambda c: c.step)


@task(**register(CHECKPOINT, __name__))
def checkpoint_analysis(workspace: Workspace, checkpoint: Checkpoint, final: ModelSource,
                        embeddings: ArtifactRef, counts: ArtifactRef,
                        probabilities: ArtifactRef | None, force: bool = False) -> ArtifactRef:
    """One checkpoint: adjusted R² of −log f (and −log α) on its E, and its distance to
    the final checkpoint per parameter group."""

    def compute(out):
        matrix = read_embeddings(embeddings)
        counted = read_table(counts, COUNTS_FILE)["count"].to_numpy()
        alpha, eval_nll = None, math.nan
        if probabilities is not None:
            alpha = read_probabilities(probabilities)["alpha"].to_numpy()
            eval_nll = store_of(probabilities).manifest(probabilities).summary["mean_nll"]
        row = ({"step": checkpoint.step, "tokens_seen": checkpoint.tokens_seen,
                "loss": checkpoint.loss} | encoding_fits(matrix, counted, alpha)
               | {"eval_nll": eval_nll})
        for group, values in convergence(Path(checkpoint.source.path), Path(final.path)).items():
            row[f"rel_distance_{group}"] = values["rel_distance"]
            row[f"cosine_{group}"] = values["cosine"]
        out.write_table(ROW_FILE, pd.DataFrame([row]))
        out.summary.update(row)

    arguments = {"checkpoint": checkpoint, "final": final, "embeddings": embeddings,
                 "counts": counts, "probabilities": probabilities}
    return run_stage(CHECKPOINT, workspace, arguments, compute, force)
