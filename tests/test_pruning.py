"""Pruning (paper §4): deletion orders, and metrics from cached hidden states against a
full forward pass of each pruned model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tokprob.errors import TokprobError
from tokprob.models import final_hidden_states, load_model, output_head, untie_output_embeddings
from tokprob.pruning import (
    check_fractions,
    deleted_count,
    deletion_plans,
    greedy_agreement,
    headline_fraction,
    prune_columns,
    saliency_scores,
    sweep,
)


def test_deletion_orders_are_least_salient_first_and_nested():
    saliency = np.array([5.0, 0.1, 3.0, 0.2, 9.0])
    norms = np.array([1.0, 2.0, 0.5, 4.0, 3.0])
    plans = deletion_plans(saliency, norms, seeds=(0, 1))
    assert [p.method for p in plans] == ["saliency", "norm", "random", "random"]
    np.testing.assert_array_equal(plans[0].deleted(0.4), [1, 3])
    np.testing.assert_array_equal(plans[1].deleted(0.4), [2, 0])
    assert set(plans[2].deleted(0.2)) <= set(plans[2].deleted(0.6))
    assert not np.array_equal(plans[2].order, plans[3].order)
    assert deleted_count(10, 0.3) == 3  # not 2 through binary rounding
    assert deleted_count(576, 0.9) == 518


def test_saliency_kinds():
    table = pd.DataFrame({"slope": [2.0, -1.0, 0.0], "t": [-4.0, 3.0, np.nan]})
    np.testing.assert_array_equal(saliency_scores(table, np.ones(3), "t"), [4.0, 3.0, 0.0])
    np.testing.assert_array_equal(saliency_scores(table, np.array([1.0, 5.0, 1.0]),
                                                  "slope-std"), [2.0, 5.0, 0.0])
    with pytest.raises(TokprobError, match="--saliency"):
        saliency_scores(table, np.ones(3), "l2")


@pytest.mark.parametrize("fractions", [(), (1.0,), (-0.1,), (0.5, float("nan"))])
def test_bad_fractions(fractions):
    with pytest.raises(TokprobError, match="fraction"):
        check_fractions(fractions)


@pytest.mark.parametrize("architecture", ["gpt2", "phi"])
def test_metrics_from_hidden_states_equal_the_pruned_models_forward(tiny_models, architecture):
    model = load_model(tiny_models[architecture])
    untie_output_embeddings(model)
    head = output_head(model)
    weight = head.weight.numpy().copy()
    bias = None if head.bias is None else head.bias.numpy()
    windows = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        hidden = final_hidden_states(model, windows).reshape(-1, 32).numpy()
        original = torch.log_softmax(model(input_ids=windows).logits.double(), -1)
    targets = torch.cat([windows[:, 1:], torch.full((3, 1), -1)], dim=1).reshape(-1)
    rng = np.random.default_rng(0)
    plans = deletion_plans(rng.random(32), np.linalg.norm(weight, axis=0), seeds=(4,))
    fractions = (0.0, 0.25, 0.5, 0.9)
    table = sweep(hidden, targets.numpy(), weight, bias, plans, fractions, rows_per_chunk=10)
    assert len(table) == len(plans) * len(fractions)

    log_p = original.reshape(-1, original.shape[-1])
    p = log_p.exp()
    has_next = targets >= 0
    for plan in plans:
        for fraction in fractions:
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(prune_columns(weight, plan.deleted(fraction))))
                log_q = torch.log_softmax(model(input_ids=windows).logits.double(), -1)
            log_q = log_q.reshape(-1, log_q.shape[-1])
            q = log_q.exp()
            m = (p + q) / 2
            row = table[(table["method"] == plan.method) & (table["seed"] == plan.seed)
                        & (table["fraction"] == fraction)].iloc[0]
            expected = {
                "kl": float((p * (log_p - log_q)).sum(-1).mean()),
                "js": float((0.5 * (p * (log_p - m.log())).sum(-1)
                             + 0.5 * (q * (log_q - m.log())).sum(-1)).mean()),
                "top1_agreement": float((p.argmax(-1) == q.argmax(-1)).double().mean()),
                "perplexity": float(torch.exp(-log_q[has_next].gather(
                    1, targets[has_next].unsqueeze(1)).mean())),
            }
            alpha, alpha_pruned = p.mean(0), q.mean(0)
            mid = (alpha + alpha_pruned) / 2
            expected["alpha_kl"] = float((alpha * (alpha / alpha_pruned).log()).sum())
            expected["alpha_js"] = float(0.5 * (alpha * (alpha / mid).log()).sum()
                                         + 0.5 * (alpha_pruned * (alpha_pruned / mid).log()).sum())
            for name, value in expected.items():
                assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-7), (plan.method,
                                                                              fraction, name)
            assert row["dims_deleted"] == deleted_count(32, fraction)
    assert (table[table["fraction"] == 0.0][["kl", "js", "alpha_js"]] < 1e-9).all().all()


def test_headline_is_the_last_fraction_below_the_threshold():
    metrics = pd.DataFrame({
        "method": "saliency", "split": "id",
        "fraction": [0.0, 0.1, 0.2, 0.3, 0.4],
        "alpha_js": [0.0, 1e-4, 5e-4, 2e-3, 4e-4],  # 0.4 is below again: not counted
    })
    assert headline_fraction(metrics, "saliency", "id", 1e-3) == 0.2
    assert headline_fraction(metrics, "saliency", "id", 1e-2) == 0.4
    random = pd.DataFrame({"method": "random", "split": "id", "fraction": [0.0, 0.1, 0.1],
                           "alpha_js": [0.0, 5e-4, 3e-3]})  # mean over seeds: 1.75e-3
    assert headline_fraction(random, "random", "id", 1e-3) == 0.0


def test_greedy_agreement():
    original = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    pruned = np.array([[1, 2, 9, 4], [5, 6, 7, 8]])
    match, first = greedy_agreement(original, pruned)
    assert match == pytest.approx(7 / 8)
    assert first == pytest.approx((2 + 4) / 2)
