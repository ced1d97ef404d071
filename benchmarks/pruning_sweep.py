"""The pruning sweep (paper §4) from cached hidden states against full forward passes.

`tokprob.pruning.sweep` computes every metric (per-position KL and JS, top-1 agreement,
perplexity, KL and JS of α) for every method and fraction from the held-out final hidden
states: the logit change of a plain deletion order is updated along its nested
fractions, a compensated one's is computed at each. The baseline writes the pruned E
(columns zeroed, and for the compensated orders the prediction of the deleted
coordinates folded into the kept ones) into the untied LM head and runs the model over
the same windows for each (method, fraction), then compares the distributions with the
same code (`tokprob.distribution_change.accumulate`, float32). The baseline is timed on
a few configurations and its time per configuration multiplied by the sweep's size; its
per-position KL is compared with the sweep's on those ("same numbers"). Goal: ≥ 20×
faster.

Both sides compare full next-token distributions over the vocabulary at every position
for every configuration (`tokprob.distribution_change`); the cached side saves the
transformer body and most of the LM head. For a model whose LM head is a large part of
its compute (SmolLM2-135M: |V| = 49,152 against d = 576 and 30 thin layers) those
comparisons and the compensated orders' logit changes bound the speed-up below 20×.

    python -m benchmarks --only pruning_sweep [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks._common import BATCH_SIZE, Fixture, Result, header, verdict
from benchmarks._lm_head import editable_model, heldout
from tokprob.config import PruningConfig
from tokprob.distribution_change import Reference, Totals, accumulate
from tokprob.head import output_head
from tokprob.probabilities import batches
from tokprob.pruning import (
    deletion_plans,
    embedding_metric,
    second_moment,
    sweep,
)
from tokprob.regression import fit_ols
from tokprob.windows import next_tokens

NAME = "pruning_sweep"
GOAL = 20.0


def run(fixture: Fixture, quick: bool) -> list[Result]:
    header(NAME, "pruning.sweep on cached hidden states vs pruned head + full forward")
    n_tokens, baseline_configs = (512, 2) if quick else (2048, 3)
    windows, hidden, hidden_seconds = heldout(fixture, n_tokens)
    targets = next_tokens(windows)  # windows × length
    weight = output_head(fixture.model("float32")).weight.numpy()
    alpha = fixture.alpha(2048).alpha
    fit = fit_ols(weight, -np.log(alpha))
    config = PruningConfig()
    # The compensated orders' HᵀH from the same hidden states (the flow takes it from the
    # detecting split's): what is timed is the same work.
    plans = deletion_plans(np.nan_to_num(np.abs(fit.t)), np.linalg.norm(weight, axis=0),
                           config.random_seeds, second_moment(hidden),
                           embedding_metric(weight, alpha))
    configurations = len(plans) * len(config.fractions)
    print(f"  {configurations} configurations ({len(plans)} deletion orders × "
          f"{len(config.fractions)} fractions) on {len(hidden):,} held-out positions; "
          f"hidden states once: {hidden_seconds:.1f} s")

    started = time.perf_counter()
    table = sweep(hidden, targets.ravel(), weight, None, plans, config.fractions)
    cached_seconds = time.perf_counter() - started

    model = editable_model(fixture)
    head = output_head(model).weight
    # The original distributions once, as the sweep computes them once: the baseline's
    # time per configuration is the pruned model's forward pass and its comparison.
    references = [(batch, Reference.of(_logits(model, batch),
                                       torch.as_tensor(batch_targets.ravel())))
                  for batch, batch_targets in zip(batches(windows, BATCH_SIZE),
                                                  batches(targets, BATCH_SIZE), strict=True)]
    chosen = [(plans[0], 0.3), (plans[-1], 0.5), (plans[1], 0.9)][:baseline_configs]
    differences = []
    started = time.perf_counter()
    for plan, fraction in chosen:
        with torch.no_grad():
            head.copy_(torch.from_numpy(plan.pruned_weight(weight, fraction).astype(np.float32)))
        total = Totals()
        for batch, reference in references:
            accumulate(total, reference, _logits(model, batch) - reference.logits)
        row = table[(table["method"] == plan.method) & (table["seed"] == plan.seed)
                    & (table["fraction"] == fraction)].iloc[0]
        differences.append(abs(row["kl"] / (total.kl / len(hidden)) - 1.0))
    per_config = (time.perf_counter() - started) / len(chosen)
    baseline_seconds = per_config * configurations
    speedup = baseline_seconds / cached_seconds
    worst = max(differences)
    print(f"  cached sweep {cached_seconds:.1f} s; full forward {per_config:.2f} s per "
          f"configuration, × {configurations} = {baseline_seconds:.0f} s")
    print(f"  speed-up {speedup:.0f}×; goal ≥ {GOAL:.0f}×: {verdict(speedup >= GOAL)}")
    print(f"  mean KL, sweep vs full forward on {len(chosen)} configurations: max relative "
          f"difference {worst:.1e}")
    return [
        Result(NAME, "full-forward s ÷ cached-hidden-state s", f"{speedup:.0f}×",
               f"≥ {GOAL:.0f}×", speedup >= GOAL),
        Result(NAME, "max rel. diff. of mean KL", f"{worst:.1e}", "≤ 1e-04", worst <= 1e-4),
    ]


def _logits(model, batch: np.ndarray) -> torch.Tensor:
    """float32 logits of every position of a batch of windows: (positions, vocab)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.as_tensor(batch, dtype=torch.long)).logits
    return logits.float().reshape(-1, logits.shape[-1])
