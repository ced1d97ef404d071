"""Reading documents lazily: the byte-level index, compressed files, the seeded
document-level shuffle, and windows that read only the documents their budgets need."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import build_tokenizer, tiny_corpus

from tokprob.corpora import index_corpus, read_documents, resolve_corpus, shuffled_corpus
from tokprob.documents import index_documents, read_documents_at, shuffled_documents
from tokprob.errors import TokprobError
from tokprob.specs import DatasetSpec
from tokprob.windows import DETECT, HELDOUT, TokenBudget, build_windows

DOCS = [f"Document {i}: " + "word " * (i % 7 + 1) for i in range(40)]


def _jsonl(docs) -> bytes:
    return "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def _write(folder, fmt: str, docs=DOCS):
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        (folder / "a.jsonl").write_bytes(_jsonl(docs))
    elif fmt == "jsonl.gz":
        (folder / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl(docs)))
    elif fmt == "jsonl.zst":
        (folder / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(docs)))
    elif fmt == "txt":
        for i, d in enumerate(docs):
            (folder / f"doc{i:03}.txt").write_text(d)
    elif fmt == "parquet":  # several row groups
        pq.write_table(pa.table({"text": docs}), folder / "c.parquet", row_group_size=7)
    return folder


FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "txt", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_lazy_readers_read_every_document_and_any_subset(tmp_path, workspace, fmt):
    source = resolve_corpus(DatasetSpec.parse(str(_write(tmp_path / "c", fmt))), workspace)
    assert read_documents(source, tmp_path / "hf") == DOCS
    files = [tmp_path / "c" / f for f in source.files]
    index = index_documents(files)
    assert len(index) == len(DOCS)
    wanted = np.array([33, 2, 17, 2, 39, 0])
    assert read_documents_at(files, index, "text", wanted) == [DOCS[i] for i in wanted]


def test_the_index_is_a_byte_scan_that_skips_blank_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "bc"}\n \r\n{"text": "d"}')  # no final newline
    index = index_documents([path])
    np.testing.assert_array_equal(index.start, [0, 15, 30, 33])
    np.testing.assert_array_equal(index.length, [13, 14, 2, 13])
    assert read_documents_at([path], index, "text", np.arange(4)) == ["a", "bc", None, "d"]


def test_a_broken_line_of_a_compressed_file_is_named(tmp_path, workspace):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "one"}\n{"text": two}\n'))
    source = resolve_corpus(DatasetSpec.parse(str(path)), workspace)
    with pytest.raises(Exception, match=r"line 2 of .*bad\.jsonl\.gz is not a JSON record"):
        read_documents(source, tmp_path / "hf")


def test_the_shuffle_is_deterministic_by_seed_and_seeds_differ(tmp_path):
    path = _write(tmp_path / "c", "jsonl") / "a.jsonl"
    index = index_documents([path])
    first = list(shuffled_documents([path], index, "text", seed=3))
    assert first == list(shuffled_documents([path], index, "text", seed=3))
    assert sorted(first) == sorted(DOCS) and first != DOCS
    for seed in (4, 5):
        assert list(shuffled_documents([path], index, "text", seed=seed)) != first


def test_a_hub_dataset_is_streamed_in_a_seeded_shuffle(tmp_path, workspace, monkeypatch):
    """The hub path: `streaming=True`, shuffled by seed in a buffer, the text column read."""
    import datasets

    calls = {}

    class Stream:
        def __init__(self, rows):
            self.rows = rows

        def shuffle(self, seed, buffer_size):
            calls["shuffle"] = (seed, buffer_size)
            return Stream(list(np.random.default_rng(seed).permutation(self.rows)))

        def __iter__(self):
            return iter(self.rows)

    def load_dataset(location, config, split, cache_dir, streaming):
        calls["streaming"] = streaming
        return Stream([{"body": d} for d in DOCS])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = resolve_corpus(DatasetSpec.parse(str(_write(tmp_path / "c", "jsonl"))), workspace)
    hub = source.model_copy(update={"kind": "hub", "files": (), "text_column": "body"})
    assert len(index_corpus(hub)) == 0
    taken = list(shuffled_corpus(hub, index_corpus(hub), 7, tmp_path / "hf"))
    assert calls == {"streaming": True, "shuffle": (7, 10_000)}
    assert sorted(taken) == sorted(DOCS) and taken != DOCS


def _counted(documents, seen):
    for document in documents:
        seen.append(document)
        yield document


def test_windows_read_only_the_documents_their_budgets_need():
    tokenizer = build_tokenizer()
    documents = tiny_corpus(2000)
    read: list[str] = []
    windows = build_windows(tokenizer, _counted(documents, read), window=16,
                            heldout_fraction=0.2, seed=0, vocab_size=320,
                            budget=TokenBudget(detect=160, heldout=64), batch=8)
    detect = windows.tokens[windows.split == DETECT]
    assert 10 <= len(detect) < 20 and (windows.split == HELDOUT).sum() >= 4
    assert len(read) < 200  # the rest of the 2,000 documents was never pulled
    everything = build_windows(tokenizer, documents, 16, 0.2, 0, 320)
    assert (everything.split == DETECT).sum() > 500
    # The budgeted windows are the start of the unbounded run's detecting stream.
    unbounded = everything.tokens[everything.split == DETECT]
    np.testing.assert_array_equal(detect, unbounded[:len(detect)])


def test_a_filled_split_takes_no_more_documents_and_splits_stay_disjoint():
    """Each document is one distinct token repeated: a window's tokens name its documents."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(400)} | {"<|endoftext|>": 400, "[UNK]": 401}
    core = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tagged = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    documents = [" ".join([f"w{i}"] * 5) for i in range(400)]
    windows = build_windows(tagged, documents, window=8, heldout_fraction=0.5, seed=1,
                            vocab_size=402, budget=TokenBudget(detect=16, heldout=80))
    seen = {name: set(np.unique(windows.tokens[windows.split == name])) - {400}
            for name in (DETECT, HELDOUT)}
    assert not seen[DETECT] & seen[HELDOUT]
    assert (windows.split == DETECT).sum() == 2 and (windows.split == HELDOUT).sum() >= 10
    # The detecting budget filled first; later documents all went to the held-out split.
    assert max(seen[HELDOUT]) > max(seen[DETECT])
    assert max(seen[HELDOUT]) < 64  # about (16 + 80) / 6 documents were used, not 400


def test_a_corpus_is_hashed_once_across_processes(tmp_path, workspace, monkeypatch):
    """The content hash is stored in the data folder: a new process (an emptied memo)
    does not read the file again while its size and mtime hold."""
    from tokprob import hashing

    folder = _write(tmp_path / "c", "jsonl")
    first = resolve_corpus(DatasetSpec.parse(str(folder)), workspace).fingerprint
    monkeypatch.setattr(hashing, "_file_memo", {})
    opened = []
    real_open = type(folder).open

    def counting_open(self, *args, **kwargs):
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(type(folder), "open", counting_open)
    assert resolve_corpus(DatasetSpec.parse(str(folder)), workspace).fingerprint == first
    assert "a.jsonl" not in opened
    (folder / "a.jsonl").write_bytes(_jsonl(DOCS[:3]))  # a change is hashed again
    assert resolve_corpus(DatasetSpec.parse(str(folder)), workspace).fingerprint != first
    assert "a.jsonl" in opened


def test_a_shuffled_corpus_without_text_is_an_error(tmp_path, workspace):
    folder = _write(tmp_path / "c", "txt", docs=["   \n", "\n\n"])
    source = resolve_corpus(DatasetSpec.parse(str(folder)), workspace)
    with pytest.raises(TokprobError, match=r"holds no text in column 'text'"):
        list(shuffled_corpus(source, index_corpus(source), 0, tmp_path / "hf"))
