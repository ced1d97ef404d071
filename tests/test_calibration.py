"""Calibrated steering against direct float64 computations on synthetic hidden states."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from tokprob import steering
from tokprob.calibration import (
    RIDGES,
    calibrate_jointly,
    calibrate_step,
    calibrated_fits,
    calibration_direction,
    closed_form_fit,
    effective_positions,
    evaluate_fits,
    jointly_calibrated_edits,
    relative_spread,
)
from tokprob.errors import TokprobError
from tokprob.steering import SteeringEvaluator, target_logits, window_of_positions


def synthetic(positions: int = 400, d: int = 12, vocab: int = 60, seed: int = 0):
    """Hidden states with a mean far from zero (as final hidden states have) and an LM head."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d) * 2.0
    hidden = (mean + rng.normal(size=(positions, d)) * rng.uniform(0.2, 2.0, d))
    weight = rng.normal(size=(vocab, d)) * 0.5
    bias = rng.normal(size=vocab) * 0.1
    return hidden.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32)


def direct_alpha(hidden, weight, bias, edits: dict[int, np.ndarray]) -> np.ndarray:
    """α from the full float64 softmax of the edited head."""
    edited = weight.astype(np.float64).copy()
    for token, delta in edits.items():
        edited[token] += delta
    return softmax(hidden.astype(np.float64) @ edited.T + bias, axis=1).mean(axis=0)


def test_direction_is_the_minimum_variance_solution_with_the_validated_ridge():
    hidden, _, _ = synthetic()
    u = calibration_direction(hidden)
    h = hidden.astype(np.float64)
    mean = h.mean(0)

    def direct(rows, ridge):
        covariance = np.cov(rows, rowvar=False, bias=True)
        scale = ridge * np.trace(covariance) / rows.shape[1]
        v = np.linalg.solve(covariance + scale * np.eye(rows.shape[1]), rows.mean(0))
        return v / (rows.mean(0) @ v)

    spreads = [np.std(h[200:] @ direct(h[:200], ridge)) for ridge in RIDGES]
    np.testing.assert_allclose(u, direct(h, RIDGES[int(np.argmin(spreads))]), rtol=1e-6)
    assert mean @ u == pytest.approx(1.0)
    # No direction with a unit mean shift has less spread on these positions (ridge aside).
    assert np.std(h @ u) <= np.std(h @ (mean / (mean @ mean))) + 1e-12


def test_direction_finds_the_nearly_constant_coordinate_and_keeps_it_held_out():
    rng = np.random.default_rng(4)

    def draw(n):
        h = rng.normal(size=(n, 8)) * 3.0 + 1.0
        h[:, 5] = 2.0 + rng.normal(size=n) * 1e-3  # h·e5/2 is almost exactly 1 everywhere
        return h

    u = calibration_direction(draw(2000))
    fresh = draw(2000)
    mean_direction = fresh.mean(0) / (fresh.mean(0) @ fresh.mean(0))
    assert relative_spread(fresh @ u) < 0.01
    assert relative_spread(fresh @ u) < relative_spread(fresh @ mean_direction) / 50


def test_weighted_direction_follows_the_positions_that_carry_the_weight():
    rng = np.random.default_rng(6)
    h = rng.normal(size=(3000, 6)) * 2.0 + 1.0
    weights = (np.arange(3000) % 3 == 0).astype(float)  # every third position matters
    h[weights > 0, 2] = 3.0 + rng.normal(size=1000) * 1e-4  # constant there only
    u = calibration_direction(h, weights)
    assert relative_spread(h @ u, weights) < 1e-3
    assert relative_spread(h @ calibration_direction(h), weights) > 10 * relative_spread(
        h @ u, weights)


def test_ridge_keeps_few_shot_directions_from_overfitting():
    rng = np.random.default_rng(9)
    mean = rng.normal(size=40) + 1.0
    draw = lambda n: mean + rng.normal(size=(n, 40))  # noqa: E731
    u = calibration_direction(draw(30))  # fewer positions than dimensions
    fresh = draw(4000)
    plain = mean / (mean @ mean)
    assert np.isfinite(u).all()
    assert relative_spread(fresh @ u) < 1.5 * relative_spread(fresh @ plain)


def test_calibrated_step_hits_the_ratio_against_the_full_softmax():
    hidden, weight, bias = synthetic()
    u = calibration_direction(hidden)
    stats = target_logits(hidden, weight, bias, np.array([3, 41]), rows_per_chunk=64)
    before = direct_alpha(hidden, weight, bias, {})
    for column, token in enumerate((3, 41)):
        for ratio in (0.05, 0.5, 3.0, 20.0):
            solved = calibrate_step(stats.logit[:, column], stats.log_rest[:, column],
                                    hidden.astype(np.float64) @ u, ratio)
            assert solved.feasible
            after = direct_alpha(hidden, weight, bias, {token: solved.step * u})
            assert after[token] / before[token] == pytest.approx(ratio, rel=1e-6)


def test_unreachable_ratio_is_infeasible_with_the_largest_reachable_ratio():
    logit = np.array([0.0, 1.0, -1.0, 0.5])
    log_rest = np.log(np.array([3.0, 1.0, 5.0, 2.0]))
    alpha = np.mean(np.exp(logit - np.logaddexp(log_rest, logit)))
    solved = calibrate_step(logit, log_rest, np.ones(4), 2.0 / alpha)  # α' would be 2
    assert not solved.feasible and np.isnan(solved.step)
    assert solved.reachable == pytest.approx(1.0 / alpha, rel=1e-6)  # every p' → 1
    # A direction that changes sign saturates: positions of the other sign lose their mass.
    slope = np.array([1.0, 1.0, -1.0, 1.0])
    mixed = calibrate_step(logit, log_rest, slope, 1.5 / alpha)
    assert not mixed.feasible
    grid = np.linspace(0, 60, 60001)
    reachable = max(np.mean(np.exp(logit + c * slope
                                   - np.logaddexp(log_rest, logit + c * slope))) / alpha
                    for c in grid)
    assert mixed.reachable == pytest.approx(reachable, rel=1e-6)
    assert mixed.reachable < 1.5 / alpha


def test_joint_calibration_lands_every_ratio_through_the_shared_normalizer():
    hidden, weight, bias = synthetic(seed=2)
    tokens, ratios = [7, 8, 30], [5.0, 0.2, 12.0]
    edits = jointly_calibrated_edits(hidden, weight, bias, tokens, ratios, ["a", "b", "c"])
    before = direct_alpha(hidden, weight, bias, {})
    after = direct_alpha(hidden, weight, bias, edits)
    np.testing.assert_allclose(after[tokens] / before[tokens], ratios, rtol=1e-7)
    # Solved one at a time instead, the edits miss: they interact.
    alone = {}
    for token, ratio in zip(tokens, ratios, strict=True):
        alone |= jointly_calibrated_edits(hidden, weight, bias, [token], [ratio], ["x"])
    separate = direct_alpha(hidden, weight, bias, alone)
    assert np.max(np.abs(np.log(separate[tokens] / before[tokens]) - np.log(ratios))) > 1e-3


def test_joint_calibration_refuses_an_unreachable_ratio():
    hidden, weight, bias = synthetic()
    with pytest.raises(TokprobError, match="can reach at most"):
        jointly_calibrated_edits(hidden, weight, bias, [3, 4], [2.0, 1e9], ["a", "b"])


def test_joint_solver_with_one_target_equals_the_scalar_solver():
    rng = np.random.default_rng(0)
    logit, log_rest = rng.normal(size=(50, 1)), rng.normal(size=50) + 3
    slope = rng.uniform(0.5, 1.5, size=(50, 1))
    joint = calibrate_jointly(logit, log_rest, slope, np.array([4.0]))[0]
    single = calibrate_step(logit[:, 0], log_rest, slope[:, 0], 4.0)
    assert joint.step == pytest.approx(single.step, rel=1e-9)


def near_certain():
    """A head where token 2 has p ≥ 1 − 1e-9 at every position."""
    hidden, weight, bias = synthetic(positions=64, d=6, vocab=30, seed=5)
    bias[2] = 30.0
    z = hidden.astype(np.float64) @ weight.astype(np.float64).T + bias
    assert softmax(z, axis=1)[:, 2].min() >= 1 - 1e-9
    return hidden, weight, bias


def test_non_target_mass_is_exact_for_a_near_certain_target():
    hidden, weight, bias = near_certain()
    z = hidden.astype(np.float64) @ weight.astype(np.float64).T + bias
    stats = target_logits(hidden, weight, bias, np.array([2, 9]))
    for column, token in enumerate((2, 9)):
        rest = logsumexp(np.delete(z, token, axis=1), axis=1)
        np.testing.assert_allclose(stats.log_rest[:, column], rest, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.lse, logsumexp(z, axis=1), rtol=1e-7)


def test_evaluator_steers_a_near_certain_target_without_nan():
    hidden, weight, bias = near_certain()
    mean = hidden.astype(np.float64).mean(0)
    direction = -20.0 * mean / (mean @ mean)  # r = 0.05 lowers logit 2 by about 60
    evaluator = SteeringEvaluator(hidden, weight, bias, np.array([2]))
    ratios = np.array([0.05, 0.5, 0.999999])
    effects = evaluator.evaluate(np.array([2, 2, 2]), ratios, direction)
    for k, ratio in enumerate(ratios):
        after = direct_alpha(hidden, weight, bias, {2: -np.log(ratio) * direction})
        before = direct_alpha(hidden, weight, bias, {})
        assert effects.achieved[k] == pytest.approx(after[2] / before[2], rel=1e-6)
        keep = np.arange(len(before)) != 2
        p, q = before[keep] / before[keep].sum(), after[keep] / after[keep].sum()
        assert effects.kl_other[k] == pytest.approx(np.sum(p * np.log(p / q)), rel=1e-3,
                                                    abs=1e-12)
    assert np.isfinite(effects.achieved).all() and np.isfinite(effects.kl_other).all()
    assert effects.achieved[0] < 0.1  # the old evaluator saw p' = 1 for every r


def test_window_of_positions():
    targets = np.array([5, 6, -1, 7, 8, -1, 9, -1])
    np.testing.assert_array_equal(window_of_positions(targets), [0, 0, 0, 1, 1, 1, 2, 2])


def counted_passes(monkeypatch, weight) -> list[int]:
    """Counts LM-head passes: each pass wraps E as a tensor once."""
    calls = []
    original = steering.read_only_tensor

    def counting(array, *args, **kwargs):
        if array is weight:
            calls.append(1)
        return original(array, *args, **kwargs)

    monkeypatch.setattr(steering, "read_only_tensor", counting)
    return calls


def test_sweep_of_every_method_and_fit_costs_two_lm_head_passes(monkeypatch):
    hidden, weight, bias = synthetic(positions=512, seed=7)
    passes = counted_passes(monkeypatch, weight)
    tokens = np.repeat([3, 11, 40], 4)
    ratios = np.tile([0.1, 0.5, 2.0, 10.0], 3)
    window = np.arange(len(hidden)) // 64
    evaluator = SteeringEvaluator(hidden, weight, bias, tokens)
    detect = target_logits(hidden, weight, bias, evaluator.stats.tokens)
    fits = [closed_form_fit(evaluator, np.random.default_rng(n).normal(size=12), ratios, n)
            for n in (1, 2, 4)]
    fits += calibrated_fits(evaluator, detect, hidden, window, tokens, ratios, [1, 2, 8])
    sweep = evaluate_fits(evaluator, fits, tokens, ratios)
    assert len(passes) == 2
    assert set(sweep["method"]) == {"closed_form", "calibrated", "logit_bias"}
    # Calibrated on the very positions it is evaluated on: exact; the closed form is not.
    full = sweep[sweep["n_fit"] == 8]
    np.testing.assert_allclose(full["abs_log_error"], 0.0, atol=1e-8)
    closed = sweep[(sweep["method"] == "closed_form") & (sweep["n_fit"] == 4)]
    assert closed["abs_log_error"].median() > 0.01
    assert sweep["kl_other_bound"].notna().all() and sweep["kl_other"].isna().all()
    # The exact KL: one more pass, for each method's largest fit only, within its bound.
    exact = evaluate_fits(evaluator, fits, tokens, ratios, exact_kl=True)
    assert len(passes) == 3
    largest = exact["n_fit"] == exact.groupby("method")["n_fit"].transform("max")
    assert exact.loc[largest, "kl_other"].notna().all()
    assert exact.loc[~largest, "kl_other"].isna().all()
    assert (exact["kl_other"][largest] <= exact["kl_other_bound"][largest] * (1 + 1e-9)).all()
    # The few-shot fits are those of the first windows only.
    first = sweep[(sweep["method"] == "calibrated") & (sweep["n_fit"] == 1)]
    u = calibration_direction(hidden[:64], detect.probabilities()[:64, 0])
    solved = calibrate_step(detect.logit[:64, 0], detect.log_rest[:64, 0],
                            hidden[:64].astype(np.float64) @ u, 0.1)
    assert first["step"].iloc[0] == pytest.approx(solved.step, rel=1e-9)


def test_infeasible_pairs_are_reported_not_clipped():
    hidden, weight, bias = synthetic(positions=128)
    tokens, ratios = np.array([3, 3]), np.array([2.0, 1e9])
    evaluator = SteeringEvaluator(hidden, weight, bias, tokens)
    detect = target_logits(hidden, weight, bias, evaluator.stats.tokens)
    fits = calibrated_fits(evaluator, detect, hidden, np.zeros(128, int), tokens, ratios, [1])
    sweep = evaluate_fits(evaluator, fits, tokens, ratios)
    impossible = sweep[sweep["r"] == 1e9]
    assert not impossible["feasible"].any()
    assert impossible["achieved"].isna().all()
    alpha = direct_alpha(hidden, weight, bias, {})[3]
    assert (impossible["reachable_ratio"] < 1 / alpha * (1 + 1e-6)).all()
    assert (impossible["reachable_ratio"] > 0.5 / alpha).all()
    overall = steering.method_errors(steering.error_summary(sweep), "calibrated")
    assert (overall["feasible"], overall["infeasible"]) == (1, 1)
    assert overall["median"] == pytest.approx(sweep.loc[0, "abs_log_error"])


def test_layer_norm_models_get_the_exactly_constant_direction():
    """After a LayerNorm with bias, h = γ⊙n + β with n summing to zero, so h·(1/γ) = Σβ/γ at
    every position: a logit bias realised as an embedding edit. The smallest ridge finds it."""
    rng = np.random.default_rng(12)
    gamma, beta = rng.uniform(0.5, 2.0, 16), rng.normal(size=16)

    def layer_norm(n):
        x = rng.normal(size=(n, 16)) * rng.uniform(0.5, 3.0, 16) + rng.normal(size=16)
        centred = x - x.mean(1, keepdims=True)
        return gamma * centred / centred.std(1, keepdims=True) + beta

    detect, fresh = layer_norm(3000), layer_norm(3000)
    weights = rng.random(3000) ** 8
    u = calibration_direction(detect, weights)
    assert relative_spread(fresh @ u) < 1e-7
    np.testing.assert_allclose(u / np.linalg.norm(u), (1 / gamma) / np.linalg.norm(1 / gamma)
                               * np.sign(u @ (1 / gamma)), atol=1e-7)


def test_kl_of_a_rare_target_keeps_its_digits():
    hidden, weight, bias = synthetic(positions=256, seed=3)
    bias[5] = -22.0  # p_5 about 1e-18 at most positions, 1e-8 at the first four
    hidden[:4] += 6.0 * weight[5] / np.linalg.norm(weight[5]) ** 2 * 4.0
    mean = hidden.astype(np.float64).mean(0)
    direction = mean / (mean @ mean)
    evaluator = SteeringEvaluator(hidden, weight, bias, np.array([5, 9]), rows_per_chunk=64)
    tokens, ratios = np.array([5, 5, 9]), np.array([10.0, 0.1, 10.0])
    effects = evaluator.evaluate(tokens, ratios, direction)
    for k, (token, ratio) in enumerate(zip(tokens, ratios, strict=True)):
        before = direct_alpha(hidden, weight, bias, {})
        after = direct_alpha(hidden, weight, bias, {token: -np.log(ratio) * direction})
        keep = np.arange(len(before)) != token
        p, q = before[keep] / before[keep].sum(), after[keep] / after[keep].sum()
        relative = q / p - 1.0
        second_order = 0.5 * np.sum(p * (relative - p @ relative) ** 2)  # exact to O(δ³)
        assert effects.kl_other[k] == pytest.approx(second_order, rel=1e-3, abs=0)
    assert 0 < effects.kl_other[0] < 1e-14


def direct_mixture_weight_kl(hidden, weight, bias, token: int, delta: np.ndarray) -> float:
    """KL over positions between the shares of non-target mass before and after the edit."""
    z = hidden.astype(np.float64) @ weight.astype(np.float64).T + bias
    before = 1.0 - softmax(z, axis=1)[:, token]
    z[:, token] += hidden.astype(np.float64) @ delta
    after = 1.0 - softmax(z, axis=1)[:, token]
    a, b = before / before.sum(), after / after.sum()
    return float(np.sum(a * np.log(a / b)))


def test_kl_bound_is_the_kl_of_the_position_weights_and_bounds_the_exact_kl():
    hidden, weight, bias = synthetic(positions=300, seed=5)
    bias[7] = 3.0  # a frequent target, p_7 up to about 0.9
    mean = hidden.astype(np.float64).mean(0)
    direction = mean / (mean @ mean)
    tokens, ratios = np.array([7, 7, 7, 20, 20]), np.array([0.05, 0.5, 1.5, 0.1, 20.0])
    effects = SteeringEvaluator(hidden, weight, bias, tokens).evaluate(tokens, ratios,
                                                                       direction)
    for k, (token, ratio) in enumerate(zip(tokens, ratios, strict=True)):
        delta = -np.log(ratio) * direction
        assert effects.kl_other_bound[k] == pytest.approx(
            direct_mixture_weight_kl(hidden, weight, bias, token, delta), rel=1e-6)
    assert (effects.kl_other <= effects.kl_other_bound * (1 + 1e-9)).all()
    assert (effects.kl_other > 0).all()


def test_kl_bound_is_reached_when_positions_predict_disjoint_tokens():
    # Each position puts almost all of its non-target mass on a token of its own.
    positions, vocab = 6, 8
    hidden = np.zeros((positions, positions + 1), dtype=np.float32)
    hidden[:, :positions] = np.eye(positions) * 30.0  # position x predicts token x
    hidden[:, -1] = np.linspace(1.0, 3.0, positions)  # the target's logit varies
    weight = np.zeros((vocab, positions + 1), dtype=np.float32)
    weight[:positions, :positions] = np.eye(positions)
    weight[vocab - 1, -1] = 12.0  # the target, probable at every position
    bias = np.zeros(vocab, dtype=np.float32)
    target = np.array([vocab - 1])
    effects = SteeringEvaluator(hidden, weight, bias, target).evaluate(
        target, np.array([0.3]), np.eye(hidden.shape[1])[-1])
    assert effects.kl_other[0] > 1e-3
    assert effects.kl_other_bound[0] == pytest.approx(effects.kl_other[0], rel=1e-6)


def test_kl_bound_of_a_rare_target_keeps_its_digits():
    hidden, weight, bias = synthetic(positions=256, seed=3)
    bias[5] = -30.0  # p_5 about 1e-14 or less
    mean = hidden.astype(np.float64).mean(0)
    direction = mean / (mean @ mean)
    effects = SteeringEvaluator(hidden, weight, bias, np.array([5])).evaluate(
        np.array([5]), np.array([10.0]), direction)
    z = hidden.astype(np.float64) @ weight.astype(np.float64).T + bias
    p = softmax(z, axis=1)[:, 5]
    shift = hidden.astype(np.float64) @ (-np.log(10.0) * direction)
    # g = log(1 − p + p·e^s) ≈ p·(e^s − 1); KL(a ‖ b) ≈ Var_a(g) / 2 to O(g³).
    g = p * np.expm1(shift)
    second_order = 0.5 * np.mean((g - g.mean()) ** 2)
    assert 0 < effects.kl_other_bound[0] < 1e-20
    assert effects.kl_other_bound[0] == pytest.approx(second_order, rel=1e-4)


def test_effective_positions_counts_the_positions_the_weights_rest_on():
    assert effective_positions(np.full(40, 0.3)) == pytest.approx(40.0)
    assert effective_positions(np.eye(1, 50)[0] * 1e-9) == pytest.approx(1.0)
    weights = np.random.default_rng(0).random(100) ** 4
    assert effective_positions(weights) == pytest.approx(
        weights.sum() ** 2 / (weights ** 2).sum(), rel=1e-12)
    assert effective_positions(weights * 1e-6) == pytest.approx(effective_positions(weights))
