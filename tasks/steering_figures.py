"""Stage `steering-figures`: the plots of the steering sweep, in a module of their own so
that editing a plot never re-runs the sweep."""

from __future__ import annotations

from tasks._stage import publish_markdown, stage
from tasks.catalog import STEERING_SWEEP
from tokprob import plots
from tokprob.steering import WELL_MEASURED, support
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "steering-figures"
FIGURES = {
    "accuracy": "steering_accuracy.png",
    "by_percentile": "steering_error_by_percentile.png",
    "by_fewshot": "steering_error_by_fewshot.png",
    "by_support": "steering_error_by_support.png",
}


@stage(STAGE)
def steering_figures(out: ArtifactWriter, steering: ArtifactRef) -> None:
    """Plots of the steering sweep."""
    sweep = STEERING_SWEEP.read(steering)
    subject = out.summary.get("subject", "")
    largest = sweep.groupby("method")["n_fit"].transform("max")
    full = sweep[sweep["n_fit"] == largest]
    plots.steering_accuracy(full, f"{subject}: steering α by editing E",
                            out.path(FIGURES["accuracy"]))
    plots.steering_error_by_percentile(full, f"{subject}: steering error by α percentile",
                                       out.path(FIGURES["by_percentile"]))
    plots.steering_error_by_fewshot(sweep, f"{subject}: steering from few detecting windows",
                                    out.path(FIGURES["by_fewshot"]))
    plots.steering_error_by_support(full.assign(support=support(full)), WELL_MEASURED,
                                    f"{subject}: steering error by the targets' support",
                                    out.path(FIGURES["by_support"]))
    out.summary["figures"] = FIGURES
    publish_markdown(STAGE, out, "\n".join(f"- `{name}`" for name in FIGURES.values()),
                     "Plots of the steering sweep (PNG files in the artifact folder)")
