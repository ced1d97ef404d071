"""Reading stage artifacts back into arrays (the stages' file formats live here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokprob.store import ArtifactRef

EMBEDDINGS_FILE = "embeddings.parquet"
BIAS_FILE = "bias.parquet"
PROBABILITIES_FILE = "probabilities.parquet"
PREFIXES_FILE = "alpha_prefixes.parquet"
"""α over the first n detecting windows, one column `windows_<n>` per n (few-shot)."""


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
    table = pq.read_table(ref.file(EMBEDDINGS_FILE))
    names = [n for n in table.column_names if n != "token_id"]
    matrix = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        matrix[:, j] = table.column(name).to_numpy()
    return matrix


def read_bias(ref: ArtifactRef) -> np.ndarray | None:
    path = ref.file(BIAS_FILE)
    return pq.read_table(path).column("bias").to_numpy() if path.is_file() else None


def read_probabilities(ref: ArtifactRef) -> pd.DataFrame:
    """token_id, token, alpha, count."""
    return pq.read_table(ref.file(PROBABILITIES_FILE)).to_pandas()


def read_table(ref: ArtifactRef, name: str) -> pd.DataFrame:
    return pq.read_table(ref.file(name)).to_pandas()



def read_alpha_prefixes(ref: ArtifactRef) -> dict[int, np.ndarray]:
    """n → α over the first n detecting windows."""
    table = pq.read_table(ref.file(PREFIXES_FILE))
    return {int(name.split("_")[1]): table.column(name).to_numpy()
            for name in table.column_names if name.startswith("windows_")}
