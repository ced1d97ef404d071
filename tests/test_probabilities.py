"""α (paper §2.1) and held-out hidden states against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, VOCAB_ROWS

from tokprob import probabilities as probabilities_module
from tokprob.errors import TokprobError
from tokprob.head import OutputHead, head_logits, output_head
from tokprob.hidden import read_hidden_states, write_hidden_states
from tokprob.models import load_model
from tokprob.probabilities import averaged_probabilities, shard_bounds
from tokprob.progress import Progress


def _windows(n=5, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, 300, size=(n, length), dtype=np.int32)


def _reference_alpha(model, windows):
    """Full softmax in float64 over every position, averaged: the definition."""
    with torch.inference_mode():
        logits = model(input_ids=torch.as_tensor(windows, dtype=torch.long)).logits.double()
    probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    targets = torch.as_tensor(windows[:, 1:], dtype=torch.long)
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.unsqueeze(-1)).sum()
    return probs.mean(0).numpy(), float(nll)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_alpha_equals_the_averaged_softmax(tiny_models, architecture):
    model = load_model(tiny_models[architecture])
    windows = _windows()
    result = averaged_probabilities(model, output_head(model), windows, batch_size=2)
    expected, nll = _reference_alpha(model, windows)
    assert result.alpha.dtype == np.float64
    np.testing.assert_allclose(result.alpha, expected, rtol=1e-5, atol=1e-12)
    assert result.alpha.sum() == pytest.approx(1.0, abs=1e-6)
    assert result.n_positions == windows.size
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.n_predictions == windows.shape[0] * (windows.shape[1] - 1)


@pytest.mark.parametrize(("offset", "unshifted"), [(-200.0, False), (30.0, True),
                                                    (500.0, False)])
def test_alpha_is_exact_whether_or_not_the_softmax_is_shifted(tiny_models, monkeypatch,
                                                              offset, unshifted):
    # A constant bias moves every logit but no probability. Row maxima far below 0
    # underflow and far above 60 overflow unless the max is subtracted; in between the
    # shift is skipped.
    model = load_model(tiny_models["gpt2"])
    plain = output_head(model)
    offset_head = OutputHead(weight=plain.weight, tied=False,
                             bias=torch.full((plain.vocab_size,), offset))
    decisions = []
    decide = probabilities_module._exp_is_safe_unshifted
    monkeypatch.setattr(probabilities_module, "_exp_is_safe_unshifted",
                        lambda top: decisions.append(decide(top)) or decisions[-1])
    windows = _windows()
    result = averaged_probabilities(model, offset_head, windows, batch_size=2)
    expected, nll = _reference_alpha(model, windows)
    assert set(decisions) == {unshifted}
    np.testing.assert_allclose(result.alpha, expected, rtol=1e-5, atol=1e-12)
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)


def test_counts_are_next_tokens_within_windows(tiny_models):
    model = load_model(tiny_models["gpt2"])
    windows = _windows(n=3, length=10)
    result = averaged_probabilities(model, output_head(model), windows, batch_size=3)
    expected = np.bincount(windows[:, 1:].ravel(), minlength=VOCAB_ROWS)
    np.testing.assert_array_equal(result.counts, expected)
    assert result.counts.sum() == 3 * 9


def test_batching_and_logit_chunking_do_not_change_alpha(tiny_models, monkeypatch):
    model = load_model(tiny_models["llama"])
    head = output_head(model)
    windows = _windows(n=7)
    whole = averaged_probabilities(model, head, windows, batch_size=7)
    # Force chunks of 3 rows of logits: exercises the memory bound for big vocabularies.
    monkeypatch.setattr(probabilities_module, "MAX_LOGIT_ELEMENTS", 3 * VOCAB_ROWS)
    chunked = averaged_probabilities(model, head, windows, batch_size=2)
    np.testing.assert_allclose(chunked.alpha, whole.alpha, rtol=1e-6, atol=1e-12)
    assert chunked.nll_sum == pytest.approx(whole.nll_sum, rel=1e-6)


def test_bfloat16_model_gives_close_alpha(tiny_models):
    windows = _windows()
    full = load_model(tiny_models["llama"])
    half = load_model(tiny_models["llama"], dtype="bfloat16")
    reference = averaged_probabilities(full, output_head(full), windows, 4).alpha
    approximate = averaged_probabilities(half, output_head(half), windows, 4).alpha
    assert approximate.dtype == np.float64
    np.testing.assert_allclose(approximate, reference, rtol=0.05)


def test_nan_logits_are_an_error(tiny_models):
    model = load_model(tiny_models["gpt_neox"])
    with torch.no_grad():
        model.get_output_embeddings().weight[3, 0] = float("nan")
    with pytest.raises(TokprobError, match="NaN"):
        averaged_probabilities(model, output_head(model), _windows(), 2)


def test_progress_counts_every_token(tiny_models):
    model = load_model(tiny_models["gpt2"])
    windows = _windows(n=4, length=8)
    progress = Progress(windows.size, "test", log_every=0.0)
    averaged_probabilities(model, output_head(model), windows, 3, progress)
    assert progress.done == windows.size


@pytest.mark.parametrize("architecture", ["gpt2", "phi"])
def test_stored_hidden_states_rebuild_the_logits(tiny_models, tmp_path, architecture):
    model = load_model(tiny_models[architecture])
    head = output_head(model)
    windows = _windows(n=3, length=12)
    path = tmp_path / "hidden.parquet"
    assert write_hidden_states(model, windows, batch_size=2, path=path) == windows.size
    stored = read_hidden_states(path)
    assert stored.hidden.shape == (windows.size, 32)
    expected_targets = np.concatenate([windows[:, 1:], np.full((3, 1), -1)], axis=1).ravel()
    np.testing.assert_array_equal(stored.targets, expected_targets)
    with torch.inference_mode():
        expected = model(input_ids=torch.as_tensor(windows, dtype=torch.long)).logits
    rebuilt = head_logits(torch.from_numpy(stored.hidden), head)
    torch.testing.assert_close(rebuilt, expected.reshape(-1, VOCAB_ROWS), rtol=1e-5, atol=1e-5)


def test_prefix_snapshots_equal_alpha_of_the_first_windows(tiny_models):
    from tokprob.probabilities import prefix_grid

    model = load_model(tiny_models["gpt_neox"])
    head = output_head(model)
    windows = _windows(n=11, length=8)
    assert prefix_grid(11) == [1, 2, 4, 8]
    result = averaged_probabilities(model, head, windows, batch_size=3, prefixes=[1, 2, 4, 8])
    assert sorted(result.prefixes) == [1, 2, 4, 8]
    for n, alpha in result.prefixes.items():
        alone = averaged_probabilities(model, head, windows[:n], batch_size=5).alpha
        np.testing.assert_allclose(alpha, alone, rtol=1e-6, atol=1e-12)
    whole = averaged_probabilities(model, head, windows, batch_size=3).alpha
    np.testing.assert_allclose(result.alpha, whole, rtol=1e-6, atol=1e-12)


def test_alpha_resumed_from_any_checkpoint_equals_an_uninterrupted_run(tiny_models, tmp_path):
    from tokprob.probabilities import Checkpoints, load_partial_sums, save_partial_sums

    model = load_model(tiny_models["phi"])
    head = output_head(model)
    windows = _windows(n=11, length=8)
    prefixes = [1, 2, 4, 8]
    whole = averaged_probabilities(model, head, windows, 3, prefixes=prefixes)
    saved = []
    averaged_probabilities(model, head, windows, 3, prefixes=prefixes,
                           checkpoints=Checkpoints(save=saved.append, every_seconds=0))
    assert [sums.n_windows for sums in saved] == [1, 2, 3, 4, 6, 8, 9]
    for sums in saved:
        path = tmp_path / f"at-{sums.n_windows}.npz"
        save_partial_sums(path, sums, owner="key-a")
        resume = load_partial_sums(path, "key-a", windows, VOCAB_ROWS)
        assert resume is not None and resume.n_windows == sums.n_windows
        resumed = averaged_probabilities(
            model, head, windows, 3, prefixes=prefixes,
            checkpoints=Checkpoints(save=lambda _: None, resume=resume))
        np.testing.assert_allclose(resumed.alpha, whole.alpha, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(resumed.counts, whole.counts)
        assert resumed.nll_sum == pytest.approx(whole.nll_sum, rel=1e-12)
        assert sorted(resumed.prefixes) == prefixes
        for n in prefixes:
            np.testing.assert_allclose(resumed.prefixes[n], whole.prefixes[n], rtol=0,
                                       atol=1e-12)


def test_checkpoint_saved_every_interval_of_work(tiny_models):
    from tokprob.probabilities import Checkpoints

    readings = iter(range(0, 1000, 10))  # each reading of the clock 10 s later
    model = load_model(tiny_models["gpt2"])
    saved = []
    averaged_probabilities(model, output_head(model), _windows(n=10, length=8), 1,
                           checkpoints=Checkpoints(save=saved.append, every_seconds=25,
                                                   clock=lambda: next(readings)))
    assert [sums.n_windows for sums in saved] == [3, 6, 9]


def test_checkpoint_of_other_inputs_or_damaged_is_never_used(tiny_models, tmp_path):
    from tokprob.probabilities import Checkpoints, load_partial_sums, save_partial_sums

    model = load_model(tiny_models["gpt2"])
    windows = _windows(n=6, length=8)
    saved = []
    averaged_probabilities(model, output_head(model), windows, 2,
                           checkpoints=Checkpoints(save=saved.append, every_seconds=0))
    path = tmp_path / "sums.npz"
    save_partial_sums(path, saved[0], owner="key-a")
    assert load_partial_sums(path, "key-a", windows, VOCAB_ROWS) is not None
    assert load_partial_sums(path, "key-b", windows, VOCAB_ROWS) is None
    assert load_partial_sums(path, "key-a", windows[:, :4], VOCAB_ROWS) is None
    assert load_partial_sums(path, "key-a", windows[:2], VOCAB_ROWS) is None
    assert load_partial_sums(tmp_path / "none.npz", "key-a", windows, VOCAB_ROWS) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert load_partial_sums(path, "key-a", windows, VOCAB_ROWS) is None
    path.write_bytes(bytes(data[: len(data) // 3]))
    assert load_partial_sums(path, "key-a", windows, VOCAB_ROWS) is None


def test_shards_are_whole_batches_covering_every_window():
    assert shard_bounds(23, 3, 4) == [(0, 8), (8, 16), (16, 23)]
    assert shard_bounds(5, 4, 4) == [(0, 4), (4, 5)]  # fewer batches than shards
    for n_windows, shards, batch_size in ((100, 7, 3), (1, 3, 8), (64, 4, 16), (65, 4, 16)):
        bounds = shard_bounds(n_windows, shards, batch_size)
        covered = [w for start, stop in bounds for w in range(start, stop)]
        assert covered == list(range(n_windows))
        assert all(start % batch_size == 0 for start, _ in bounds)
        batches = [-(-(stop - start) // batch_size) for start, stop in bounds]
        assert len(bounds) <= shards and max(batches) - min(batches) <= 1
