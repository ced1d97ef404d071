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

from tasks._stage import stage
from tasks.catalog import (
    ALPHA,
    CHECKPOINT_ROW,
    UNIGRAM_COUNTS,
    ProbabilitiesSummary,
    all_documents,
    read_embeddings,
    summary_of,
)
from tasks.checkpoints import Checkpoint
from tokprob.dynamics import check_checkpoint_count, convergence, encoding_fits, unigram_counts
from tokprob.errors import TokprobError
from tokprob.model_sources import ModelSource
from tokprob.models import load_tokenizer
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.windows import tokenize
from tokprob.workspace import Workspace

UNIGRAM = "unigram"
CHECKPOINT = "checkpoint"


@stage(UNIGRAM, environment=("transformers", "tokenizers"))
def unigram(out: ArtifactWriter, workspace: Workspace, corpus: ArtifactRef,
            model: ModelSource) -> None:
    """How often every token occurs in the whole corpus under the model's tokenizer."""
    from transformers import AutoConfig

    documents = all_documents(workspace, corpus)
    tokenizer = load_tokenizer(model.path)
    rows = int(AutoConfig.from_pretrained(model.path).vocab_size)
    counts, tokens = unigram_counts(tokenize(tokenizer, documents), rows)
    out.write_table(UNIGRAM_COUNTS.file, pa.table({"token_id": np.arange(rows, dtype=np.int32),
                                           "count": counts}))
    out.summary.update(tokens=tokens, vocab_size=rows, unseen=int((counts == 0).sum()))


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


@stage(CHECKPOINT)
def checkpoint_analysis(out: ArtifactWriter, checkpoint: Checkpoint, final: ModelSource,
                        embeddings: ArtifactRef, counts: ArtifactRef,
                        probabilities: ArtifactRef | None) -> None:
    """One checkpoint: adjusted R² of −log f (and −log α) on its E, and its distance to
    the final checkpoint per parameter group."""
    matrix = read_embeddings(embeddings)
    counted = UNIGRAM_COUNTS.read(counts, ["count"])["count"].to_numpy()
    alpha, eval_nll = None, math.nan
    if probabilities is not None:
        alpha = ALPHA.read(probabilities, ["alpha"])["alpha"].to_numpy()
        eval_nll = summary_of(probabilities, ProbabilitiesSummary)["mean_nll"]
    row = ({"step": checkpoint.step, "tokens_seen": checkpoint.tokens_seen,
            "loss": checkpoint.loss} | encoding_fits(matrix, counted, alpha)
           | {"eval_nll": eval_nll})
    for group, values in convergence(Path(checkpoint.source.path), Path(final.path)).items():
        row[f"rel_distance_{group}"] = values["rel_distance"]
        row[f"cosine_{group}"] = values["cosine"]
    out.write_table(CHECKPOINT_ROW.file, pd.DataFrame([row]))
    out.summary.update(row)
