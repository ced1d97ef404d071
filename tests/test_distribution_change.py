"""The pruning metrics from a logit change against a float64 log-softmax computation."""

import numpy as np
import pytest
import torch

from tokprob.distribution_change import BLOCK_ROWS, Reference, Totals, accumulate

ROWS, VOCAB = 2 * BLOCK_ROWS + 5, 300  # blocks of BLOCK_ROWS and a shorter last one


def _direct(logits: torch.Tensor, change: torch.Tensor, targets: torch.Tensor) -> dict:
    """Every sum `accumulate` keeps, from float64 log-softmaxes of z and z + Δ."""
    z = logits.double()
    log_p = torch.log_softmax(z, -1)
    log_q = torch.log_softmax(z + change.double(), -1)
    p, q = log_p.exp(), log_q.exp()
    log_m = torch.log((p + q) / 2)
    has_next = targets >= 0
    return {
        "kl": float((p * (log_p - log_q)).sum()),
        "js": float(0.5 * (p * (log_p - log_m)).sum() + 0.5 * (q * (log_q - log_m)).sum()),
        "top1": float((log_q.argmax(-1) == log_p.argmax(-1)).sum()),
        "nll": -float(log_q[has_next].gather(1, targets[has_next].unsqueeze(1)).sum()),
        "alpha": q.sum(0).numpy(),
    }


def _case(scale: float, shift: float = 0.0, seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(ROWS, VOCAB, generator=rng)
    change = scale * torch.randn(ROWS, VOCAB, generator=rng) + shift
    targets = torch.randint(0, VOCAB, (ROWS,), generator=rng)
    targets[::4] = -1  # positions without a next token
    return logits, change, targets


def _accumulated(logits, change, targets) -> Totals:
    total = Totals()
    accumulate(total, Reference.of(logits, targets), change)
    return total


@pytest.mark.parametrize(("scale", "shift", "rel"), [
    (1e-3, 0.0, 1e-4),  # a small change: KL ~ 1e-6, far below the logits' rounding
    (1.0, 0.0, 1e-5),
    (1.0, -30.0, 1e-5),  # every logit falls: a shift softmax ignores
    (8.0, 0.0, 1e-5),  # most of the mass moves (Σ p e^Δ far from 1)
])
def test_sums_equal_a_float64_log_softmax_computation(scale, shift, rel):
    logits, change, targets = _case(scale, shift)
    total = _accumulated(logits, change, targets)
    expected = _direct(logits, change, targets)
    assert total.kl == pytest.approx(expected["kl"], rel=rel)
    assert total.js == pytest.approx(expected["js"], rel=rel)
    assert total.nll == pytest.approx(expected["nll"], rel=1e-6)
    assert total.top1 == expected["top1"]
    np.testing.assert_allclose(total.alpha.numpy(), expected["alpha"], rtol=1e-5, atol=1e-9)


def test_a_shift_shared_by_every_token_changes_nothing_but_rounding():
    logits, change, targets = _case(0.0, 12.5)
    total = _accumulated(logits, change, targets)
    assert abs(total.kl) < 1e-9 and abs(total.js) < 1e-9
    assert total.top1 == ROWS


def test_no_change_gives_exactly_zero_and_the_original_distribution():
    logits, change, targets = _case(0.0)
    reference = Reference.of(logits, targets)
    total = Totals()
    accumulate(total, reference, change)
    assert total.kl == 0.0 and total.js == 0.0
    assert total.top1 == ROWS
    assert total.nll == -float(reference.log_p_next.double().sum())
    assert torch.equal(total.alpha, reference.alpha_sum())


def test_a_change_that_overflows_expm1_is_computed_from_log_softmax():
    logits, change, targets = _case(1.0)
    change[3, 7] = 150.0  # e^150 overflows float32: that block falls back
    change[ROWS - 1, 0] = 120.0
    total = _accumulated(logits, change, targets)
    expected = _direct(logits, change, targets)
    assert np.isfinite([total.kl, total.js, total.nll]).all()
    assert total.kl == pytest.approx(expected["kl"], rel=1e-5)
    assert total.js == pytest.approx(expected["js"], rel=1e-5)
    assert total.nll == pytest.approx(expected["nll"], rel=1e-6)
    assert total.top1 == expected["top1"]
    np.testing.assert_allclose(total.alpha.numpy(), expected["alpha"], rtol=1e-5, atol=1e-9)


def test_chunks_add_up():
    logits, change, targets = _case(1.0)
    whole = _accumulated(logits, change, targets)
    split = Totals()
    for rows in (slice(0, 7), slice(7, ROWS)):
        accumulate(split, Reference.of(logits[rows], targets[rows]), change[rows])
    assert split.kl == pytest.approx(whole.kl, rel=1e-12)
    assert split.js == pytest.approx(whole.js, rel=1e-12)
    assert split.top1 == whole.top1
    torch.testing.assert_close(split.alpha, whole.alpha, rtol=1e-6, atol=0)


def test_top1_agreement_counts_the_original_token_still_among_the_most_probable():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    change = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.5, 0.0], [0.0, -1.0, 0.0]])
    total = _accumulated(logits, change, torch.tensor([0, 1, -1]))
    # Row 0 ties the original top with another token, row 1 passes it, row 2 keeps it.
    assert total.top1 == 2.0
