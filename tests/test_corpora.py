"""Reading corpora: local .txt/.json/.jsonl/.parquet files and hub datasets from the cache."""

from __future__ import annotations

import json
import os
import time

import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokprob.corpora import read_documents, resolve_corpus
from tokprob.errors import TokprobError
from tokprob.specs import DatasetSpec

DOCS = ["First document.\nIt has two lines.", "Second one.", "Third, the last."]


def _resolve(path, workspace, text_column="text"):
    return resolve_corpus(DatasetSpec.parse(str(path), text_column=text_column), workspace)


def _write(folder, fmt: str, column: str = "text", docs=DOCS):
    folder.mkdir(parents=True, exist_ok=True)
    records = [{column: d, "id": i} for i, d in enumerate(docs)]
    if fmt == "txt":
        for i, d in enumerate(docs):
            (folder / f"doc{i}.txt").write_text(d)
    elif fmt == "json":
        (folder / "corpus.json").write_text(json.dumps(records))
    elif fmt == "jsonl":
        half = len(records) // 2 or 1  # two files: the order of files is kept
        (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records[:half]))
        (folder / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records[half:]))
    elif fmt == "parquet":
        pq.write_table(pa.table({column: docs, "id": list(range(len(docs)))}),
                       folder / "corpus.parquet")
    return folder


@pytest.mark.parametrize(("fmt", "column"), [
    ("txt", "text"), ("json", "body"), ("jsonl", "content"), ("parquet", "passage"),
])
def test_local_corpora_read_one_document_per_record(tmp_path, workspace, fmt, column):
    folder = _write(tmp_path / "corpus", fmt, column)
    source = _resolve(folder, workspace, column if fmt != "txt" else "text")
    assert source.kind == "local"
    assert source.location == str(folder.resolve())
    assert all(os.path.isfile(f) for f in source.files)
    assert source.fingerprint.startswith("files:") and source.fingerprint.endswith(":" + column)
    documents = read_documents(source, tmp_path / "hf-cache")
    assert documents == DOCS  # multi-line .txt files stay whole documents


def test_empty_and_blank_records_are_skipped(tmp_path, workspace):
    folder = _write(tmp_path / "c", "jsonl", docs=["one", "", "   \n", "two"])
    assert read_documents(_resolve(folder, workspace), tmp_path / "hf") == ["one", "two"]


def test_fingerprint_follows_content_only(tmp_path, workspace):
    folder = _write(tmp_path / "c", "txt")
    first = _resolve(folder, workspace).fingerprint
    assert _resolve(folder, workspace).fingerprint == first
    os.utime(folder / "doc1.txt", (1, 1))  # a touch, not a change
    assert _resolve(folder, workspace).fingerprint == first
    (folder / "doc1.txt").write_text("Second one, edited.")
    edited = _resolve(folder, workspace).fingerprint
    assert edited != first
    (folder / "doc1.txt").write_text(DOCS[1])
    assert _resolve(folder, workspace).fingerprint == first
    (folder / "doc1.txt").rename(folder / "doc9.txt")  # names are content too
    assert _resolve(folder, workspace).fingerprint != first


def test_fingerprint_includes_the_text_column(tmp_path, workspace):
    folder = _write(tmp_path / "c", "jsonl")
    assert (_resolve(folder, workspace, "text").fingerprint
            != _resolve(folder, workspace, "id").fingerprint)


def test_a_changed_file_is_read_again(tmp_path, workspace):
    folder = _write(tmp_path / "c", "jsonl")
    cache = tmp_path / "hf"
    assert read_documents(_resolve(folder, workspace), cache) == DOCS
    (folder / "b.jsonl").write_text(json.dumps({"text": "Replaced.", "id": 9}))
    assert read_documents(_resolve(folder, workspace), cache) == [DOCS[0], "Replaced."]


def test_a_missing_text_column_lists_the_columns(tmp_path, workspace):
    folder = _write(tmp_path / "c", "parquet", column="body")
    with pytest.raises(TokprobError, match=r"no column 'text'; its columns are body, id\. "
                                           r"Name the text column with --text-column"):
        read_documents(_resolve(folder, workspace), tmp_path / "hf")


def test_all_empty_text_is_an_error(tmp_path, workspace):
    folder = _write(tmp_path / "c", "json", docs=["", "  ", "\n"])
    with pytest.raises(TokprobError, match=r"holds no text in column 'text' \(3 rows, all empty"):
        read_documents(_resolve(folder, workspace), tmp_path / "hf")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt"])
def test_an_empty_file_is_an_error(tmp_path, workspace, fmt):
    empty = tmp_path / f"empty.{fmt}"
    empty.touch()
    with pytest.raises(TokprobError, match=r"empty.*0 bytes"):
        read_documents(_resolve(empty, workspace), tmp_path / "hf")


def test_a_malformed_file_is_an_error(tmp_path, workspace):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "broken.json").write_text('[{"text": "unterminated')
    with pytest.raises(TokprobError, match=r"Cannot read the dataset .*broken\.json"):
        read_documents(_resolve(folder / "broken.json", workspace), tmp_path / "hf")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("bad.jsonl", b'{"text": "one"}\n{"text": "two"}\n{"text": three}\n',
      r"line 3 of .*bad\.jsonl is not a JSON record \('\{\"text\": three\}'\)"),
     ("latin1.txt", "First line.\nSecond line, caf\u00e9.\n".encode("latin-1"),
      r"line 2 of .*latin1\.txt is not UTF-8 text \(byte 0xe9\)")],
)
def test_a_broken_line_is_named_by_file_and_line(tmp_path, workspace, capfd, name, content,
                                                 message):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / name).write_bytes(content)
    with pytest.raises(TokprobError, match=message):
        read_documents(_resolve(folder / name, workspace), tmp_path / "hf")
    assert "Failed to" not in capfd.readouterr().err  # datasets' own line stays quiet


# ---------------------------------------------------------------- hub datasets

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding one dataset snapshot, as a download leaves it.

    huggingface_hub reads HF_HUB_CACHE into `constants` at import and snapshot_download
    looks the constant up at call time, so the constant is what has to change.
    """
    cache = tmp_path / "hub"
    repo = cache / "datasets--someorg--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    data = repo / "snapshots" / COMMIT / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in DOCS))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_cached_hub_dataset_resolves_to_its_snapshot(hub_cache, workspace, tmp_path):
    spec = DatasetSpec.parse("someorg/tiny", split="train", text_column="body")
    source = resolve_corpus(spec, workspace)
    snapshot = hub_cache / "datasets--someorg--tiny" / "snapshots" / COMMIT
    assert source.kind == "hub" and source.files == ()
    assert source.location == str(snapshot)
    assert COMMIT in source.fingerprint and "someorg/tiny" in source.fingerprint
    assert source.fingerprint.endswith("/train")
    assert read_documents(source, tmp_path / "hf") == DOCS


def test_hub_revisions_and_splits_make_distinct_fingerprints(hub_cache, workspace):
    main = resolve_corpus(DatasetSpec.parse("someorg/tiny@main"), workspace)
    by_commit = resolve_corpus(DatasetSpec.parse(f"someorg/tiny@{COMMIT}"), workspace)
    assert main.fingerprint == by_commit.fingerprint
    other_split = resolve_corpus(DatasetSpec.parse("someorg/tiny", split="test"), workspace)
    assert other_split.fingerprint != main.fingerprint


def test_a_hub_split_that_is_not_there_is_an_error(hub_cache, workspace, tmp_path):
    source = resolve_corpus(DatasetSpec.parse("someorg/tiny", split="validation",
                                              text_column="body"), workspace)
    with pytest.raises(TokprobError, match=r"Cannot read the dataset someorg/tiny.*validation"):
        read_documents(source, tmp_path / "hf")


def test_an_uncached_hub_dataset_is_an_error_without_waiting(hub_cache, workspace):
    """The hub is unreachable here: the cache miss must end in an error, quickly."""
    started = time.monotonic()
    with pytest.raises(TokprobError, match=r"Cannot get the dataset 'someorg/absent'.*"
                                           r"not in the local Hugging Face cache"):
        resolve_corpus(DatasetSpec.parse("someorg/absent"), workspace)
    assert time.monotonic() - started < 20


def test_an_uncached_hub_dataset_in_offline_mode_is_an_error(hub_cache, workspace, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TokprobError, match=r"'someorg/absent' at revision 'v2': it is not in "
                                           r"the local Hugging Face cache"):
        resolve_corpus(DatasetSpec.parse("someorg/absent@v2"), workspace)
