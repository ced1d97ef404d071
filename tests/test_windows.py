"""Packing documents into fixed-length windows and the seeded detect/held-out split."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_tokenizer, tiny_corpus

from tokprob.errors import TokprobError
from tokprob.windows import DETECT, HELDOUT, Windows, build_windows, pack, split_windows


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_pack_concatenates_with_the_separator_and_drops_the_tail():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    tokens = pack(docs, window=4, separator=0)
    # stream 1 2 3 0 4 5 0 6 7 8 9 0 → three windows of 4, nothing left over
    assert tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]])
    # a window of 5 leaves a tail of 2 tokens, dropped
    np.testing.assert_array_equal(pack(docs, 5, 0), [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]])


def test_pack_without_a_separator():
    np.testing.assert_array_equal(pack([[1, 2], [3], [4, 5, 6]], 3, None), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(("docs", "window", "count"), [
    ([[1, 2], [3]], 6, "5"), ([], 2, "0"), ([[7] * 1000], 2000, "1,001"),
])
def test_pack_shorter_than_one_window_is_an_error(docs, window, count):
    with pytest.raises(TokprobError, match=rf"has {count} tokens, fewer than one window of "
                                           rf"{window}.*smaller --window"):
        pack(docs, window, separator=0)


def _tokens(n: int = 40, window: int = 3) -> np.ndarray:
    return np.arange(n * window, dtype=np.int32).reshape(n, window)


@pytest.mark.parametrize(("n", "fraction", "heldout"), [
    (40, 0.1, 4), (40, 0.25, 10), (7, 0.5, 3), (9, 0.0, 0), (3, 0.2, 0), (10, 0.99, 9),
])
def test_split_holds_out_the_floor_of_the_fraction(n, fraction, heldout):
    windows = split_windows(_tokens(n), fraction, seed=0)
    assert (windows.split == HELDOUT).sum() == heldout
    assert (windows.split == DETECT).sum() == n - heldout
    assert set(windows.split.tolist()) <= {DETECT, HELDOUT}


def test_split_is_deterministic_by_seed_and_seeds_differ():
    tokens = _tokens(50)
    a, b = split_windows(tokens, 0.2, seed=3), split_windows(tokens, 0.2, seed=3)
    np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_array_equal(a.order, b.order)
    others = [split_windows(tokens, 0.2, seed=s) for s in (4, 5)]
    for other in others:
        assert not np.array_equal(a.split, other.split)
    assert a.tokens is tokens  # the windows themselves are not moved


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_order_is_a_permutation_within_each_split(seed):
    windows = split_windows(_tokens(23), 0.3, seed=seed)
    for name in (DETECT, HELDOUT):
        ranks = np.sort(windows.order[windows.split == name])
        np.testing.assert_array_equal(ranks, np.arange(len(ranks)))
    # shuffled, not in window order
    detect = np.flatnonzero(windows.split == DETECT)
    assert not np.array_equal(np.argsort(windows.order[detect]), np.arange(len(detect)))


def test_take_follows_the_shuffled_order_in_whole_windows():
    window = 3
    windows = split_windows(_tokens(30, window), 0.2, seed=7)
    for name in (DETECT, HELDOUT):
        members = np.flatnonzero(windows.split == name)
        by_rank = {int(windows.order[i]): i for i in members}
        expected = windows.tokens[[by_rank[r] for r in range(len(members))]]
        np.testing.assert_array_equal(windows.take(name), expected)
        np.testing.assert_array_equal(windows.take(name, max_tokens=7), expected[:2])  # 7 // 3
        np.testing.assert_array_equal(windows.take(name, max_tokens=6), expected[:2])
        assert windows.take(name, max_tokens=2).shape == (0, window)
        np.testing.assert_array_equal(windows.take(name, max_tokens=10**9), expected)


def test_take_of_an_empty_split():
    windows = split_windows(_tokens(5), 0.0, seed=0)
    assert windows.take(HELDOUT).shape == (0, 3)


def test_arrow_round_trip_through_parquet(tmp_path):
    windows = split_windows(_tokens(17, 5), 0.3, seed=2)
    table = windows.to_arrow()
    assert table.column_names == ["window", "split", "order", "input_ids"]
    assert table.column("input_ids").type.list_size == 5
    pq.write_table(table, tmp_path / "w.parquet")
    back = Windows.from_arrow(pq.read_table(tmp_path / "w.parquet"))
    np.testing.assert_array_equal(back.tokens, windows.tokens)
    assert back.tokens.dtype == np.int32
    np.testing.assert_array_equal(back.split, windows.split)
    np.testing.assert_array_equal(back.order, windows.order)
    np.testing.assert_array_equal(back.take(DETECT, 11), windows.take(DETECT, 11))


def test_build_windows_with_a_real_tokenizer(tokenizer):
    documents = tiny_corpus(12)
    windows = build_windows(tokenizer, documents, window=16, heldout_fraction=0.25, seed=1,
                            vocab_size=320)
    # Reference: each document's ids, end-of-text after each, cut into windows of 16.
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream = []
    for doc in documents:
        stream += [*tokenizer.encode(doc, add_special_tokens=False), eos]
    n = len(stream) // 16
    np.testing.assert_array_equal(windows.tokens, np.array(stream[: n * 16]).reshape(n, 16))
    assert (windows.split == HELDOUT).sum() == n // 4
    assert tokenizer.decode(windows.tokens[0][:5].tolist()) in documents[0]


def test_build_windows_rejects_ids_beyond_the_model_vocabulary(tokenizer):
    documents = tiny_corpus(6)
    top = max(max(tokenizer.encode(d, add_special_tokens=False)) for d in documents)
    assert build_windows(tokenizer, documents, 8, 0.1, 0, vocab_size=top + 1) is not None
    with pytest.raises(TokprobError, match=rf"token id {top}, beyond the model's {top} output"):
        build_windows(tokenizer, documents, 8, 0.1, 0, vocab_size=top)


def test_build_windows_on_too_little_text(tokenizer):
    with pytest.raises(TokprobError, match="fewer than one window of 512"):
        build_windows(tokenizer, ["The cat sat."], 512, 0.1, 0, vocab_size=320)
