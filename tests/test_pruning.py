"""Pruning (paper §4): deletion orders, and metrics from cached hidden states against a
full forward pass of each pruned model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import entropy

from tokprob.errors import TokprobError
from tokprob.head import final_hidden_states, output_head, untie_output_embeddings
from tokprob.models import load_model
from tokprob.pruning import (
    METHODS,
    SPLITS,
    check_fractions,
    column_std,
    compensated_greedy_order,
    compensated_weight,
    compensation,
    deleted_count,
    deletion_plans,
    embedding_metric,
    headline_fraction,
    headline_fractions,
    main_metrics,
    metrics_table,
    one_random_seed,
    saliency_scores,
    second_moment,
    sweep,
)
from tokprob.regression import fit_ols


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
    calibration = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        detect = final_hidden_states(model, calibration).reshape(-1, 32).numpy()
    plans = deletion_plans(rng.random(32), np.linalg.norm(weight, axis=0), seeds=(4,),
                           moment=second_moment(detect), metric=embedding_metric(weight))
    assert [p.method for p in plans][-2:] == ["compensated", "compensated-greedy"]
    fractions = (0.0, 0.25, 0.5, 0.9)
    table = sweep(hidden, targets.numpy(), weight, bias, plans, fractions, rows_per_chunk=10)
    assert len(table) == len(plans) * len(fractions)

    log_p = original.reshape(-1, original.shape[-1])
    p = log_p.exp()
    has_next = targets >= 0
    for plan in plans:
        for fraction in fractions:
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(plan.pruned_weight(weight, fraction)))
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


def _correlated_hidden(n: int, d: int, seed: int) -> np.ndarray:
    """Hidden states with correlated coordinates and a non-zero mean, like a model's."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) + np.eye(d) * 2
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def test_compensation_is_the_least_squares_fit_of_deleted_on_kept_coordinates():
    hidden = _correlated_hidden(300, 8, seed=1)
    moment = second_moment(hidden.astype(np.float32), rows_per_chunk=64)
    h32 = hidden.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(moment, h32.T @ h32, rtol=1e-12)
    deleted = np.array([6, 1, 4])
    kept = np.array([0, 2, 3, 5, 7])
    expected, *_ = np.linalg.lstsq(h32[:, kept], h32[:, deleted], rcond=None)
    # The relative ridge (1e-6 of the mean diagonal) moves M by about that much here.
    np.testing.assert_allclose(compensation(moment, deleted), expected, rtol=1e-4, atol=1e-6)


def test_compensated_head_has_only_zero_columns_new_and_folds_the_prediction():
    rng = np.random.default_rng(2)
    hidden = _correlated_hidden(400, 10, seed=3)
    weight = rng.normal(size=(50, 10)).astype(np.float32)
    deleted = np.array([2, 7, 9, 0])
    kept = np.setdiff1d(np.arange(10), deleted)
    moment = second_moment(hidden)
    pruned = compensated_weight(weight, deleted, moment)
    assert pruned.dtype == np.float32
    assert (pruned[:, deleted] == 0).all() and (pruned[:, kept] != 0).all()
    m, *_ = np.linalg.lstsq(hidden[:, kept], hidden[:, deleted], rcond=None)
    e = weight.astype(np.float64)
    np.testing.assert_allclose(pruned[:, kept], e[:, kept] + e[:, deleted] @ m.T,
                               rtol=1e-4, atol=1e-5)
    # Logits: H_K E'_Kᵀ = H Eᵀ − (H_D − H_K M) E_Dᵀ, and (least squares, M = 0 being one
    # choice) no farther from H Eᵀ than plain zeroing.
    logits = hidden @ pruned.astype(np.float64).T
    np.testing.assert_allclose(logits, hidden[:, kept] @ pruned[:, kept].astype(np.float64).T,
                               rtol=1e-12)
    residual = hidden[:, deleted] - hidden[:, kept] @ m
    np.testing.assert_allclose(logits, hidden @ e.T - residual @ e[:, deleted].T,
                               rtol=1e-4, atol=1e-3)
    zeroed = hidden[:, kept] @ e[:, kept].T
    assert np.linalg.norm(logits - hidden @ e.T) < np.linalg.norm(zeroed - hidden @ e.T)
    np.testing.assert_array_equal(compensated_weight(weight, np.array([], dtype=int), moment),
                                  weight)


def test_embedding_metric_is_the_logit_error_variance():
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(30, 5))
    alpha = rng.dirichlet(np.ones(30))
    error = rng.normal(size=5)  # a hidden-space error δ: logit error e = E δ
    e = weight @ error
    uniform = np.mean(e ** 2) - np.mean(e) ** 2
    assert error @ embedding_metric(weight) @ error == pytest.approx(uniform, rel=1e-10)
    weighted = alpha @ e ** 2 - (alpha @ e) ** 2
    assert error @ embedding_metric(weight, alpha) @ error == pytest.approx(weighted, rel=1e-10)


def _compensated_error(hidden, weight_metric, deleted):
    """Σ_x ‖(h_D − h_K M) E_Dᵀ‖²_W by a direct least-squares fit (float64)."""
    d = hidden.shape[1]
    kept = np.setdiff1d(np.arange(d), deleted)
    if len(kept):
        m, *_ = np.linalg.lstsq(hidden[:, kept], hidden[:, deleted], rcond=None)
        residual = hidden[:, deleted] - hidden[:, kept] @ m
    else:
        residual = hidden[:, deleted]
    weight, metric = weight_metric
    errors = residual @ weight[:, deleted].T
    return float(np.einsum("xv,vw,xw->", errors, metric, errors))


def test_compensated_greedy_deletes_what_adds_least_logit_error():
    rng = np.random.default_rng(5)
    d = 7
    hidden = _correlated_hidden(500, d, seed=6)
    weight = rng.normal(size=(40, d)) * rng.uniform(0.2, 3.0, size=d)
    vocabulary_metric = np.eye(40) / 40 - 1 / 40 ** 2
    order = compensated_greedy_order(second_moment(hidden),
                                     weight.T @ vocabulary_metric @ weight)
    assert sorted(order) == list(range(d))
    for step in range(d - 1):
        errors = {j: _compensated_error(hidden, (weight, vocabulary_metric),
                                        np.array([*order[:step], j]))
                  for j in set(range(d)) - set(order[:step])}
        assert order[step] == min(errors, key=errors.get), step


def test_column_std_from_the_gram_matrix_is_the_sample_std_of_each_column():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(200, 6)) * np.arange(1, 7) + rng.normal(size=6)
    gram = fit_ols(matrix, rng.normal(size=200)).gram
    np.testing.assert_allclose(column_std(gram), matrix.std(axis=0, ddof=1), rtol=1e-10)


def test_averaged_distribution_divergences_equal_scipy():
    """α-KL and α-JS of the sweep against scipy's entropy and Jensen–Shannon distance
    (squared, natural log), on float64 softmaxes of the pruned and original logits."""
    rng = np.random.default_rng(8)
    hidden = rng.normal(size=(40, 12)).astype(np.float32)
    weight = rng.normal(size=(30, 12)).astype(np.float32)
    bias = rng.normal(size=30).astype(np.float32)
    plans = deletion_plans(rng.random(12), np.linalg.norm(weight, axis=0), seeds=(1,))
    fractions = (0.0, 0.25, 0.5)
    table = sweep(hidden, np.full(40, -1), weight, bias, plans, fractions, rows_per_chunk=7)
    h = hidden.astype(np.float64)
    p = softmax(h @ weight.T.astype(np.float64) + bias, axis=1)
    for plan in plans:
        for fraction in fractions:
            pruned = plan.pruned_weight(weight, fraction).astype(np.float64)
            q = softmax(h @ pruned.T + bias, axis=1)
            row = table[(table["method"] == plan.method) & (table["seed"] == plan.seed)
                        & (table["fraction"] == fraction)].iloc[0]
            alpha, alpha_pruned = p.mean(0), q.mean(0)
            assert row["alpha_kl"] == pytest.approx(entropy(alpha, alpha_pruned),
                                                    rel=1e-5, abs=1e-8)
            assert row["alpha_js"] == pytest.approx(
                jensenshannon(alpha, alpha_pruned) ** 2, rel=1e-5, abs=1e-8)
            assert row["kl"] == pytest.approx(np.mean(entropy(p, q, axis=1)),
                                              rel=1e-5, abs=1e-8)
            assert row["js"] == pytest.approx(
                np.mean(jensenshannon(p, q, axis=1) ** 2), rel=1e-5, abs=1e-8)


def test_generation_keeps_only_the_last_random_seed():
    plans = deletion_plans(np.arange(4.0), np.arange(4.0), seeds=(3, 5, 7))
    assert [(p.method, p.seed) for p in one_random_seed(plans)] == [
        ("saliency", -1), ("norm", -1), ("random", 7)]
    assert [p.method for p in one_random_seed(plans[:2])] == ["saliency", "norm"]


def _metrics(rng: np.random.Generator) -> pd.DataFrame:
    rows = [{"method": method, "seed": seed, "fraction": fraction, "split": split,
             "kl": rng.random(), "alpha_js": rng.random() * 1e-3, "positions": 48,
             "generation_match": rng.random()}
            for method in METHODS for split in SPLITS for fraction in (0.0, 0.5)
            for seed in ((0, 1) if method == "random" else (-1,))]
    return pd.DataFrame(rows)


def test_main_metrics_average_the_seeds_per_method_split_and_fraction():
    metrics = _metrics(np.random.default_rng(1))
    summary = main_metrics(metrics)
    assert len(summary) == len(METHODS) * len(SPLITS) * 2
    for row in summary:
        chosen = metrics[(metrics["method"] == row["method"])
                         & (metrics["split"] == row["split"])
                         & (metrics["fraction"] == row["fraction"])]
        assert set(row) == {"method", "split", "fraction", "kl", "alpha_js",
                            "generation_match"}
        for column in ("kl", "alpha_js", "generation_match"):
            assert row[column] == pytest.approx(sum(chosen[column]) / len(chosen), rel=1e-12)


def test_headline_fractions_name_every_method_on_every_split():
    metrics = _metrics(np.random.default_rng(2))
    headlines = headline_fractions(metrics, 5e-4)
    assert headlines == {f"{m}/{s}": headline_fraction(metrics, m, s, 5e-4)
                         for m in METHODS for s in SPLITS}
    assert set(headlines.values()) <= {0.0, 0.5}


def test_metrics_table_leads_with_the_identifying_columns():
    metrics = _metrics(np.random.default_rng(3))
    per_split = [metrics[metrics["split"] == s][metrics.columns[::-1]] for s in SPLITS]
    table = metrics_table(per_split)
    assert list(table.columns[:4]) == ["method", "seed", "fraction", "split"]
    assert len(table) == len(metrics) and set(table.columns) == set(metrics.columns)
