"""The steering sweep (paper §3) from cached hidden states against full forward passes.

`tokprob.steering.SteeringEvaluator` evaluates every (token, r) edit of the LM head from
the held-out final hidden states the `hidden` stage stores once; the baseline edits the
untied LM head of the model and runs it over the same held-out windows for each edit,
reading α'_w/α_w and the KL over the other tokens from the full softmax. The baseline is
timed on a few edits and its time per edit multiplied by the sweep's size; its numbers
are compared with the evaluator's on those edits ("same results"). Goal: ≥ 20× faster.

Then the whole sweep of the `steering` stage (closed form with few-shot fits, calibrated
edit and logit bias, each fitted on 1, 2, 4, … detecting windows): the LM-head passes it
makes over the positions, against the 3 allowed (the normalizer computed once), and its
time against one LM-head pass. By default the side effect on other tokens is the bound
that costs no pass, so nothing per pair grows with |V|; with `exact_kl` the exact KL adds
a pass and, beyond it, positions × pairs × |V| work: pairs / d passes.

    python -m benchmarks --only steering_sweep [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks._common import Fixture, Result, header, verdict
from benchmarks._lm_head import editable_model, forward_probabilities, heldout
from tokprob import steering
from tokprob.calibration import calibrated_fits, closed_form_fit, evaluate_fits
from tokprob.config import SteeringConfig
from tokprob.head import output_head
from tokprob.regression import fit_ols
from tokprob.steering import (
    SteeringEvaluator,
    omega_mask,
    sample_targets,
    steer_embeddings,
    steering_direction,
    target_logits,
)
from tokprob.windows import DETECT

NAME = "steering_sweep"
GOAL = 20.0
PASSES = 3


def run(fixture: Fixture, quick: bool) -> list[Result]:
    header(NAME, "SteeringEvaluator on cached hidden states vs edit + full forward per pair")
    n_tokens, baseline_pairs = (1024, 2) if quick else (4096, 4)
    windows, hidden, hidden_seconds = heldout(fixture, n_tokens)
    weight = output_head(fixture.model("float32")).weight.numpy()
    alpha = fixture.alpha(2048).alpha
    fit = fit_ols(weight, -np.log(alpha))
    direction = steering_direction(fit.slope, omega_mask(fit.table(), "bonferroni"))
    config = SteeringConfig()
    targets = [t for t, _ in sample_targets(alpha, np.ones(len(alpha), bool),
                                            config.percentiles, 3, 0)]
    tokens = np.repeat(targets, len(config.ratios))
    ratios = np.tile(config.ratios, len(targets))
    print(f"  {len(tokens)} pairs ({len(targets)} tokens × {len(config.ratios)} ratios) on "
          f"{len(hidden):,} held-out positions; hidden states once: {hidden_seconds:.1f} s")

    started = time.perf_counter()
    effects = SteeringEvaluator(hidden, weight, None, tokens).evaluate(tokens, ratios, direction)
    cached_seconds = time.perf_counter() - started

    model = editable_model(fixture)
    head = output_head(model).weight
    before = forward_probabilities(model, windows).mean(0)
    picks = np.linspace(0, len(tokens) - 1, baseline_pairs).astype(int)
    started = time.perf_counter()
    differences = []
    for k in picks:
        steered = steer_embeddings(weight, {int(tokens[k]): float(ratios[k])}, direction)
        with torch.no_grad():
            head[int(tokens[k])] = torch.from_numpy(steered[int(tokens[k])])
        after = forward_probabilities(model, windows).mean(0)
        with torch.no_grad():
            head[int(tokens[k])] = torch.from_numpy(weight[int(tokens[k])])
        achieved = float(after[tokens[k]] / before[tokens[k]])
        differences.append(abs(achieved / effects.achieved[k] - 1.0))
    per_pair = (time.perf_counter() - started) / len(picks)
    baseline_seconds = per_pair * len(tokens)
    speedup = baseline_seconds / cached_seconds
    worst = max(differences)
    print(f"  cached sweep {cached_seconds:.2f} s (KL over other tokens included); full "
          f"forward {per_pair:.2f} s per pair, × {len(tokens)} pairs = {baseline_seconds:.0f} s")
    print(f"  speed-up {speedup:.0f}×; goal ≥ {GOAL:.0f}×: {verdict(speedup >= GOAL)}")
    print(f"  achieved ratio, evaluator vs full forward on {len(picks)} pairs: max relative "
          f"difference {worst:.1e}")
    pass_seconds = _one_pass_seconds(hidden, weight, tokens)
    _, detect, _ = heldout(fixture, n_tokens, DETECT)
    window = np.arange(len(detect)) // fixture.windows.tokens.shape[1]
    passes, sweep_seconds = _whole_sweep(hidden, detect, window, weight, direction, tokens,
                                         ratios, exact_kl=False)
    exact_passes, exact_seconds = _whole_sweep(hidden, detect, window, weight, direction,
                                               tokens, ratios, exact_kl=True)
    kl_pairs = 3 * len(tokens)  # the exact KL of each method's full fit
    kl_passes = kl_pairs / weight.shape[1]
    print(f"  whole sweep (3 methods, few-shot fits, KL bound): {passes} LM-head passes of "
          f"{PASSES} allowed, {sweep_seconds:.1f} s = {sweep_seconds / pass_seconds:.1f}× one "
          f"LM-head pass ({pass_seconds:.1f} s); goal ≤ {PASSES} passes and no per-pair work "
          f"over |V|: {verdict(passes <= PASSES)}")
    print(f"  with --exact-kl: {exact_passes} LM-head passes, {exact_seconds:.1f} s = "
          f"{exact_seconds / pass_seconds:.1f}× one pass; the exact KL's product over "
          f"{kl_pairs} pairs adds positions × pairs × |V| multiply-adds = {kl_passes:.2f} "
          "passes (pairs / d)")
    return [
        Result(NAME, "LM-head passes of the whole sweep", f"{passes}", f"≤ {PASSES}",
               passes <= PASSES),
        Result(NAME, "with --exact-kl: passes + product work", f"{exact_passes} + "
               f"{kl_passes:.2f}", "(optional)", True),
        Result(NAME, "full-forward s ÷ cached-hidden-state s", f"{speedup:.0f}×",
               f"≥ {GOAL:.0f}×", speedup >= GOAL),
        Result(NAME, "max rel. diff. of achieved α'/α", f"{worst:.1e}", "≤ 1e-05",
               worst <= 1e-5),
    ]


def _one_pass_seconds(hidden: np.ndarray, weight: np.ndarray, tokens: np.ndarray) -> float:
    started = time.perf_counter()
    target_logits(hidden, weight, None, np.unique(tokens))
    return time.perf_counter() - started


def _whole_sweep(hidden: np.ndarray, detect: np.ndarray, window: np.ndarray,
                 weight: np.ndarray, direction: np.ndarray, tokens: np.ndarray,
                 ratios: np.ndarray, exact_kl: bool) -> tuple[int, float]:
    """The steering stage's computation, counting the passes that read all of E."""
    passes = []
    original = steering.read_only_tensor

    def counting(array, *args, **kwargs):
        if array is weight:
            passes.append(1)
        return original(array, *args, **kwargs)

    steering.read_only_tensor = counting
    try:
        started = time.perf_counter()
        evaluator = SteeringEvaluator(hidden, weight, None, tokens)
        detect_logits = target_logits(detect, weight, None, evaluator.stats.tokens)
        fits = [closed_form_fit(evaluator, direction, ratios, n) for n in (1, 2, 4, 8)]
        used = [2 ** k for k in range(int(window.max()).bit_length() + 1)]
        fits += calibrated_fits(evaluator, detect_logits, detect, window, tokens, ratios, used)
        evaluate_fits(evaluator, fits, tokens, ratios, exact_kl)
        sweep_seconds = time.perf_counter() - started
    finally:
        steering.read_only_tensor = original
    return len(passes), sweep_seconds
