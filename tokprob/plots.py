"""PNG figures of the encoding analysis (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

DPI = 120


def pca_scatter(scores: np.ndarray, percentile: np.ndarray, title: str, path: Path) -> None:
    """The paper's Figure 1: first two principal components coloured by α percentile."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    order = np.argsort(percentile)  # draw frequent tokens last, on top
    points = ax.scatter(scores[order, 0], scores[order, 1], c=percentile[order], s=2,
                        cmap="viridis", rasterized=True, linewidths=0)
    fig.colorbar(points, ax=ax, label="percentile of α")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    _save(fig, path)


def abs_t_sorted(dimensions: pd.DataFrame, threshold: float, title: str, path: Path) -> None:
    """|t| of every dimension, sorted, against the Bonferroni threshold."""
    values = np.sort(np.nan_to_num(dimensions["abs_t"].to_numpy()))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(np.arange(1, len(values) + 1), values, lw=1.5)
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label="Bonferroni threshold")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dimension rank by |t|")
    ax.set_ylabel("|t|")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def topk_adj_r2(curves: pd.DataFrame, full_adj_r2: float, title: str, path: Path) -> None:
    """Adjusted R² against k for the top-k dimensions (by |t|) and components."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = {"dimensions": "top-k dimensions by |t|", "components": "top-k principal components"}
    for basis, curve in curves.groupby("basis", sort=False):
        ax.plot(curve["k"], curve["adj_r2"], marker="o", ms=3, label=labels.get(basis, basis))
    ax.axhline(full_adj_r2, color="grey", ls=":", lw=1, label="all dimensions")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("adjusted R²")
    ax.set_title(title)
    ax.legend(loc="lower right")
    _save(fig, path)


def predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, r2: float, title: str,
                        path: Path) -> None:
    """Predicted against actual −log α, one point per token (hexbin density)."""
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    cells = ax.hexbin(actual, predicted, gridsize=80, bins="log", cmap="magma_r", mincnt=1)
    fig.colorbar(cells, ax=ax, label="tokens (log)")
    low, high = np.percentile(np.concatenate([actual, predicted]), [0.1, 99.9])
    ax.plot([low, high], [low, high], color="tab:blue", lw=1)
    ax.set_xlabel("actual −log α")
    ax.set_ylabel("predicted −log α")
    ax.set_title(f"{title}\nR² = {r2:.3f}")
    _save(fig, path)


def component_correlations(components: pd.DataFrame, title: str, path: Path,
                           shown: int = 64) -> None:
    """|r| with −log α and explained variance of the leading components."""
    head = components.head(shown)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.bar(head["component"] + 1, head["r"].abs(), color="tab:blue", label="|r| with −log α")
    ax.set_xlabel("principal component")
    ax.set_ylabel("|r|")
    twin = ax.twinx()
    twin.plot(head["component"] + 1, head["explained_variance_ratio"], color="tab:orange",
              lw=1.5, label="explained variance ratio")
    twin.set_ylabel("explained variance ratio")
    ax.set_title(title)
    fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88))
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)


STEERING_METHODS = {
    "closed_form": "closed form (paper §3)",
    "calibrated": "calibrated embedding edit",
    "logit_bias": "calibrated logit bias (ceiling)",
}


def _method_panels(sweep: pd.DataFrame, height: float, sharey: bool = True):
    methods = [m for m in STEERING_METHODS if m in set(sweep["method"])]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), height),
                             sharey=sharey, squeeze=False)
    return fig, [(m, sweep[sweep["method"] == m], ax) for m, ax in zip(methods, axes[0],
                                                                       strict=True)]


def steering_accuracy(sweep: pd.DataFrame, title: str, path: Path) -> None:
    """Achieved α'/α against the requested r (log–log), one panel per method, one line per
    α percentile (feasible pairs)."""
    fig, panels = _method_panels(sweep, 4.6)
    ratios = np.sort(sweep["r"].unique())
    for method, rows, ax in panels:
        for percentile, group in rows.groupby("percentile", dropna=False):
            label = "your tokens" if np.isnan(percentile) else f"α percentile {percentile:g}"
            medians = group.groupby("r")["achieved"].median()
            ax.plot(medians.index, medians.to_numpy(), marker="o", ms=3, label=label)
        ax.plot(ratios, ratios, color="black", ls="--", lw=1, label="achieved = requested")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("requested ratio r")
        ax.set_title(f"{STEERING_METHODS[method]}\nmedian |log error| "
                     f"{rows['abs_log_error'].median():.3f}", fontsize=9)
    panels[0][2].set_ylabel("achieved ratio α'/α (held-out, median over tokens)")
    panels[0][2].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def steering_error_by_percentile(sweep: pd.DataFrame, title: str, path: Path) -> None:
    """|log(α'/α) − log r| of every target token against its α percentile, per r, one
    panel per method."""
    fig, panels = _method_panels(sweep, 4.0)
    for method, rows, ax in panels:
        magnitude = np.abs(np.log(rows["r"].to_numpy()))
        points = ax.scatter(rows["alpha_percentile"], rows["abs_log_error"], c=magnitude,
                            s=14, cmap="viridis")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)  # errors are absolute values
        ax.set_xlabel("α percentile of the target token")
        ax.set_title(STEERING_METHODS[method], fontsize=9)
    fig.colorbar(points, ax=panels[-1][2], label="|log r|")
    panels[0][2].set_ylabel("|log(α'/α) − log r|")
    fig.suptitle(title)
    _save(fig, path)


def steering_error_by_support(sweep: pd.DataFrame, well_measured: float, title: str,
                              path: Path) -> None:
    """Each target's median error over r against its support (column `support`: the fewer
    effective positions of the two splits that its α rests on), one colour per method; the
    dashed line marks the support from which a target counts as well measured."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    per_target = sweep.groupby(["method", "token_id"], sort=False)
    medians = per_target.agg(support=("support", "first"), error=("abs_log_error", "median"))
    for method in [m for m in STEERING_METHODS if m in set(sweep["method"])]:
        rows = medians.loc[method]
        ax.scatter(rows["support"], rows["error"], s=18, label=STEERING_METHODS[method])
    ax.axvline(well_measured, color="black", ls="--", lw=1, label="well measured from here")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)  # errors are absolute values
    ax.set_xlabel("support: effective positions the target's α rests on (fewer split)")
    ax.set_ylabel("median |log(α'/α) − log r| over r")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)


def steering_error_by_fewshot(sweep: pd.DataFrame, title: str, path: Path) -> None:
    """Median and 90th-percentile error against the number of detecting windows each
    method was fitted on (A for the closed form; u and c for the calibrated edits)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, rows in sweep.groupby("method", sort=False):
        errors = rows.groupby("n_fit")["abs_log_error"]
        line, = ax.plot(errors.median().index, errors.median().to_numpy(), marker="o", ms=3,
                        label=f"{STEERING_METHODS[method]}: median")
        ax.plot(errors.quantile(0.9).index, errors.quantile(0.9).to_numpy(), ls=":",
                color=line.get_color(), label="90th percentile")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("detecting windows used to fit the edit")
    ax.set_ylabel("|log(α'/α) − log r|")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


PRUNING_PANELS = {
    "kl": "mean KL(p ‖ p') per position",
    "js": "mean JS(p, p') per position",
    "alpha_js": "JS(α, α') of the averaged distributions",
    "top1_agreement": "top-1 agreement",
    "perplexity": "perplexity",
    "generation_match": "greedy generation match rate",
}
METHOD_COLOURS = {"saliency": "tab:blue", "norm": "tab:orange", "random": "tab:grey",
                  "compensated": "tab:green", "compensated-greedy": "tab:purple"}


def pruning_metrics(table: pd.DataFrame, title: str, path: Path) -> None:
    """Each metric against the fraction deleted: one colour per method (random: mean over
    seeds), solid in distribution, dashed out of distribution."""
    panels = [name for name in PRUNING_PANELS if name in table]
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels, strict=False):
        for (method, split), group in table.groupby(["method", "split"], sort=True):
            curve = group.groupby("fraction")[name].mean()
            ax.plot(curve.index, curve.to_numpy(), color=METHOD_COLOURS.get(method, "black"),
                    ls="-" if split == "id" else "--", marker="o", ms=2.5,
                    label=f"{method} ({split})")
        if name in ("kl", "js", "alpha_js"):
            ax.set_yscale("symlog", linthresh=1e-5)
        ax.set_title(PRUNING_PANELS[name], fontsize=10)
        ax.set_xlabel("fraction of dimensions deleted")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def pruning_alpha_js(table: pd.DataFrame, threshold: float, title: str, path: Path) -> None:
    """The headline metric, JS(α, α'), against the fraction deleted, with the threshold."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (method, split), group in table.groupby(["method", "split"], sort=True):
        curve = group.groupby("fraction")["alpha_js"].mean()
        ax.plot(curve.index, np.maximum(curve.to_numpy(), 1e-12),
                color=METHOD_COLOURS.get(method, "black"), ls="-" if split == "id" else "--",
                marker="o", ms=3, label=f"{method} ({split})")
    ax.axhline(threshold, color="tab:red", lw=1, ls=":", label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of dimensions deleted")
    ax.set_ylabel("JS(α, α')")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def dynamics_encoding(table: pd.DataFrame, title: str, path: Path) -> None:
    """Adjusted R² of −log frequency (and −log α) against step, log and linear x axes."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, scale in zip(axes, ("symlog", "linear"), strict=True):
        ax.plot(table["step"], table["adj_r2_freq"], marker="o", ms=3,
                label="−log frequency ~ E")
        if table["adj_r2_alpha"].notna().any():
            ax.plot(table["step"], table["adj_r2_alpha"], marker="s", ms=3,
                    label="−log α ~ E")
        ax.set_xscale(scale, **({"linthresh": 1} if scale == "symlog" else {}))
        ax.set_xlabel(f"training step ({'log' if scale == 'symlog' else 'linear'} axis)")
        ax.set_ylabel("adjusted R²")
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def dynamics_convergence(table: pd.DataFrame, title: str, path: Path) -> None:
    """Relative distance to the final checkpoint per parameter group against step."""
    groups = sorted(c.removeprefix("rel_distance_") for c in table
                    if c.startswith("rel_distance_") and c != "rel_distance_mean")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(groups), 1)))
    for ax, scale in zip(axes, ("symlog", "linear"), strict=True):
        for group, colour in zip(groups, colours, strict=True):
            ax.plot(table["step"], table[f"rel_distance_{group}"], color=colour, lw=1.2,
                    label=group)
        ax.plot(table["step"], table["rel_distance_mean"], color="black", ls="--", lw=1.5,
                label="mean")
        ax.set_xscale(scale, **({"linthresh": 1} if scale == "symlog" else {}))
        ax.set_xlabel(f"training step ({'log' if scale == 'symlog' else 'linear'} axis)")
        ax.set_ylabel("‖θ − θ_final‖ / ‖θ_final‖")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    _save(fig, path)
