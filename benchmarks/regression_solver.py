"""The closed-form OLS solver against statsmodels on the real regression (paper §2.1).

`tokprob.regression.fit_ols` (chunked float64 normal equations with refinement) against
`tokprob.regression.fit_ols_statsmodels` (statsmodels OLS, the reference), on the real
problem: X = the output embedding matrix E of the default model (49,152 × 576, float32,
as the regression stage reads it) and y = −log α, with α averaged over the first
detecting windows of the default corpus (one batch, 2,048 tokens; tokens with α = 0 left
out, as the stage does).
Timings are interleaved; the ratio is median statsmodels seconds ÷ median fit_ols
seconds. Goals: ≥ 5× faster, and the same numbers: the largest relative difference of
slope, std_err, t, R² and adjusted R² within the tests' tolerance (1e-8).

    python -m benchmarks --only regression_solver [--quick]
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks._common import BATCH_SIZE, Fixture, Result, header, interleaved, median, verdict
from tokprob.head import output_head
from tokprob.regression import (
    CenteredGram,
    OLSResult,
    encoding_target,
    fit_ols,
    fit_ols_statsmodels,
)

NAME = "regression_solver"
SPEED_GOAL = 5.0
AGREEMENT_GOAL = 1e-8
"""rtol of the integration test that compares the two solvers."""
COMPARED = ("slope", "std_err", "t", "r2", "adj_r2")


def relative_difference(fast: np.ndarray | float, reference: np.ndarray | float) -> float:
    """max |fast − reference| / |reference|, elementwise; entries whose reference is below
    1e-12 of the largest are compared against that floor (as the tests do)."""
    fast = np.atleast_1d(np.asarray(fast, dtype=np.float64))
    reference = np.atleast_1d(np.asarray(reference, dtype=np.float64))
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(fast)):
        return float("inf")
    fast, reference = fast[finite], reference[finite]
    floor = 1e-12 * np.abs(reference).max() if reference.size else 0.0
    scale = np.maximum(np.abs(reference), floor)
    return float((np.abs(fast - reference) / np.where(scale > 0, scale, 1.0)).max())


def run(fixture: Fixture, quick: bool) -> list[Result]:
    header(NAME, "fit_ols vs fit_ols_statsmodels on the real E and y = −log α")
    # One batch, the tokens alpha_throughput averages over: its α is reused.
    n_tokens = BATCH_SIZE * fixture.windows.tokens.shape[1]
    repeats = 2 if quick else 3
    alpha = fixture.alpha(n_tokens)
    y = encoding_target(alpha.alpha, alpha.counts, "alpha")
    usable = np.isfinite(y)
    matrix = output_head(fixture.model("float32")).weight.numpy()[usable]
    y = y[usable]
    print(f"  X = E {matrix.shape[0]:,} × {matrix.shape[1]} {matrix.dtype}, y = −log α over "
          f"{alpha.n_positions:,} tokens ({int((~usable).sum())} tokens with α = 0 left out)")

    fits: dict[str, OLSResult] = {}
    seconds = interleaved({
        "fit_ols": lambda: fits.__setitem__("fit_ols", fit_ols(matrix, y)),
        "statsmodels": lambda: fits.__setitem__("statsmodels", fit_ols_statsmodels(matrix, y)),
    }, repeats)
    started = time.perf_counter()
    CenteredGram.compute(matrix, y)
    gram_seconds = time.perf_counter() - started
    fast_s, reference_s = median(seconds["fit_ols"]), median(seconds["statsmodels"])
    speedup = reference_s / fast_s
    print(f"  fit_ols {fast_s:.2f} s, statsmodels {reference_s:.2f} s (median of {repeats}; "
          f"the statsmodels side includes {gram_seconds:.2f} s of CenteredGram.compute that "
          "fit_ols_statsmodels adds to its result)")
    print(f"  speed-up {speedup:.1f}×; goal ≥ {SPEED_GOAL:.0f}×: {verdict(speedup >= SPEED_GOAL)}")

    differences = {name: relative_difference(getattr(fits["fit_ols"], name),
                                             getattr(fits["statsmodels"], name))
                   for name in COMPARED}
    worst = max(differences.values())
    print("  max relative difference: "
          + ", ".join(f"{name} {value:.1e}" for name, value in differences.items()))
    print(f"  R² {fits['statsmodels'].r2:.6f}, adjusted R² {fits['statsmodels'].adj_r2:.6f}; "
          f"same numbers (≤ {AGREEMENT_GOAL:.0e}): {verdict(worst <= AGREEMENT_GOAL)}")
    return [
        Result(NAME, "statsmodels s ÷ fit_ols s", f"{speedup:.1f}×", f"≥ {SPEED_GOAL:.0f}×",
               speedup >= SPEED_GOAL),
        Result(NAME, "max rel. diff. slope, std_err, t, R², adj R²", f"{worst:.1e}",
               f"≤ {AGREEMENT_GOAL:.0e}", worst <= AGREEMENT_GOAL),
    ]
