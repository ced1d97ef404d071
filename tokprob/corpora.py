"""Read a corpus: built-in, local files or a hub dataset, all of it or lazily in a
seeded document-level shuffle.

    source = resolve_corpus(DatasetSpec.parse("wiki-leads"), Workspace.from_env())
    documents = read_documents(source, workspace.hf_datasets_cache)
    shuffled = shuffled_corpus(source, index_corpus(source), seed, workspace.hf_datasets_cache)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tokprob import assets
from tokprob.documents import (
    DocumentIndex,
    index_documents,
    read_documents_at,
    shuffled_documents,
)
from tokprob.errors import TokprobError
from tokprob.hashing import sha256_files
from tokprob.model_sources import hub_snapshot
from tokprob.specs import DatasetSpec, local_files
from tokprob.workspace import Workspace


class CorpusSource(BaseModel):
    """A resolved dataset: where its text is and what it is, for cache keys."""

    model_config = ConfigDict(frozen=True)

    spec: str
    kind: str
    location: str
    """Local files' common folder, or the hub snapshot folder."""
    files: tuple[str, ...]
    """Local files to read; empty for a hub dataset."""
    config: str | None = None
    split: str = "train"
    text_column: str = "text"
    fingerprint: str
    """Content hash of the files, or hub id, config, split and commit."""

    @property
    def display_name(self) -> str:
        """A short name for labels and Prefect artifact keys."""
        if self.kind == "builtin":
            return self.spec
        if self.kind == "hub":
            return self.spec.split("@")[0].split(":")[0].split("/")[-1]
        return Path(self.files[0]).stem if len(self.files) == 1 else Path(self.location).name


def resolve_corpus(spec: DatasetSpec, workspace: Workspace) -> CorpusSource:
    """Fetch (built-ins, hub) or locate (local files) a dataset and fingerprint it."""
    if spec.kind == "hub":
        folder, commit = hub_snapshot(spec.location, spec.revision, repo_type="dataset")
        return CorpusSource(
            spec=str(spec), kind="hub", location=str(folder), files=(), config=spec.config,
            split=spec.split, text_column=spec.text_column,
            fingerprint=f"hub:{spec.location}:{spec.config}@{commit}/{spec.split}",
        )
    if spec.kind == "builtin":
        files = [assets.builtin_corpus_file(spec.location, workspace.downloads)]
        column = "text"
    else:
        files = local_files(spec)
        column = spec.text_column
    root = Path(files[0]).parent if len(files) == 1 else Path(_common_folder(files))
    return CorpusSource(
        spec=str(spec), kind=spec.kind, location=str(root),
        files=tuple(str(f) for f in files), text_column=column,
        fingerprint=f"files:{_content_hash(files, root, workspace)}:{column}",
    )


def _content_hash(files: list[Path], root: Path, workspace: Workspace) -> str:
    """The files' content hash, remembered in the data folder by path, size and mtime."""
    return sha256_files([Path(f) for f in files], root=root,
                        store=workspace.root / "file-hashes.json")[:24]


def read_documents(source: CorpusSource, cache_dir: Path) -> list[str]:
    """The non-empty documents of a corpus, in its order (pre-training and unigram counts
    read them all)."""
    if source.kind == "hub":
        texts = [row.get(source.text_column) for row in _hub_rows(source, cache_dir)]
    else:
        files, index = _local(source)
        texts = read_documents_at(files, index, source.text_column, np.arange(len(index)))
    documents = [t for t in texts if isinstance(t, str) and t.strip()]
    if not documents:
        raise _no_text(source, f"{len(texts)} rows, all empty")
    return documents


def index_corpus(source: CorpusSource) -> DocumentIndex:
    """Where the documents of local files are (one byte-level pass); a hub dataset is
    streamed instead and has an empty index."""
    if source.kind == "hub":
        return index_documents([])
    return _local(source)[1]


def shuffled_corpus(source: CorpusSource, index: DocumentIndex, seed: int,
                    cache_dir: Path) -> Iterator[str]:
    """The non-empty documents in a seeded document-level shuffle, read lazily. Local
    files are shuffled exactly (over the index); a hub dataset is streamed and shuffled
    in a buffer of `HUB_SHUFFLE_BUFFER` documents, the most a stream allows."""
    if source.kind == "hub":
        texts = (row.get(source.text_column) for row in _hub_rows(source, cache_dir, seed))
        texts = (t for t in texts if isinstance(t, str) and t.strip())
    else:
        texts = shuffled_documents([Path(f) for f in source.files], index, source.text_column,
                                   seed)
    empty = True
    for text in texts:
        empty = False
        yield text
    if empty:
        raise _no_text(source, "all its records are empty")


def _no_text(source: CorpusSource, why: str) -> TokprobError:
    return TokprobError(f"The dataset {source.spec} holds no text in column "
                        f"{source.text_column!r} ({why}). Point --dataset at a corpus with "
                        "text.")


HUB_SHUFFLE_BUFFER = 10_000


def _local(source: CorpusSource) -> tuple[list[Path], DocumentIndex]:
    files = [Path(f) for f in source.files]
    if all(f.stat().st_size == 0 for f in files):
        raise TokprobError(f"The dataset {source.spec} is empty (its files have 0 bytes). "
                           "Point --dataset at files with text.")
    index = index_documents(files)
    if not len(index):
        raise TokprobError(f"The dataset {source.spec} holds no records. Point --dataset "
                           "at files with text.")
    return files, index


def _hub_rows(source: CorpusSource, cache_dir: Path, seed: int | None = None) -> Iterator[dict]:
    """The rows of a hub dataset, streamed (shuffled in a buffer when a seed is given)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        rows = datasets.load_dataset(source.location, source.config, split=source.split,
                                     cache_dir=str(cache_dir), streaming=True)
        if seed is not None:
            rows = rows.shuffle(seed=seed, buffer_size=HUB_SHUFFLE_BUFFER)
        for number, row in enumerate(rows):
            if number == 0 and source.text_column not in row:
                raise TokprobError(
                    f"The dataset {source.spec} has no column {source.text_column!r}; its "
                    f"columns are {', '.join(row) or 'none'}. Name the text column with "
                    "--text-column.")
            yield row
    except TokprobError:
        raise
    except Exception as error:  # datasets raises its own types for missing splits
        raise TokprobError(f"Cannot read the dataset {source.spec}: "
                           f"{type(error).__name__}: {error}") from None


def _common_folder(files: list[str | Path]) -> str:
    import os

    return os.path.commonpath([str(Path(f).parent) for f in files])
