"""Final hidden states of held-out windows, stored once for cheap LM-head experiments.

Steering (paper §3) and pruning (paper §4) change only the output embeddings, so their
evaluations need h (the final hidden state) at every held-out position, not the model:
logits' = h @ E'.T + b. The states are streamed to Parquet one batch per row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tokprob.head import final_hidden_states
from tokprob.probabilities import batches
from tokprob.progress import Progress
from tokprob.windows import next_tokens


@dataclass(frozen=True)
class HiddenStates:
    hidden: np.ndarray
    """(positions, d) float32 final hidden states."""
    targets: np.ndarray
    """(positions,) int64 next token, −1 at the last position of a window."""


def write_hidden_states(model, windows: np.ndarray, batch_size: int, path: Path,
                        progress: Progress | None = None) -> int:
    """Stream the final hidden states of `windows` to a Parquet file; returns positions."""
    device = next(model.parameters()).device
    writer = None
    n_windows, length = windows.shape
    try:
        with torch.inference_mode():
            for index, batch in enumerate(batches(windows, batch_size)):
                ids = torch.as_tensor(batch, dtype=torch.long, device=device)
                hidden = final_hidden_states(model, ids).float().cpu().numpy()
                table = _batch_table(batch, hidden, first_window=index * batch_size)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                if progress is not None:
                    progress.update(batch.size)
    finally:
        if writer is not None:
            writer.close()
    return n_windows * length


def read_hidden_states(path: Path) -> HiddenStates:
    table = pq.read_table(path, columns=["target", "hidden"])
    column = table.column("hidden").combine_chunks()
    d = column.type.list_size
    hidden = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).copy()
    return HiddenStates(hidden=hidden, targets=table.column("target").to_numpy())


def _batch_table(batch: np.ndarray, hidden: np.ndarray, first_window: int) -> pa.Table:
    n, length = batch.shape
    d = hidden.shape[-1]
    return pa.table({
        "window": np.repeat(np.arange(first_window, first_window + n, dtype=np.int32), length),
        "position": np.tile(np.arange(length, dtype=np.int32), n),
        "input_id": batch.reshape(-1).astype(np.int32),
        "target": next_tokens(batch).reshape(-1),
        "hidden": pa.FixedSizeListArray.from_arrays(
            pa.array(hidden.reshape(-1).astype(np.float32)), d),
    })
