"""Reading stage artifacts back into arrays (the stages' file formats live here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokprob.regression import CenteredGram
from tokprob.store import ArtifactRef

EMBEDDINGS_FILE = "embeddings.parquet"
BIAS_FILE = "bias.parquet"
PROBABILITIES_FILE = "probabilities.parquet"


def embeddings_table(matrix: np.ndarray) -> pa.Table:
    """`token_id` and one float32 column per dimension, d0 … d{d-1}."""
    columns = {"token_id": pa.array(np.arange(matrix.shape[0], dtype=np.int32))}
    for j in range(matrix.shape[1]):
        columns[f"d{j}"] = pa.array(np.ascontiguousarray(matrix[:, j], dtype=np.float32))
    return pa.table(columns)


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


GRAM_FILE = "gram.parquet"


def gram_table(gram: CenteredGram) -> pa.Table:
    """The centred Gram statistics; the scalars ride in the schema metadata."""
    columns = {"mean_x": gram.mean_x, "cross": gram.cross}
    columns |= {f"g{j}": gram.gram[:, j] for j in range(gram.gram.shape[1])}
    table = pa.table(columns)
    scalars = {"n": str(gram.n), "mean_y": repr(gram.mean_y), "tss": repr(gram.tss)}
    return table.replace_schema_metadata(scalars)


def read_gram(ref: ArtifactRef) -> CenteredGram:
    table = pq.read_table(ref.file(GRAM_FILE))
    scalars = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    k = table.num_rows
    matrix = np.empty((k, k))
    for j in range(k):
        matrix[:, j] = table.column(f"g{j}").to_numpy()
    return CenteredGram(n=int(scalars["n"]), mean_x=table.column("mean_x").to_numpy(),
                        mean_y=float(scalars["mean_y"]), gram=matrix,
                        cross=table.column("cross").to_numpy(), tss=float(scalars["tss"]))
