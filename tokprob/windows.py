"""Tokenize documents and pack them into fixed-length windows (paper §2.1).

Packing, not padding: documents are concatenated with the plain end-of-text token after
each and cut into windows of exactly `window` tokens, so every position sees real context
and no padding changes the logits. A tokenizer that puts a BOS token before text (Llama,
Gemma) gets BOS at the start of every window, followed by window − 1 text tokens: those
models behave badly without it.

The detecting part (α, regression) and the held-out part (steering and pruning
evaluations) share no document: documents come in a seeded document-level shuffle and
each goes whole to the held-out split when that brings its tokens closer to the held-out
fraction, until a split holds its token budget (then the other split takes the rest, and
reading stops when both are filled); each split is packed on its own, and the windows of
each split are shuffled by seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

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

    def digest(self, split: str) -> str:
        """sha256 of one split's windows in their shuffled order: all that a stage reading
        only that split depends on."""
        chosen = np.ascontiguousarray(self.take(split), dtype=np.int32)
        digest = hashlib.sha256(str(chosen.shape).encode())
        digest.update(chosen.tobytes())
        return digest.hexdigest()

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


NO_TARGET = -1
"""The target of a window's last position: its next token is outside the window."""


def next_tokens(windows: np.ndarray) -> np.ndarray:
    """Each position's target, the token after it in its window (`NO_TARGET` at the last
    position): windows × length, like `windows`."""
    windows = np.asarray(windows)
    last = np.full((len(windows), 1), NO_TARGET, dtype=np.int64)
    return np.concatenate([windows[:, 1:].astype(np.int64), last], axis=1)


def tokenize(tokenizer, documents: list[str], batch: int = 512) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    ids: list[list[int]] = []
    for start in range(0, len(documents), batch):
        encoded = tokenizer(documents[start:start + batch], add_special_tokens=False)
        ids.extend(encoded["input_ids"])
    return ids


TURN_ENDS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
"""End-of-sequence tokens of chat templates: they close a turn, not a document."""
PLAIN_ENDS_OF_TEXT = ("<|endoftext|>", "<eos>", "<|end_of_text|>", "</s>")
"""End-of-document tokens of pre-training, which chat vocabularies usually keep."""


def document_separator(tokenizer) -> int | None:
    """The token that ends a document: the tokenizer's eos, unless it ends a chat turn
    and the vocabulary has a plain end-of-text token (SmolLM2-Instruct's eos is
    `<|im_end|>`, its pre-training separator `<|endoftext|>`)."""
    if tokenizer.eos_token in TURN_ENDS:
        vocabulary = tokenizer.get_vocab()
        for token in PLAIN_ENDS_OF_TEXT:
            if token in vocabulary:
                return int(vocabulary[token])
    return tokenizer.eos_token_id


def leading_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts before text (Llama, Gemma), None if it adds none."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("x")["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


def pack(token_ids: list[list[int]], window: int, separator: int | None,
         bos: int | None = None) -> np.ndarray:
    """Concatenate documents (separator after each) and cut whole windows; with `bos`,
    each window is BOS followed by window − 1 tokens of the stream."""
    windows = _cut(token_ids, window, separator, bos)
    if len(windows) == 0:
        tokens = sum(map(len, token_ids)) + (len(token_ids) if separator is not None else 0)
        raise TokprobError(
            f"The corpus has {tokens:,} tokens, fewer than one window of {window}. "
            "Use more text, or a smaller --window."
        )
    return windows


def _cut(token_ids: list[list[int]], window: int, separator: int | None,
         bos: int | None) -> np.ndarray:
    """`pack` without the minimum: (0, window) when the text is too short."""
    pieces = []
    for ids in token_ids:
        pieces.append(np.asarray(ids, dtype=np.int64))
        if separator is not None:
            pieces.append(np.asarray([separator], dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    text = window - (bos is not None)
    n_windows = len(stream) // text
    windows = stream[: n_windows * text].reshape(n_windows, text)
    if bos is not None:
        windows = np.hstack([np.full((n_windows, 1), bos, dtype=np.int64), windows])
    return windows.astype(np.int32)


@dataclass(frozen=True)
class TokenBudget:
    """Tokens each split must hold at least, in whole windows; None: the whole corpus.
    Documents are tokenized only until both are filled."""

    detect: int | None = None
    heldout: int | None = None


def takes_heldout(detect_tokens: int, heldout_tokens: int, length: int,
                  heldout_fraction: float) -> bool:
    """Whether a document of `length` tokens goes to the held-out split: when that brings
    the held-out tokens closer to `heldout_fraction` of all tokens read so far."""
    total = detect_tokens + heldout_tokens + length
    return heldout_tokens + length / 2 < heldout_fraction * total


class _Split:
    """The token ids of one split's documents, until it holds `needed` stream tokens."""

    def __init__(self, needed: int | None, separator: int | None) -> None:
        self.needed, self.separator = needed, separator
        self.documents: list[list[int]] = []
        self.tokens = 0

    @property
    def full(self) -> bool:
        return self.needed is not None and self.tokens >= self.needed

    def add(self, ids: list[int]) -> None:
        self.documents.append(ids)
        self.tokens += len(ids) + (self.separator is not None)


def _stream_tokens(budget: int | None, window: int, text: int) -> int | None:
    """Stream tokens that fill ⌈budget / window⌉ windows of `text` stream tokens each."""
    if budget is None:
        return None
    return -(-budget // window) * text


def split_windows(detect: np.ndarray, heldout: np.ndarray, seed: int) -> Windows:
    """The windows of both splits in one table, each split in its own seeded order."""
    rng = np.random.default_rng(seed)
    split = np.array([DETECT] * len(detect) + [HELDOUT] * len(heldout))
    order = np.concatenate([rng.permutation(len(detect)), rng.permutation(len(heldout))])
    return Windows(tokens=np.concatenate([detect, heldout]), split=split, order=order)


def build_windows(tokenizer, documents: Iterable[str], window: int,
                  heldout_fraction: float, seed: int, vocab_size: int,
                  budget: TokenBudget = TokenBudget(), batch: int = 64) -> Windows:
    """Tokenize documents in the order given (a seeded document-level shuffle), assign
    each whole to a split, and pack and shuffle the splits, for a model with `vocab_size`
    output rows. Documents are tokenized `batch` at a time and no further batch is read
    once both splits hold their budget; a full split takes no more documents."""
    separator, bos = document_separator(tokenizer), leading_bos(tokenizer)
    text = window - (bos is not None)
    detect = _Split(_stream_tokens(budget.detect, window, text), separator)
    held = _Split(0 if heldout_fraction == 0 else
                  _stream_tokens(budget.heldout, window, text), separator)
    pending = iter(documents)
    while not (detect.full and held.full) and (chunk := list(islice(pending, batch))):
        for ids in tokenize(tokenizer, chunk):
            if detect.full and held.full:
                break
            goes_out = not held.full and (detect.full or takes_heldout(
                detect.tokens, held.tokens, len(ids) + 1, heldout_fraction))
            (held if goes_out else detect).add(ids)
    windows = split_windows(pack(detect.documents, window, separator, bos),
                            _cut(held.documents, window, separator, bos), seed)
    top = int(windows.tokens.max())
    if top >= vocab_size:
        raise TokprobError(
            f"The tokenizer produced token id {top}, beyond the model's {vocab_size} output "
            "rows: tokenizer and model do not belong together."
        )
    return windows
