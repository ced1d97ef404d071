"""Tokenize documents and pack them into fixed-length windows (SPEC §1.1).

Packing, not padding: documents are concatenated with an end-of-text token between them
and cut into windows of exactly `window` tokens, so every position sees real context and
no padding changes the logits. Windows are then shuffled and split into a detecting part
(α, regression) and a held-out part (steering and pruning evaluations), by seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokprob.errors import TokprobError

DETECT = "detect"
HELDOUT = "heldout"


@dataclass(frozen=True)
class Windows:
    """Packed windows and their split."""

    tokens: np.ndarray
    """(n_windows, window) int32 token ids."""
    split: np.ndarray
    """(n_windows,) 'detect' or 'heldout'."""
    order: np.ndarray
    """(n_windows,) rank of each window within its split after the seeded shuffle."""

    def take(self, split: str, max_tokens: int | None = None) -> np.ndarray:
        """The windows of one split in shuffled order, as many as fit in max_tokens."""
        chosen = np.flatnonzero(self.split == split)
        chosen = chosen[np.argsort(self.order[chosen], kind="stable")]
        if max_tokens is not None:
            chosen = chosen[: max_tokens // self.tokens.shape[1]]
        return self.tokens[chosen]

    def to_arrow(self) -> pa.Table:
        n, window = self.tokens.shape
        flat = pa.array(self.tokens.reshape(-1), type=pa.int32())
        return pa.table({
            "window": pa.array(np.arange(n, dtype=np.int32)),
            "split": pa.array(self.split.astype(str)),
            "order": pa.array(self.order.astype(np.int32)),
            "input_ids": pa.FixedSizeListArray.from_arrays(flat, window),
        })

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Windows:
        ids = table.column("input_ids").combine_chunks()
        window = ids.type.list_size
        tokens = ids.flatten().to_numpy().astype(np.int32).reshape(-1, window)
        return cls(tokens=tokens, split=np.asarray(table.column("split").to_pylist()),
                   order=table.column("order").to_numpy())


def tokenize(tokenizer, documents: list[str], batch: int = 512) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    ids: list[list[int]] = []
    for start in range(0, len(documents), batch):
        encoded = tokenizer(documents[start:start + batch], add_special_tokens=False)
        ids.extend(encoded["input_ids"])
    return ids


def pack(token_ids: list[list[int]], window: int, separator: int | None) -> np.ndarray:
    """Concatenate documents (separator between them) and cut whole windows."""
    pieces = []
    for ids in token_ids:
        pieces.append(np.asarray(ids, dtype=np.int64))
        if separator is not None:
            pieces.append(np.asarray([separator], dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    n_windows = len(stream) // window
    if n_windows == 0:
        raise TokprobError(
            f"The corpus has {len(stream):,} tokens, fewer than one window of {window}. "
            "Use more text, or a smaller --window."
        )
    return stream[: n_windows * window].reshape(n_windows, window).astype(np.int32)


def split_windows(tokens: np.ndarray, heldout_fraction: float, seed: int) -> Windows:
    """Shuffle windows by seed and hold out a fraction of them."""
    n = tokens.shape[0]
    permutation = np.random.default_rng(seed).permutation(n)
    # The epsilon keeps 100 × 0.29 from flooring to 28 through binary rounding.
    n_heldout = int(np.floor(n * heldout_fraction + 1e-9))
    split = np.full(n, DETECT, dtype=object)
    split[permutation[:n_heldout]] = HELDOUT
    order = np.empty(n, dtype=np.int64)
    order[permutation[:n_heldout]] = np.arange(n_heldout)
    order[permutation[n_heldout:]] = np.arange(n - n_heldout)
    return Windows(tokens=tokens, split=split.astype(str), order=order)


def build_windows(tokenizer, documents: list[str], window: int, heldout_fraction: float,
                  seed: int, vocab_size: int) -> Windows:
    """Tokenize, pack and split a corpus for a model with `vocab_size` output rows."""
    token_ids = tokenize(tokenizer, documents)
    separator = tokenizer.eos_token_id
    tokens = pack(token_ids, window, separator)
    top = int(tokens.max())
    if top >= vocab_size:
        raise TokprobError(
            f"The tokenizer produced token id {top}, beyond the model's {vocab_size} output "
            "rows: tokenizer and model do not belong together."
        )
    return split_windows(tokens, heldout_fraction, seed)
