"""What every stage writes: its files, their columns, a reader per table and a typed
summary. A stage's computation is in its own module (found by the stage's name under
tasks/); what it leaves on disk is here.

    COMPONENTS.read(ref)                 # a DataFrame, its columns checked
    summary_of(ref, RegressionSummary)   # the manifest's summary, typed
    CATALOG["pca"].main.file             # "components.parquet"

Columns listed for a table are the ones every artifact of the stage has; a few tables
add more (E's d0 … d{d-1}, a per-group distance for each parameter group).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.stage_summaries import (
    CheckpointSummary,
    CorpusSummary,
    DynamicsSummary,
    EmbeddingsSummary,
    FiguresSummary,
    HiddenSummary,
    PCASummary,
    PretrainSummary,
    ProbabilitiesSummary,
    PruningSummary,
    RegressionSummary,
    SparsitySummary,
    StageSummary,
    SteeringSummary,
    UnigramSummary,
    WindowsSummary,
)
from tokprob.corpora import CorpusSource, read_documents, shuffled_corpus
from tokprob.documents import DocumentIndex
from tokprob.errors import TokprobError
from tokprob.hidden import HiddenStates, read_hidden_states
from tokprob.regression import CenteredGram
from tokprob.store import ArtifactRef, ArtifactStore
from tokprob.windows import Windows
from tokprob.workspace import Workspace


@dataclass(frozen=True)
class Table:
    """One Parquet file of a stage's artifact."""

    file: str
    columns: tuple[str, ...]
    description: str

    def path(self, ref: ArtifactRef) -> Path:
        return ref.file(self.file)

    def read(self, ref: ArtifactRef, columns: list[str] | None = None) -> pd.DataFrame:
        """The table as a DataFrame (only `columns` if given); an artifact whose table
        lacks a listed column is an error naming it and how to rebuild it."""
        path = self.path(ref)
        present = pq.read_schema(path).names
        missing = [name for name in (columns or self.columns) if name not in present]
        if missing:
            raise TokprobError(
                f"{path} has no column {', '.join(missing)}: it was written by another "
                f"version of tokprob. Re-run the stage with `--refresh {ref.stage}`."
            )
        return pq.read_table(path, columns=columns).to_pandas()


@dataclass(frozen=True)
class StageFiles:
    """A stage's artifact: its main table (the one a user opens first) and the rest."""

    stage: str
    main: Table | None
    others: tuple[Table, ...] = ()
    summary: type = field(default=dict)
    """The TypedDict of its manifest's summary."""

    @property
    def tables(self) -> tuple[Table, ...]:
        return ((self.main,) if self.main else ()) + self.others


TOPK_COLUMNS = ("basis", "k", "r2", "adj_r2")

DOCUMENTS = Table("documents.parquet", ("doc", "file", "start", "length"),
                  "where each document is in the corpus files")
CORPUS_SOURCE_FILE = "source.json"
"""The corpus source the index was built from (JSON), beside the index."""
WINDOW_TOKENS = Table("windows.parquet", ("window", "split", "order", "input_ids"),
                      "fixed-length token windows and their split")
EMBEDDING_MATRIX = Table("embeddings.parquet", ("token_id", "d0"),
                         "E: token_id and one column per dimension")
BIAS = Table("bias.parquet", ("token_id", "bias"), "the output bias, where the model has one")
ALPHA = Table("probabilities.parquet", ("token_id", "token", "alpha", "count"),
              "α: the averaged output probability of every token, and its next-token count")
ALPHA_PREFIXES = Table("alpha_prefixes.parquet", ("token_id",),
                       "α over the first n detecting windows, one column windows_<n> per n")
HIDDEN_STATES = Table("hidden.parquet", ("window", "position", "input_id", "target", "hidden"),
                      "final hidden states of a split's positions")
SLOPES = Table("regression.parquet", ("dim", "slope", "std_err", "t", "p"),
               "the slope of every dimension of E in the regression of −log α")
FITTED = Table("fitted.parquet", ("token_id", "token", "alpha", "y", "fitted"),
               "the target and the fitted value of every token")
GRAM = Table("gram.parquet", ("mean_x", "cross"), "the centred Gram matrix of E and y")
DIMENSIONS = Table("dimensions.parquet", ("dim", "slope", "std_err", "t", "p", "abs_t",
                                          "std_slope", "significant", "rank"),
                   "per-dimension statistics and Bonferroni significance")
DIMENSION_TOPK = Table("topk.parquet", TOPK_COLUMNS,
                       "adjusted R² of the top-k dimensions by |t|")
COMPONENTS = Table("components.parquet", ("component", "explained_variance",
                                          "explained_variance_ratio", "r"),
                   "principal components of E: variance and correlation with −log α")
COMPONENT_TOPK = Table("topk.parquet", TOPK_COLUMNS, "adjusted R² of the top-k components")
PC_SCORES = Table("scores.parquet", ("token_id", "pc1", "pc2", "alpha"),
                  "every token's first two principal-component scores")
STEERING_SWEEP = Table("steering.parquet", (
    "method", "token_id", "token", "alpha", "r", "achieved", "abs_log_error", "feasible",
    "reachable_ratio", "step", "kl_other", "kl_other_bound", "n_fit", "omega", "percentile",
    "detect_effective_positions", "heldout_effective_positions"),
    "one row per method, target token, ratio r and fit size")
PRUNING_METRICS = Table("pruning.parquet", (
    "method", "seed", "fraction", "split", "dims_deleted", "kl", "js", "top1_agreement",
    "perplexity", "alpha_kl", "alpha_js"),
    "one row per deletion order, fraction and split")
LOSSES = Table("loss.parquet", ("step", "loss"), "the training loss of every step")
UNIGRAM_COUNTS = Table("counts.parquet", ("token_id", "count"),
                       "how often every token occurs in the corpus")
CHECKPOINT_ROW = Table("checkpoint.parquet", ("step", "tokens_seen", "loss", "adj_r2_freq"),
                       "one checkpoint's encoding and distance to the final one")
DYNAMICS_TABLE = Table("dynamics.parquet", (
    "step", "tokens_seen", "loss", "adj_r2_freq", "adj_r2_alpha", "rel_distance_mean",
    "cosine_mean"), "every checkpoint: frequency encoding and distance to the final one")

CORPUS = StageFiles("corpus", DOCUMENTS, summary=CorpusSummary)
WINDOWS = StageFiles("windows", WINDOW_TOKENS, summary=WindowsSummary)
EMBEDDINGS = StageFiles("embeddings", EMBEDDING_MATRIX, (BIAS,), EmbeddingsSummary)
PROBABILITIES = StageFiles("probabilities", ALPHA, (ALPHA_PREFIXES,), ProbabilitiesSummary)
HIDDEN = StageFiles("hidden", HIDDEN_STATES, summary=HiddenSummary)
REGRESSION = StageFiles("regression", SLOPES, (FITTED, GRAM), RegressionSummary)
SPARSITY = StageFiles("sparsity", DIMENSIONS, (DIMENSION_TOPK,), SparsitySummary)
PCA = StageFiles("pca", COMPONENTS, (COMPONENT_TOPK, PC_SCORES), PCASummary)
STEERING = StageFiles("steering", STEERING_SWEEP, summary=SteeringSummary)
PRUNING = StageFiles("pruning", PRUNING_METRICS, summary=PruningSummary)
PRETRAIN = StageFiles("pretrain", LOSSES, summary=PretrainSummary)
UNIGRAM = StageFiles("unigram", UNIGRAM_COUNTS, summary=UnigramSummary)
CHECKPOINT = StageFiles("checkpoint", CHECKPOINT_ROW, summary=CheckpointSummary)
DYNAMICS = StageFiles("dynamics", DYNAMICS_TABLE, summary=DynamicsSummary)
FIGURE_STAGES = tuple(StageFiles(name, None, summary=FiguresSummary)
                      for name in ("figures", "steering-figures", "pruning-figures"))

CATALOG: dict[str, StageFiles] = {files.stage: files for files in (
    CORPUS, WINDOWS, EMBEDDINGS, PROBABILITIES, HIDDEN, REGRESSION, SPARSITY, PCA, STEERING,
    PRUNING, PRETRAIN, UNIGRAM, CHECKPOINT, DYNAMICS, *FIGURE_STAGES)}
"""Every stage's files, by stage name (`hidden-detect` shares `hidden`'s)."""

S = TypeVar("S", bound=StageSummary)


def summary_of(ref: ArtifactRef, kind: type[S]) -> S:
    """The summary in an artifact's manifest, typed as its stage's summary."""
    return cast(S, ArtifactStore(Path(ref.path).parent.parent).manifest(ref).summary)


def main_file(ref: ArtifactRef) -> Path | None:
    """The table a user opens first for an artifact, if its stage has one."""
    files = CATALOG.get(ref.stage)
    return ref.file(files.main.file) if files and files.main else None


# Readers (and the writers of formats other than a plain DataFrame), stage by stage.

def read_corpus(ref: ArtifactRef) -> tuple[CorpusSource, DocumentIndex]:
    """The corpus source and the index of its documents."""
    source = CorpusSource.model_validate_json(ref.file(CORPUS_SOURCE_FILE).read_text())
    return source, DocumentIndex.from_arrow(pq.read_table(DOCUMENTS.path(ref)))


def all_documents(workspace: Workspace, ref: ArtifactRef) -> list[str]:
    """Every non-empty document of an indexed corpus, in the corpus's order."""
    return read_documents(read_corpus(ref)[0], workspace.hf_datasets_cache)


def shuffled_documents(workspace: Workspace, ref: ArtifactRef, seed: int) -> Iterator[str]:
    """The non-empty documents in the seeded document-level shuffle, read lazily."""
    source, index = read_corpus(ref)
    return shuffled_corpus(source, index, seed, workspace.hf_datasets_cache)


def read_windows(ref: ArtifactRef) -> Windows:
    return Windows.from_arrow(pq.read_table(WINDOW_TOKENS.path(ref)))


EMBEDDING_ROWS_PER_GROUP = 8192
"""Rows of E written at once: the columnar copy costs a slice of E, not a second E."""


def embeddings_table(matrix: np.ndarray, first_row: int = 0) -> pa.Table:
    """`token_id` and one float32 column per dimension, d0 … d{d-1}."""
    ids = np.arange(first_row, first_row + matrix.shape[0], dtype=np.int32)
    columns = {"token_id": pa.array(ids)}
    for j in range(matrix.shape[1]):
        columns[f"d{j}"] = pa.array(np.ascontiguousarray(matrix[:, j], dtype=np.float32))
    return pa.table(columns)


def write_embeddings(path: Path, matrix: np.ndarray) -> None:
    """E as the embeddings table, written a group of rows at a time."""
    with pq.ParquetWriter(path, embeddings_table(matrix[:0]).schema) as parquet:
        for start in range(0, matrix.shape[0], EMBEDDING_ROWS_PER_GROUP):
            rows = matrix[start:start + EMBEDDING_ROWS_PER_GROUP]
            parquet.write_table(embeddings_table(rows, first_row=start))


def read_embeddings(ref: ArtifactRef) -> np.ndarray:
    """E as a (vocab, d) float32 array."""
    table = pq.read_table(EMBEDDING_MATRIX.path(ref))
    names = [n for n in table.column_names if n != "token_id"]
    matrix = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        matrix[:, j] = table.column(name).to_numpy()
    return matrix



def read_bias(ref: ArtifactRef) -> np.ndarray | None:
    path = BIAS.path(ref)
    return pq.read_table(path).column("bias").to_numpy() if path.is_file() else None



def read_alpha_prefixes(ref: ArtifactRef) -> dict[int, np.ndarray]:
    """n → α over the first n detecting windows."""
    table = pq.read_table(ALPHA_PREFIXES.path(ref))
    return {int(name.split("_")[1]): table.column(name).to_numpy()
            for name in table.column_names if name.startswith("windows_")}


def read_hidden(ref: ArtifactRef) -> HiddenStates:
    return read_hidden_states(HIDDEN_STATES.path(ref))



def gram_table(gram: CenteredGram) -> pa.Table:
    """The centred Gram statistics; the scalars ride in the schema metadata."""
    columns = {"mean_x": gram.mean_x, "cross": gram.cross}
    columns |= {f"g{j}": gram.gram[:, j] for j in range(gram.gram.shape[1])}
    table = pa.table(columns)
    scalars = {"n": str(gram.n), "mean_y": repr(gram.mean_y), "tss": repr(gram.tss)}
    return table.replace_schema_metadata(scalars)


def read_gram(ref: ArtifactRef) -> CenteredGram:
    table = pq.read_table(GRAM.path(ref))
    scalars = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    k = table.num_rows
    matrix = np.empty((k, k))
    for j in range(k):
        matrix[:, j] = table.column(f"g{j}").to_numpy()
    return CenteredGram(n=int(scalars["n"]), mean_x=table.column("mean_x").to_numpy(),
                        mean_y=float(scalars["mean_y"]), gram=matrix,
                        cross=table.column("cross").to_numpy(), tss=float(scalars["tss"]))
