"""Read the documents of local corpus files lazily: an index of where each document is,
built in one byte-level pass, then only the documents asked for.

    index = index_documents(files)
    for text in shuffled_documents(files, index, "text", seed=0): ...

A `.jsonl` line, an element of a `.json` array, a `.txt` file and a Parquet row are one
document each; `.gz` and `.zst` files are read through their decompressor. Plain files are
read by seeking to each document; compressed ones cannot seek backwards, so each batch of
documents costs one forward pass over the decompressed stream.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from tokprob.errors import TokprobError
from tokprob.specs import COMPRESSED_SUFFIXES, file_format

_CHUNK = 1 << 24
READ_BATCH = 256
"""Documents read at once from the shuffled order: one sorted pass over their files."""


@dataclass(frozen=True)
class DocumentIndex:
    """Where each document of a corpus is: its file, and its byte offset and length in
    the (decompressed) file, or its element or row number for JSON arrays and Parquet."""

    file: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.file)

    def to_arrow(self) -> pa.Table:
        return pa.table({"doc": np.arange(len(self), dtype=np.int64), "file": self.file,
                         "start": self.start, "length": self.length})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> DocumentIndex:
        return cls(*(table.column(c).to_numpy() for c in ("file", "start", "length")))


def open_bytes(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it ends in .gz or .zst."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".zst":
        import zstandard

        return zstandard.open(path, "rb")
    return path.open("rb")


def _kind(path: Path) -> str:
    """How a file holds documents: lines, a JSON array, a whole text, Parquet rows."""
    loader = file_format(path)
    if loader == "json":
        with open_bytes(path) as handle:
            head = handle.read(4096).lstrip()
        return "array" if head.startswith(b"[") else "lines"
    return loader


def index_documents(files: list[Path]) -> DocumentIndex:
    """Where every document of the files is, in file order. Lines are found by a byte
    scan for newlines (no JSON parsing); blank lines are not documents."""
    empty = np.zeros(0, dtype=np.int64)
    parts = [(empty, empty), *(_index_file(path) for path in files)]
    numbers = [np.full(len(p[0]), i - 1, dtype=np.int32) for i, p in enumerate(parts)]
    return DocumentIndex(file=np.concatenate(numbers),
                         start=np.concatenate([p[0] for p in parts]).astype(np.int64),
                         length=np.concatenate([p[1] for p in parts]).astype(np.int64))


def _index_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    kind = _kind(path)
    if kind == "text":
        size = _decompressed_size(path)
        return np.array([0] if size else [], dtype=np.int64), np.array([size] if size else [],
                                                                         dtype=np.int64)
    if kind == "parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
        return np.arange(rows, dtype=np.int64), np.ones(rows, dtype=np.int64)
    if kind == "array":
        records = len(_json_array(path))
        return np.arange(records, dtype=np.int64), np.zeros(records, dtype=np.int64)
    ends, size = [], 0
    with open_bytes(path) as handle:
        while chunk := handle.read(_CHUNK):
            ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + size)
            size += len(chunk)
    ends = np.concatenate([*ends, np.array([size], dtype=np.int64)])
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts
    keep = lengths > 0
    return starts[keep], lengths[keep]


def _decompressed_size(path: Path) -> int:
    if path.suffix.lower() not in COMPRESSED_SUFFIXES:
        return path.stat().st_size
    size = 0
    with open_bytes(path) as handle:
        while chunk := handle.read(_CHUNK):
            size += len(chunk)
    return size


def shuffled_order(n_documents: int, seed: int) -> np.ndarray:
    """The document-level shuffle: the order documents are read in for `seed`."""
    return np.random.default_rng(seed).permutation(n_documents)


def shuffled_documents(files: list[Path], index: DocumentIndex, column: str,
                       seed: int) -> Iterator[str]:
    """The non-empty documents in the seeded shuffled order, read a batch at a time, so a
    consumer that stops early has read only the batches it took."""
    order = shuffled_order(len(index), seed)
    for start in range(0, len(order), READ_BATCH):
        yield from (t for t in read_documents_at(files, index, column,
                                                  order[start:start + READ_BATCH]) if t)


def read_documents_at(files: list[Path], index: DocumentIndex, column: str,
                      documents: np.ndarray) -> list[str | None]:
    """The texts of the given documents, in the order given (None for a record whose text
    is empty or not a string). Each file is visited once, in increasing offset."""
    texts: list[str | None] = [None] * len(documents)
    documents = np.asarray(documents)
    for number in np.unique(index.file[documents]):
        positions = np.flatnonzero(index.file[documents] == number)
        positions = positions[np.argsort(index.start[documents[positions]], kind="stable")]
        wanted = documents[positions]
        path = files[int(number)]
        found = _read_file(path, _kind(path), column, index.start[wanted], index.length[wanted])
        for position, text in zip(positions, found, strict=True):
            texts[position] = text if isinstance(text, str) and text.strip() else None
    return texts


def _read_file(path: Path, kind: str, column: str, starts: np.ndarray,
               lengths: np.ndarray) -> list[object]:
    if kind == "text":
        return [_decode(path, _whole(path), 0)] * len(starts)
    if kind == "parquet":
        return _parquet_rows(path, column, starts)
    if kind == "array":
        records = _json_array(path)
        return [_field(path, records[int(s)], column, None) for s in starts]
    values: list[object] = []
    with open_bytes(path) as handle:
        for number, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(),
                                                     strict=True)):
            if number and start == starts[number - 1]:  # asked twice: a stream cannot rewind
                values.append(values[-1])
                continue
            handle.seek(start)
            line = handle.read(length)
            values.append(_field(path, _json_line(path, line, start), column, start)
                          if line.strip() else None)  # a line of spaces is blank too
    return values


def _whole(path: Path) -> bytes:
    with open_bytes(path) as handle:
        return handle.read()


def _decode(path: Path, data: bytes, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = _line_number(path, offset) + data[:error.start].count(b"\n")
        raise TokprobError(
            f"Cannot read the dataset {path}: line {line} of {path} is not UTF-8 text (byte "
            f"{data[error.start]:#04x}). Convert the file to UTF-8 (iconv -f latin1 -t "
            "utf-8, say).") from None


def _json_line(path: Path, line: bytes, offset: int) -> object:
    text = _decode(path, line, offset)
    try:
        return json.loads(text)
    except ValueError:
        raise TokprobError(
            f"Cannot read the dataset {path}: line {_line_number(path, offset)} of {path} is "
            f"not a JSON record ({text.strip()[:60]!r}); a JSON-lines file holds one JSON "
            "object per line. Fix or delete that line.") from None


def _line_number(path: Path, offset: int) -> int:
    """The 1-based line at a byte offset (for error messages only: it rereads the file)."""
    with open_bytes(path) as handle:
        return handle.read(offset).count(b"\n") + 1


def _json_array(path: Path) -> list:
    try:
        records = json.loads(_decode(path, _whole(path), 0))
    except ValueError as error:
        raise TokprobError(f"Cannot read the dataset {path}: it is not valid JSON ({error}). "
                           "A .json corpus holds a list of records or one record per "
                           "line.") from None
    return records if isinstance(records, list) else [records]


def _field(path: Path, record: object, column: str, offset: int | None) -> object:
    if isinstance(record, dict) and column in record:
        return record[column]
    columns = ", ".join(record) if isinstance(record, dict) else "none"
    where = f" (line {_line_number(path, offset)})" if offset is not None else ""
    raise TokprobError(
        f"The dataset {path} has no column {column!r}{where}; its columns are {columns}. "
        "Name the text column with --text-column.")


def _parquet_rows(path: Path, column: str, rows: np.ndarray) -> list[object]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    if column not in names:
        raise TokprobError(
            f"The dataset {path} has no column {column!r}; its columns are "
            f"{', '.join(names) or 'none'}. Name the text column with --text-column.")
    bounds = np.cumsum([0] + [handle.metadata.row_group(g).num_rows
                              for g in range(handle.num_row_groups)])
    groups = np.searchsorted(bounds, rows, side="right") - 1
    values: list[object] = []
    for group in np.unique(groups):
        table = handle.read_row_group(int(group), columns=[column]).column(column)
        values.extend(table.take(pa.array(rows[groups == group] - bounds[group])).to_pylist())
    return values
