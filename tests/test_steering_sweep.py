"""The steering sweep against full forward passes of edited tiny models (float64 softmax)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tokprob.calibration import calibration_direction
from tokprob.config import SteeringConfig
from tokprob.head import final_hidden_states, output_head, untie_output_embeddings
from tokprob.hidden import HiddenStates
from tokprob.models import load_model
from tokprob.regression import CenteredGram, fit_ols
from tokprob.steering import (
    errors_by_support,
    omega_mask,
    paired_comparison,
    steering_direction,
    target_logits,
    well_measured,
)
from tokprob.steering_sweep import (
    SWEEP_COLUMNS,
    Sweep,
    fewshot_regressions,
    powers_of_two,
    run_sweep,
    sweep_summary,
    sweep_table,
    target_pairs,
)

WINDOW = 16


def forward_probabilities(model, windows: torch.Tensor) -> np.ndarray:
    """(positions, |V|) float64 softmax of the model's logits."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits.double()
    return torch.softmax(logits, -1).reshape(-1, logits.shape[-1]).numpy()


def hidden_states(model, windows: torch.Tensor) -> HiddenStates:
    with torch.inference_mode():
        hidden = final_hidden_states(model, windows).reshape(-1, output_head(model).hidden_size)
    targets = torch.cat([windows[:, 1:], torch.full((len(windows), 1), -1)], dim=1)
    return HiddenStates(hidden=hidden.float().numpy(), targets=targets.reshape(-1).numpy())


@pytest.fixture(scope="module")
def edited_model_setup(tiny_models):
    return sweep_setup(load_model(tiny_models["phi"]))  # untied, with an output bias


def sweep_setup(model):
    """The model (untied), its head, and the hidden states, α and regression of random
    detecting and held-out windows."""
    untie_output_embeddings(model)
    generator = torch.Generator().manual_seed(11)
    detect_windows = torch.randint(0, 300, (8, WINDOW), generator=generator)
    held_windows = torch.randint(0, 300, (4, WINDOW), generator=generator)
    head = output_head(model)
    weight = head.weight.detach().numpy().copy()
    bias = None if head.bias is None else head.bias.detach().numpy().copy()
    detect, held = hidden_states(model, detect_windows), hidden_states(model, held_windows)
    alpha = forward_probabilities(model, detect_windows).mean(0)
    regression = fit_ols(weight, -np.log(alpha)).table()
    return model, weight, bias, detect_windows, held_windows, detect, held, alpha, regression


def run_small_sweep(setup, tokens, ratios, fewshot, exact_kl=False):
    _, weight, bias, _, _, detect, held, alpha, regression = setup
    config = SteeringConfig(omega="all", ratios=ratios, fewshot=fewshot, exact_kl=exact_kl)
    pairs = target_pairs([(token, 50.0) for token in tokens], ratios)
    sweep = run_sweep(held, detect, weight, bias, pairs, {8: regression}, 8, config, 0.05)
    text = np.array([f"t{i}" for i in range(len(weight))], dtype=object)
    return pairs, sweep, sweep_table(sweep.table, pairs, alpha, text, "all")


def edited_ratio(model, weight, token, delta, windows) -> float:
    """α'_w/α_w on `windows` from full forward passes with row `token` moved by delta."""
    head = model.get_output_embeddings()
    before = forward_probabilities(model, windows)[:, token].mean()
    with torch.no_grad():
        head.weight[token] = torch.from_numpy(weight[token] + delta.astype(np.float32))
        after = forward_probabilities(model, windows)
        head.weight.copy_(torch.from_numpy(weight))
    return float(after[:, token].mean() / before)


def test_every_method_matches_the_edited_models_forward(edited_model_setup):
    model, weight, bias, detect_windows, held_windows, detect, held, _, regression = (
        edited_model_setup)
    tokens, ratios = [int(np.argsort(-edited_model_setup[7])[3]), 40], (0.2, 5.0)
    _, _, table = run_small_sweep(edited_model_setup, tokens, ratios, fewshot=False)
    direction = steering_direction(regression["slope"].to_numpy(),
                                   omega_mask(regression, "all"))
    detect_p = target_logits(detect.hidden, weight, bias, np.array(sorted(tokens)))
    assert table.loc[table["method"] == "calibrated", "feasible"].sum() >= 2
    for row in table.itertuples():
        if not row.feasible:  # reported with the ratio it reaches, not evaluated
            assert np.isnan(row.achieved) and np.isnan(row.step)
            assert row.reachable_ratio < row.r or row.r < 1
            continue
        if row.method == "closed_form":
            delta = -np.log(row.r) * direction
        elif row.method == "calibrated":
            column = sorted(tokens).index(row.token_id)
            u = calibration_direction(detect.hidden.astype(np.float64),
                                      detect_p.probabilities()[:, column])
            delta = row.step * u
            # Solved on the detecting windows: the edited model lands on r there.
            assert edited_ratio(model, weight, row.token_id, delta, detect_windows) == (
                pytest.approx(row.r, rel=1e-4))
        else:
            continue
        assert row.achieved == pytest.approx(
            edited_ratio(model, weight, row.token_id, delta, held_windows), rel=1e-4)
    # The logit bias: the float64 softmax of the cached hidden states, bias on logit w.
    for row in table[table["method"] == "logit_bias"].itertuples():
        for states, expected in ((detect, row.r), (held, row.achieved)):
            z = states.hidden.astype(np.float64) @ weight.T.astype(np.float64) + bias
            p = np.exp(z - z.max(1, keepdims=True))
            before = (p / p.sum(1, keepdims=True))[:, row.token_id].mean()
            z[:, row.token_id] += row.step
            p = np.exp(z - z.max(1, keepdims=True))
            after = (p / p.sum(1, keepdims=True))[:, row.token_id].mean()
            assert after / before == pytest.approx(expected, rel=1e-6)


def test_after_a_layer_norm_with_bias_the_calibrated_edit_is_as_exact_as_a_logit_bias(
        tiny_models):
    """GPT-2's final LayerNorm with a bias makes h·(1/γ) the same at every position, so the
    calibrated edit of the row shifts logit w by a constant, as the logit bias does, and
    lands on r on held-out windows it was not solved on (a freshly initialised model has
    β = 0, where that direction moves nothing: a trained one has β ≠ 0)."""
    model = load_model(tiny_models["gpt2"])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        norm = model.transformer.ln_f
        norm.weight.copy_(1.0 + 0.2 * torch.randn(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=generator))
    setup = sweep_setup(model)
    _, weight, _, _, held_windows, detect, _, _, _ = setup
    tokens, ratios = [7, 40, 123], (0.1, 0.5, 2.0, 10.0)
    _, _, table = run_small_sweep(setup, tokens, ratios, fewshot=False)
    error = table.pivot_table(index=["token_id", "r"], columns="method",
                              values="abs_log_error")
    # Both miss only by what differs between the two sets of windows (saturation).
    np.testing.assert_allclose(error["calibrated"], error["logit_bias"], atol=1e-5)
    assert error["closed_form"].median() > 100 * error["calibrated"].median()
    # Checked against the edited model's own forward pass on the held-out windows.
    row = table[(table["method"] == "calibrated") & (table["r"] == 10.0)].iloc[0]
    column = sorted(tokens).index(row["token_id"])
    p = target_logits(detect.hidden, weight, None, np.array(sorted(tokens))).probabilities()
    u = calibration_direction(detect.hidden.astype(np.float64), p[:, column])
    assert edited_ratio(model, weight, int(row["token_id"]), row["step"] * u,
                        held_windows) == pytest.approx(10.0, rel=1e-3)


def test_each_row_gives_the_positions_its_targets_alpha_rests_on(edited_model_setup):
    model, _, _, detect_windows, held_windows, *_ = edited_model_setup
    tokens = [40, 123]
    _, _, table = run_small_sweep(edited_model_setup, tokens, (0.5, 2.0), fewshot=False)
    for split, windows in (("detect", detect_windows), ("heldout", held_windows)):
        p = forward_probabilities(model, windows)
        for token in tokens:
            kish = p[:, token].sum() ** 2 / np.sum(p[:, token] ** 2)
            rows = table.loc[table["token_id"] == token, f"{split}_effective_positions"]
            np.testing.assert_allclose(rows, kish, rtol=1e-4)
            assert 1.0 <= kish <= len(p)


def test_errors_are_binned_by_the_support_of_each_target():
    """Support: the fewer effective positions of the two splits. Only the fit on the most
    detecting windows counts, as in the other error summaries."""
    support = {1: (2.0, 50.0), 2: (40.0, 5.0), 3: (80.0, 12.0), 4: (300.0, 400.0)}
    error = {"closed_form": {1: 0.9, 2: 0.5, 3: 0.4, 4: 0.2},
             "calibrated": {1: 0.8, 2: 0.3, 3: 0.02, 4: 0.01}}
    rows = [{"method": method, "n_fit": n_fit, "token_id": token, "r": r,
             "abs_log_error": error[method][token] * (1 if n_fit == 8 else 10),
             "achieved": r, "feasible": not (method == "calibrated" and token == 3 and r == 2),
             "kl_other_bound": 0.0, "detect_effective_positions": support[token][0],
             "heldout_effective_positions": support[token][1]}
            for method in error for n_fit in (2, 8) for token in support for r in (0.5, 2.0)]
    sweep = pd.DataFrame(rows)
    by_support = {(row["method"], row["support"]): row for row in errors_by_support(sweep)}
    assert set(by_support) == {(m, b) for m in error for b in ("0–3", "3–10", "10–30", "≥ 30")}
    assert by_support["calibrated", "0–3"]["median"] == pytest.approx(0.8)
    assert by_support["calibrated", "3–10"]["median"] == pytest.approx(0.3)
    assert by_support["calibrated", "10–30"]["feasible"] == 1
    assert by_support["calibrated", "10–30"]["infeasible"] == 1
    assert by_support["closed_form", "≥ 30"]["p90"] == pytest.approx(0.2)
    measured = paired_comparison(well_measured(sweep))
    assert measured["pairs"] == 3  # tokens 3 and 4, less the unreachable pair
    assert measured["calibrated_median"] == pytest.approx(0.01)
    assert measured["closed_form_median"] == pytest.approx(0.2)
    # Few-shot: from 2 windows the well-measured median is 0.1, from 8 it is 0.01 ≤ 0.03;
    # over every target it stays at 0.3.
    summary = sweep_summary(sweep.assign(kl_other=np.nan),
                            Sweep(sweep, 1, {}, 4, heldout_positions=1, detect_positions=1), 8)
    assert summary["calibrated_windows_for_goal_well_measured"] == 8
    assert summary["calibrated_windows_for_goal"] is None
    assert summary["comparison_well_measured"] == measured


def test_kl_over_other_tokens_matches_the_edited_models_forward(edited_model_setup):
    model, weight, _, _, held_windows, _, _, _, regression = edited_model_setup
    _, _, table = run_small_sweep(edited_model_setup, [40], (5.0,), fewshot=False,
                                  exact_kl=True)
    row = table[table["method"] == "closed_form"].iloc[0]
    direction = steering_direction(regression["slope"].to_numpy(),
                                   omega_mask(regression, "all"))
    head = model.get_output_embeddings()
    before = forward_probabilities(model, held_windows).mean(0)
    with torch.no_grad():
        head.weight[40] = torch.from_numpy(weight[40] - np.log(5.0) * direction.astype(
            np.float32))
        after = forward_probabilities(model, held_windows).mean(0)
        head.weight.copy_(torch.from_numpy(weight))
    keep = np.arange(len(before)) != 40
    p, q = before[keep] / before[keep].sum(), after[keep] / after[keep].sum()
    assert row["kl_other"] == pytest.approx(np.sum(p * np.log(p / q)), rel=1e-3)
    assert row["kl_other"] <= row["kl_other_bound"]


def test_few_shot_fits_use_the_first_windows_only(edited_model_setup):
    model, weight, bias, detect_windows, _, detect, _, _, _ = edited_model_setup
    _, sweep, table = run_small_sweep(edited_model_setup, [40], (0.2, 5.0), fewshot=True)
    assert set(table.loc[table["method"] == "calibrated", "n_fit"]) == {1, 2, 4, 8}
    two = table[(table["method"] == "calibrated") & (table["n_fit"] == 2)]
    rows = 2 * WINDOW
    p = target_logits(detect.hidden[:rows], weight, bias, np.array([40])).probabilities()
    u = calibration_direction(detect.hidden[:rows].astype(np.float64), p[:, 0])
    for row in two.itertuples():
        assert edited_ratio(model, weight, 40, row.step * u, detect_windows[:2]) == (
            pytest.approx(row.r, rel=1e-4))
    summary = sweep_summary(table, sweep, 8)
    assert set(summary["fewshot_median_error"]["calibrated"]) == {"1", "2", "4", "8"}
    assert summary["targets"] == 1 and summary["omega_dims"] == sweep.omega_dims > 0


def test_sweep_table_repeats_each_targets_context_for_every_fit():
    pairs = target_pairs([(2, 10.0), (0, float("nan"))], (0.5, 2.0))
    rows = pd.DataFrame({"method": ["closed_form"] * 4 + ["calibrated"] * 4,
                         "token_id": [2, 2, 0, 0] * 2, "r": [0.5, 2.0] * 4})
    for column in SWEEP_COLUMNS:
        if column not in rows and column not in ("token", "alpha", "omega", "percentile",
                                                 "alpha_percentile"):
            rows[column] = 1.0
    alpha = np.array([0.5, 0.1, 0.4])
    table = sweep_table(rows, pairs, alpha, np.array(["a", "b", "c"]), "bonferroni")
    assert list(table.columns) == SWEEP_COLUMNS
    assert list(table["token"]) == ["c", "c", "a", "a"] * 2
    np.testing.assert_allclose(table["alpha"], [0.4, 0.4, 0.5, 0.5] * 2)
    assert list(table["omega"]) == ["bonferroni"] * 4 + [""] * 4
    assert table["percentile"].isna().tolist() == [False, False, True, True] * 2


def test_fewshot_regressions_equal_a_direct_least_squares_fit():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(200, 6))
    usable = rng.random(200) > 0.1
    alpha = {n: np.exp(-(weight @ rng.normal(size=6)) - 5 + rng.normal(size=200) * 0.1)
             for n in (1, 2)}
    alpha[4] = alpha[2].copy()
    alpha[4][np.flatnonzero(usable)[0]] = 0.0  # underflows: skipped
    gram = CenteredGram.compute(weight[usable], np.zeros(usable.sum()))
    fits = fewshot_regressions(gram, weight, usable, alpha)
    assert set(fits) == {1, 2}
    for n, table in fits.items():
        direct = fit_ols(weight[usable], -np.log(alpha[n][usable]))
        np.testing.assert_allclose(table["slope"], direct.slope, rtol=1e-7)


def test_powers_of_two_end_at_the_limit():
    assert powers_of_two(1) == [1]
    assert powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(12) == [1, 2, 4, 8, 12]
