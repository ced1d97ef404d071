"""Read a corpus: built-in, local files or a hub dataset, as a list of documents.

    source = resolve_corpus(DatasetSpec.parse("wiki-leads"), Workspace.from_env())
    documents = read_documents(source, workspace.hf_datasets_cache)
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tokprob import assets
from tokprob.errors import TokprobError
from tokprob.hashing import sha256_files
from tokprob.models import hub_snapshot
from tokprob.specs import DatasetSpec, file_format, local_files
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
        fingerprint=f"files:{sha256_files([Path(f) for f in files], root=root)[:24]}:{column}",
    )


def read_documents(source: CorpusSource, cache_dir: Path) -> list[str]:
    """The non-empty documents of a corpus, in its order."""
    import datasets

    datasets.disable_progress_bars()
    # Its own log line about a malformed file would precede the error tokprob raises.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if source.kind != "hub" and all(Path(f).stat().st_size == 0 for f in source.files):
        # datasets fails on an empty file with a bare StopIteration.
        raise TokprobError(f"The dataset {source.spec} is empty (its files have 0 bytes). "
                           "Point --dataset at files with text.")
    try:
        if source.kind == "hub":
            table = datasets.load_dataset(source.location, source.config, split=source.split,
                                          cache_dir=str(cache_dir))
        else:
            files = [Path(f) for f in source.files]
            loader = file_format(files[0])
            options = {"sample_by": "document"} if loader == "text" else {}
            table = datasets.load_dataset(loader, data_files=[str(f) for f in files],
                                          split="train", cache_dir=str(cache_dir), **options)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise TokprobError(f"Cannot read the dataset {source.spec}: "
                           f"{_why_unreadable(source, str(error))}") from None
    except Exception as error:  # datasets raises its own types for malformed files
        raise TokprobError(
            f"Cannot read the dataset {source.spec}: "
            f"{_why_unreadable(source, f'{type(error).__name__}: {error}')}"
        ) from None
    if source.text_column not in table.column_names:
        raise TokprobError(
            f"The dataset {source.spec} has no column {source.text_column!r}; its columns are "
            f"{', '.join(table.column_names) or 'none'}. Name the text column with "
            "--text-column."
        )
    documents = [t for t in table[source.text_column] if isinstance(t, str) and t.strip()]
    if not documents:
        raise TokprobError(
            f"The dataset {source.spec} holds no text in column {source.text_column!r} "
            f"({len(table)} rows, all empty). Point --dataset at a corpus with text."
        )
    return documents


def _why_unreadable(source: CorpusSource, fallback: str) -> str:
    """The file and line where a local corpus breaks its format, else datasets' words."""
    found = _first_bad_line([Path(f) for f in source.files]) if source.kind != "hub" else None
    return found or fallback


def _first_bad_line(files: list[Path]) -> str | None:
    """Where a local corpus first breaks its format, for the error message: the file and
    line of text that is not UTF-8, or of a JSON-lines record that is not JSON."""
    for path in files:
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[:error.start].count(b"\n") + 1
            byte = error.object[error.start]
            return (f"line {line} of {path} is not UTF-8 text (byte {byte:#04x}). Convert "
                    "the file to UTF-8 (iconv -f latin1 -t utf-8, say).")
        if file_format(path) != "json" or _is_json(text):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not _is_json(line):
                return (f"line {number} of {path} is not a JSON record ({line[:60]!r}); "
                        "a JSON-lines file holds one JSON object per line. Fix or delete "
                        "that line.")
    return None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _common_folder(files: list[str | Path]) -> str:
    import os

    return os.path.commonpath([str(Path(f).parent) for f in files])
