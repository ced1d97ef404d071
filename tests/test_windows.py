"""Packing documents into fixed-length windows and the seeded detect/held-out split."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_tokenizer, tiny_corpus

from tokprob.errors import TokprobError
from tokprob.windows import (
    DETECT,
    HELDOUT,
    TokenBudget,
    Windows,
    build_windows,
    document_separator,
    leading_bos,
    next_tokens,
    pack,
    split_windows,
    takes_heldout,
)


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


def _tokens(n: int = 40, window: int = 3, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n * window, dtype=np.int32).reshape(n, window)


def _split(detect: int, heldout: int, seed: int = 0, window: int = 3) -> Windows:
    return split_windows(_tokens(detect, window), _tokens(heldout, window, 10_000), seed)


def test_pack_with_bos_starts_every_window_with_it():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    # stream 1 2 3 0 4 5 0 6 7 8 9 0 → windows of BOS + 3 stream tokens
    np.testing.assert_array_equal(pack(docs, 4, separator=0, bos=99),
                                  [[99, 1, 2, 3], [99, 0, 4, 5], [99, 0, 6, 7], [99, 8, 9, 0]])


def _heldout(lengths, fraction):
    """The greedy assignment of documents of these lengths, in this order."""
    tokens = {False: 0, True: 0}
    chosen = []
    for length in lengths:
        out = takes_heldout(tokens[False], tokens[True], length, fraction)
        tokens[out] += length
        chosen.append(out)
    return np.array(chosen)


@pytest.mark.parametrize(("lengths", "fraction", "expected"), [
    ([10] * 40, 0.1, 40), ([10] * 40, 0.25, 100), ([10] * 9, 0.0, 0), ([100] * 4, 0.1, 0),
    ([100] * 10, 0.3, 300),
])
def test_heldout_documents_come_closest_to_the_fraction_of_tokens(lengths, fraction, expected):
    """At every prefix of the shuffled documents the held-out share is within half a
    document of the fraction."""
    heldout = _heldout(lengths, fraction)
    assert int(np.asarray(lengths)[heldout].sum()) == expected
    for end in range(1, len(lengths) + 1):
        reached = np.asarray(lengths[:end])
        assert abs(reached[heldout[:end]].sum() - fraction * reached.sum()) <= max(reached) / 2


def test_split_keeps_each_split_whole_and_is_deterministic_by_seed():
    a, b = _split(40, 10, seed=3), _split(40, 10, seed=3)
    np.testing.assert_array_equal(a.order, b.order)
    assert (a.split == DETECT).sum() == 40 and (a.split == HELDOUT).sum() == 10
    np.testing.assert_array_equal(np.sort(a.take(HELDOUT), axis=0), _tokens(10, 3, 10_000))
    for seed in (4, 5):
        assert not np.array_equal(a.order, _split(40, 10, seed=seed).order)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_order_is_a_permutation_within_each_split(seed):
    windows = _split(16, 7, seed=seed)
    for name in (DETECT, HELDOUT):
        ranks = np.sort(windows.order[windows.split == name])
        np.testing.assert_array_equal(ranks, np.arange(len(ranks)))
    # shuffled, not in window order
    detect = np.flatnonzero(windows.split == DETECT)
    assert not np.array_equal(np.argsort(windows.order[detect]), np.arange(len(detect)))


def test_take_follows_the_shuffled_order_in_whole_windows():
    window = 3
    windows = _split(24, 6, seed=7, window=window)
    for name in (DETECT, HELDOUT):
        members = np.flatnonzero(windows.split == name)
        by_rank = {int(windows.order[i]): i for i in members}
        expected = windows.tokens[[by_rank[r] for r in range(len(members))]]
        np.testing.assert_array_equal(windows.take(name), expected)
        np.testing.assert_array_equal(windows.take(name, max_tokens=7), expected[:2])  # 7 // 3
        np.testing.assert_array_equal(windows.take(name, max_tokens=6), expected[:2])
        assert windows.take(name, max_tokens=2).shape == (0, window)
        np.testing.assert_array_equal(windows.take(name, max_tokens=10**9), expected)


def test_next_tokens_shift_each_window_and_leave_its_last_position_without_target():
    windows = np.array([[5, 6, 7], [8, 9, 10]], dtype=np.int32)
    targets = next_tokens(windows)
    assert targets.dtype == np.int64  # token ids beyond int32 stay exact
    np.testing.assert_array_equal(targets, [[6, 7, -1], [9, 10, -1]])
    assert next_tokens(windows[:0]).shape == (0, 3)


def test_take_of_an_empty_split():
    windows = _split(5, 0)
    assert windows.take(HELDOUT).shape == (0, 3)


def test_arrow_round_trip_through_parquet(tmp_path):
    windows = _split(12, 5, seed=2, window=5)
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


def _stream(tokenizer, documents, separator) -> list[int]:
    """The packing reference: each document's ids, the separator after each."""
    stream = []
    for doc in documents:
        stream += [*tokenizer.encode(doc, add_special_tokens=False), separator]
    return stream


def test_build_windows_with_a_real_tokenizer(tokenizer):
    documents = tiny_corpus(12)
    windows = build_windows(tokenizer, documents, window=16, heldout_fraction=0.25, seed=1,
                            vocab_size=320)
    heldout = _heldout([len(tokenizer.encode(d)) + 1 for d in documents], 0.25)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for name, chosen in ((DETECT, ~heldout), (HELDOUT, heldout)):
        stream = _stream(tokenizer, [documents[i] for i in np.flatnonzero(chosen)], eos)
        n = len(stream) // 16
        expected = np.array(stream[: n * 16]).reshape(n, 16)
        np.testing.assert_array_equal(windows.tokens[windows.split == name], expected)
    assert 0.15 < (windows.split == HELDOUT).mean() < 0.35
    assert tokenizer.decode(windows.tokens[0][:5].tolist()) in documents[0]


def test_the_detecting_digest_ignores_how_far_the_held_out_split_reaches(tokenizer):
    documents = tiny_corpus(200)
    build = functools.partial(build_windows, tokenizer, documents, 16, 0.2, 0, 320)
    # The detecting split fills first: more held-out tokens only read on for that split.
    small = build(budget=TokenBudget(detect=256, heldout=96))
    large = build(budget=TokenBudget(detect=256, heldout=256))
    assert (large.split == HELDOUT).sum() > (small.split == HELDOUT).sum()
    assert small.digest(DETECT) == large.digest(DETECT)
    assert small.digest(HELDOUT) != large.digest(HELDOUT)
    np.testing.assert_array_equal(small.take(DETECT), large.take(DETECT))
    # Other detecting windows, another digest: a seed, or a budget that takes more.
    assert build_windows(tokenizer, documents, 16, 0.2, 1, 320, TokenBudget(
        detect=256, heldout=96)).digest(DETECT) != small.digest(DETECT)
    assert build(budget=TokenBudget(detect=640, heldout=96)).digest(DETECT) != small.digest(
        DETECT)


def _bos_tokenizer():
    """The tiny tokenizer made to put `<s>` before text, as Llama's and Gemma's do."""
    from tokenizers import processors

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)])
    return tokenizer


def test_a_bos_adding_tokenizer_gets_bos_at_the_start_of_every_window(tokenizer):
    bos_tokenizer = _bos_tokenizer()
    bos = bos_tokenizer.bos_token_id
    assert leading_bos(bos_tokenizer) == bos and leading_bos(tokenizer) is None
    documents = tiny_corpus(30)
    windows = build_windows(bos_tokenizer, documents, window=16, heldout_fraction=0.2, seed=0,
                            vocab_size=320)
    np.testing.assert_array_equal(windows.tokens[:, 0], bos)
    assert not (windows.tokens[:, 1:] == bos).any()  # never a target
    # The rest of each split is its documents' stream, 15 tokens per window.
    eos = bos_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    heldout = _heldout([len(tokenizer.encode(d)) + 1 for d in documents], 0.2)
    stream = _stream(tokenizer, [documents[i] for i in np.flatnonzero(~heldout)], eos)
    n = len(stream) // 15
    np.testing.assert_array_equal(windows.tokens[windows.split == DETECT][:, 1:],
                                  np.array(stream[: n * 15]).reshape(n, 15))


def test_a_chat_tokenizer_joins_documents_with_the_plain_end_of_text(tokenizer):
    chat = build_tokenizer()
    chat.add_special_tokens({"eos_token": "<|im_end|>"})
    end_of_text = chat.convert_tokens_to_ids("<|endoftext|>")
    assert chat.eos_token_id != end_of_text
    assert document_separator(chat) == end_of_text
    assert document_separator(tokenizer) == tokenizer.eos_token_id
    windows = build_windows(chat, tiny_corpus(12), 16, 0.0, 0, vocab_size=320)
    assert not (windows.tokens == chat.eos_token_id).any()
    expected = _stream(tokenizer, tiny_corpus(12), end_of_text)
    np.testing.assert_array_equal(windows.tokens[0], expected[:16])


def test_a_chat_eos_stays_where_the_vocabulary_has_no_plain_end_of_text():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"a": 0, "<|im_end|>": 1, "[UNK]": 2}, unk_token="[UNK]"))
    chat = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")
    assert document_separator(chat) == 1


def test_a_single_document_is_all_detecting(tokenizer):
    """Whole documents only: one document cannot be split, so nothing is held out."""
    windows = build_windows(tokenizer, [" ".join(tiny_corpus(20))], 16, 0.1, 0, 320)
    assert (windows.split == DETECT).all() and len(windows.tokens) > 10


def test_no_document_feeds_both_splits():
    """Each document is one distinct token repeated: a window's tokens name its documents."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(200)} | {"<|endoftext|>": 200, "[UNK]": 201}
    core = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tagged = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    rng = np.random.default_rng(0)
    documents = [" ".join([f"w{i}"] * int(rng.integers(3, 40))) for i in range(200)]
    windows = build_windows(tagged, documents, window=8, heldout_fraction=0.1, seed=5,
                            vocab_size=202)
    seen = {name: set(np.unique(windows.tokens[windows.split == name])) - {200}
            for name in (DETECT, HELDOUT)}
    assert seen[DETECT] and seen[HELDOUT]
    assert not seen[DETECT] & seen[HELDOUT]
    assert 0.07 < (windows.split == HELDOUT).mean() < 0.13


def test_build_windows_rejects_ids_beyond_the_model_vocabulary(tokenizer):
    documents = tiny_corpus(6)
    top = max(max(tokenizer.encode(d, add_special_tokens=False)) for d in documents)
    assert build_windows(tokenizer, documents, 8, 0.1, 0, vocab_size=top + 1) is not None
    with pytest.raises(TokprobError, match=rf"token id {top}, beyond the model's {top} output"):
        build_windows(tokenizer, documents, 8, 0.1, 0, vocab_size=top)


def test_build_windows_on_too_little_text(tokenizer):
    with pytest.raises(TokprobError, match="fewer than one window of 512"):
        build_windows(tokenizer, ["The cat sat."], 512, 0.1, 0, vocab_size=320)
