"""Stages `unigram`, `checkpoint` and `dynamics`: frequency encoding and parameter
convergence across training checkpoints (paper §5)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._io import read_embeddings, read_probabilities, read_table
from tasks._stage import publish_table, register, run_stage, store_of
from tasks.checkpoints import Checkpoint
from tasks.corpus import all_documents
from tokprob import plots
from tokprob.dynamics import check_checkpoint_count, convergence, first_step
from tokprob.errors import TokprobError
from tokprob.model_sources import ModelSource
from tokprob.models import load_tokenizer
from tokprob.regression import encoding_target, fit_ols
from tokprob.store import ArtifactRef
from tokprob.windows import tokenize
from tokprob.workspace import Workspace

UNIGRAM = "unigram"
CHECKPOINT = "checkpoint"
DYNAMICS = "dynamics"
COUNTS_FILE = "counts.parquet"
ROW_FILE = "checkpoint.parquet"
DYNAMICS_FILE = "dynamics.parquet"
FIGURES = {"encoding": "dynamics_encoding.png", "convergence": "dynamics_convergence.png"}


@task(**register(UNIGRAM, __name__, environment=("transformers", "tokenizers")))
def unigram(workspace: Workspace, corpus: ArtifactRef, model: ModelSource,
            force: bool = False) -> ArtifactRef:
    """How often every token occurs in the whole corpus under the model's tokenizer."""

    def compute(out):
        from transformers import AutoConfig

        documents = all_documents(workspace, corpus)
        tokenizer = load_tokenizer(model.path)
        rows = int(AutoConfig.from_pretrained(model.path).vocab_size)
        ids = np.concatenate([np.asarray(doc, dtype=np.int64)
                              for doc in tokenize(tokenizer, documents) if doc])
        counts = np.bincount(ids, minlength=rows)[:rows]
        out.write_table(COUNTS_FILE, pa.table({"token_id": np.arange(rows, dtype=np.int32),
                                               "count": counts.astype(np.int64)}))
        out.summary.update(tokens=int(ids.size), vocab_size=rows,
                           unseen=int((counts == 0).sum()))

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
        frequency = fit_ols(matrix, encoding_target(counted, counted, "frequency"))
        row = {"step": checkpoint.step, "tokens_seen": checkpoint.tokens_seen,
               "loss": checkpoint.loss, "r2_freq": frequency.r2,
               "adj_r2_freq": frequency.adj_r2, "r2_alpha": math.nan,
               "adj_r2_alpha": math.nan, "eval_nll": math.nan}
        if probabilities is not None:
            alpha = read_probabilities(probabilities)["alpha"].to_numpy()
            y = encoding_target(alpha, alpha, "alpha")
            usable = np.isfinite(y)
            fit = fit_ols(matrix[usable], y[usable])
            row |= {"r2_alpha": fit.r2, "adj_r2_alpha": fit.adj_r2,
                    "eval_nll": store_of(probabilities).manifest(probabilities)
                    .summary["mean_nll"]}
        for group, values in convergence(Path(checkpoint.source.path), Path(final.path)).items():
            row[f"rel_distance_{group}"] = values["rel_distance"]
            row[f"cosine_{group}"] = values["cosine"]
        out.write_table(ROW_FILE, pd.DataFrame([row]))
        out.summary.update(row)

    arguments = {"checkpoint": checkpoint, "final": final, "embeddings": embeddings,
                 "counts": counts, "probabilities": probabilities}
    return run_stage(CHECKPOINT, workspace, arguments, compute, force)


@task(**register(DYNAMICS, __name__))
def dynamics_table(workspace: Workspace, rows: list[ArtifactRef],
                   force: bool = False) -> ArtifactRef:
    """All checkpoints in one table, the two half-way steps, and the plots."""

    def compute(out):
        table = pd.concat([read_table(ref, ROW_FILE) for ref in rows], ignore_index=True)
        table = table.sort_values("step", ignore_index=True)
        distances = [c for c in table if c.startswith("rel_distance_")]
        table["rel_distance_mean"] = table[distances].mean(axis=1)
        table["cosine_mean"] = table[[c.replace("rel_distance", "cosine")
                                      for c in distances]].mean(axis=1)
        out.write_table(DYNAMICS_FILE, table)
        # The checkpoints' common name, without the step of the last one.
        subject = re.sub(r"@step\d+$", "", out.summary.get("subject", ""))
        plots.dynamics_encoding(table, f"{subject}: encoding through training",
                                out.path(FIGURES["encoding"]))
        plots.dynamics_convergence(table, f"{subject}: distance to the final checkpoint",
                                   out.path(FIGURES["convergence"]))
        out.summary.update(
            checkpoints=len(table),
            freq_half_step=first_step(table, "adj_r2_freq", above=True, share=0.5),
            distance_half_step=first_step(table, "rel_distance_mean", above=False, share=0.5),
            final_adj_r2_freq=float(table["adj_r2_freq"].iloc[-1]),
            figures=FIGURES,
        )
        publish_table(DYNAMICS, out, table[["step", "tokens_seen", "loss", "adj_r2_freq",
                                            "adj_r2_alpha", "rel_distance_mean"]]
                      .to_dict("records"),
                      "Frequency encoding (adjusted R²) and distance to the final checkpoint")

    return run_stage(DYNAMICS, workspace, {"rows": rows}, compute, force)
