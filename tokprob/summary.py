"""Human-readable summaries of an encoding run: terminal text and Markdown."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tokprob.resampling import INTERVAL
from tokprob.steering import CALIBRATED_GOAL, WELL_MEASURED


def regression_markdown(statistics: dict[str, Any], table: pd.DataFrame, top: int = 10) -> str:
    """The fit's statistics and its most salient dimensions, as Markdown."""
    strongest = table.assign(abs_t=table["t"].abs()).nlargest(top, "abs_t")
    lines = [
        f"**R²** {statistics['r2']:.4f} · **adjusted R²** {statistics['adj_r2']:.4f} · "
        f"**F** {statistics['f_stat']:.1f} (p = {statistics['f_pvalue']:.3g}) · "
        f"n = {statistics['n']:,} tokens, d = {statistics['k']}",
        "",
        f"Target: −log {'α' if statistics.get('target', 'alpha') == 'alpha' else 'frequency'}",
        "",
        "| dim | slope | std err | t | p |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in strongest.itertuples():
        lines.append(f"| {row.dim} | {row.slope:.4g} | {row.std_err:.3g} | {row.t:.2f} "
                     f"| {row.p:.3g} |")
    return "\n".join(lines)


def encoding_text(result: dict[str, Any]) -> str:
    """The summary printed at the end of `tokprob run encoding`."""
    lines = [
        f"tokprob encoding: {result['model']} on {result['dataset']}",
        f"  α over {result['n_tokens']:,} tokens ({result['n_windows']} windows of "
        f"{result['window']}), perplexity {result['perplexity']:.2f}",
        f"  vocabulary {result['vocab_size']:,} · hidden size {result['hidden_size']} · "
        f"tied embeddings: {'yes' if result['tied'] else 'no'}",
        f"  −log α ~ E:  R² {result['r2']:.4f}   adjusted R² {result['adj_r2']:.4f}   "
        f"F {result['f_stat']:.1f}",
        f"  sparsity: {result['significant_dims']} of {result['hidden_size']} dimensions "
        "Bonferroni-significant",
        f"    adjusted R² of the top-k dimensions by |t|: {_at_k(result['topk_dims_adj_r2'])}",
        f"    adjusted R² of the top-k principal components: "
        f"{_at_k(result['topk_components_adj_r2'])}",
        f"    PC1 r = {result['pc1_r']:.3f}, PC2 r = {result['pc2_r']:.3f} with −log α",
        *_stages_and_plots(result),
        "  artifacts:",
        *(f"    {stage:<14}{path}" for stage, path in result["artifacts"].items()),
    ]
    return "\n".join(lines)


def encoding_markdown(result: dict[str, Any]) -> str:
    """The same summary as a Markdown artifact for the Prefect UI."""
    rows = [
        ("model", result["model"]), ("dataset", result["dataset"]),
        ("tokens", f"{result['n_tokens']:,}"), ("perplexity", f"{result['perplexity']:.2f}"),
        ("vocabulary", f"{result['vocab_size']:,}"), ("hidden size", result["hidden_size"]),
        ("tied", result["tied"]), ("R²", f"{result['r2']:.4f}"),
        ("adjusted R²", f"{result['adj_r2']:.4f}"),
        ("significant dimensions", f"{result['significant_dims']} / {result['hidden_size']}"),
        ("adj. R², top-k dimensions", _at_k(result["topk_dims_adj_r2"])),
        ("adj. R², top-k components", _at_k(result["topk_components_adj_r2"])),
        ("PC1 r", f"{result['pc1_r']:.3f}"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    stages = "\n".join(f"| {stage} | {state} | `{result['artifacts'].get(stage, '')}` |"
                       for stage, state in result["stages"].items())
    plots = "\n".join(f"- `{path}`" for path in result["plots"].values())
    return (f"# Encoding: {result['model']} on {result['dataset']}\n\n"
            f"| | |\n|---|---|\n{table}\n\n## Stages\n\n| stage | state | artifact |\n"
            f"|---|---|---|\n{stages}\n\n## Plots\n\n{plots}\n")


def _at_k(values: dict[str, float]) -> str:
    return ", ".join(f"k={k}: {v:.3f}" for k, v in values.items())


def _error_grid(rows: list[dict[str, Any]], by: str = "r",
                ) -> tuple[list[str], list[str], dict]:
    """Methods, values of `by` (r, or the support bin; in order) and (method, value) → row
    of the steering error rows; a statistic over no feasible pair (stored as null) reads
    NaN."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    values = list(dict.fromkeys(row[by] for row in rows))
    return methods, values, {(row["method"], row[by]): {
        key: float("nan") if value is None else value for key, value in row.items()}
        for row in rows}


def steering_text(result: dict[str, Any]) -> str:
    """The summary printed at the end of `tokprob run steering`."""
    comparison = result["comparison"]
    methods, ratios, grid = _error_grid(result["errors"])
    lines = [
        f"tokprob steering: {result['model']} on {result['dataset']}",
        f"  {result['targets']} target tokens across the α range, evaluated on "
        f"{result['heldout_positions']:,} held-out positions; closed form with Ω = "
        f"{result['omega']} ({result['omega_dims']} dimensions), calibrated edits solved on "
        f"{result['detect_positions']:,} detecting positions",
        "  |log(α'/α) − log r| over feasible pairs, median / 90th percentile:",
        "  r      " + "".join(f"{method:>22}" for method in methods),
        *(f"  {r:<5}  " + "".join(f"{_median_p90(grid[m, r]):>22}" for m in methods)
          for r in ratios),
        "  infeasible pairs: " + ", ".join(f"{m} {grid[m, 'all']['infeasible']}"
                                           for m in methods),
        f"  on the {comparison['pairs']} pairs the calibrated edit reaches: median error "
        f"{comparison['closed_form_median']:.3f} (closed form) → "
        f"{_error(comparison['calibrated_median'])} (calibrated), "
        f"{_factor(comparison['improvement'])} lower",
        *_interval_lines(comparison),
        *_support_lines(result),
        "  spread std/|mean| of the logit shift h·direction on held-out text: " + ", ".join(
            f"{method} {value:.3f}" for method, value in result["spread"].items()),
        "  side effect on other tokens, median KL of the averaged distributions (a bound; "
        "exact with --exact-kl): " + ", ".join(
            f"{method} ≤ {bound:.2e}" + ("" if exact is None else f" (exact {exact:.2e})")
            for (method, bound), exact in zip(result["median_kl_other_bound"].items(),
                                              result["median_kl_other"].values(), strict=True)),
        *(f"  few-shot {method} (detecting windows → median error): "
          + ", ".join(f"{n}: {e:.3f}" for n, e in errors.items())
          for method, errors in result["fewshot_median_error"].items()),
        "  detecting windows the calibrated edit needs for a median error ≤ "
        f"{CALIBRATED_GOAL:g}: {result['calibrated_windows_for_goal'] or 'more than stored'}"
        + ("" if "calibrated_windows_for_goal_well_measured" not in result else
           f"; on the targets with support ≥ {WELL_MEASURED:g}: "
           f"{result['calibrated_windows_for_goal_well_measured'] or 'more than stored'}"),
        *_stages_and_plots(result),
        f"  sweep: {result['artifacts']['steering']}",
    ]
    return "\n".join(lines)


def _support_lines(result: dict[str, Any]) -> list[str]:
    """The errors by the targets' support, and the comparison on the well-measured ones."""
    rows = result.get("errors_by_support") or []  # absent from summaries before the bins
    if not rows:
        return []
    methods, bins, grid = _error_grid(rows, by="support")
    lines = ["  by support (effective positions where the target is probable, the fewer of "
             "the two splits), all r:",
             "  support  " + "".join(f"{method:>22}" for method in methods),
             *(f"  {b:<7}  " + "".join(f"{_median_p90(grid[m, b]):>22}" if (m, b) in grid
                                       else f"{'-':>22}" for m in methods) for b in bins)]
    measured = result.get("comparison_well_measured")
    if measured:
        lines.append(f"  targets with support ≥ {WELL_MEASURED:g}: median error "
                     f"{measured['closed_form_median']:.3f} (closed form) → "
                     f"{_error(measured['calibrated_median'])} (calibrated) on "
                     f"{measured['pairs']} pairs")
        lines += _interval_lines(measured)
    return lines


def _interval_lines(comparison: dict[str, Any]) -> list[str]:
    phrase = _interval_phrase(comparison)
    return [f"    {phrase}"] if phrase else []


def _interval_phrase(comparison: dict[str, Any]) -> str:
    """How far the comparison's medians could move with another draw of targets; empty
    for summaries written before the intervals."""
    if "improvement_interval" not in comparison:
        return ""
    low, high = comparison["calibrated_median_interval"]
    fewer, more = comparison["improvement_interval"]
    return (f"{INTERVAL:.0%} interval over resampled targets: calibrated median "
            f"{_error(low)} to {_error(high)}, {_factor(fewer)} to {_factor(more)} lower")


def _error(value: float) -> str:
    """An error to four decimals, or in scientific notation where that would show 0.0000
    (a calibrated edit of a LayerNorm model misses by about 1e-6)."""
    return f"{value:.4f}" if not 0 < value < 5e-5 else f"{value:.1e}"


def _factor(value: float) -> str:
    """A ratio such as 9.8× (not rounded up to a goal of 10×), whole from 10 on."""
    return f"{value:.1f}×" if value < 10 else f"{value:.0f}×"


def _median_p90(stats: dict[str, Any]) -> str:
    return f"{_error(stats['median'])} / {_error(stats['p90'])}"


def steering_markdown(result: dict[str, Any]) -> str:
    methods, ratios, grid = _error_grid(result["errors"])
    header = " | ".join(f"{method} median | 90th pct" for method in methods)
    rows = "\n".join(f"| {r} | " + " | ".join(f"{_error(grid[m, r]['median'])} | "
                                              f"{_error(grid[m, r]['p90'])}" for m in methods)
                     + " |" for r in ratios)
    comparison = result["comparison"]
    interval = _interval_phrase(comparison)
    return (f"# Steering: {result['model']} on {result['dataset']}\n\n"
            f"{result['targets']} targets; closed form with Ω = {result['omega']} "
            f"({result['omega_dims']} dimensions). On the {comparison['pairs']} pairs the "
            f"calibrated edit reaches, median |log error| {comparison['closed_form_median']:.3f}"
            f" (closed form) → {_error(comparison['calibrated_median'])} (calibrated). "
            + (f"{interval}. " if interval else "")
            + "Median KL over the other tokens, at most: " + ", ".join(
                f"{method} {bound:.2e}"
                for method, bound in result["median_kl_other_bound"].items()) + "."
            + _well_measured_sentence(result) + "\n\n"
            f"| r | {header} |\n|---:|" + "---:|" * (2 * len(methods)) + f"\n{rows}\n")


def _well_measured_sentence(result: dict[str, Any]) -> str:
    measured = result.get("comparison_well_measured")
    if not measured:
        return ""
    return (f" On the {measured['pairs']} pairs of targets whose α rests on at least "
            f"{WELL_MEASURED:g} effective positions in both splits: "
            f"{measured['closed_form_median']:.3f} → {_error(measured['calibrated_median'])}.")


def _pruning_rows(result: dict[str, Any]) -> list[tuple[str, str, float, dict[str, Any]]]:
    return [(row["method"], row["split"], row["fraction"], row) for row in result["metrics"]]


def pruning_text(result: dict[str, Any]) -> str:
    """The summary printed at the end of `tokprob run pruning`."""
    headline = result["headline"]
    lines = [
        f"tokprob pruning: {result['model']}, {result['dimensions']} output-embedding "
        f"dimensions; in distribution {result['dataset']}, out of distribution "
        f"{result['ood_dataset']}",
        f"  deletable with JS(α, α') < {result['js_threshold']:g}:",
        *(f"    {method:<18} in distribution {headline[f'{method}/id']:>4.0%}   "
          f"out of distribution {headline[f'{method}/ood']:>4.0%}"
          for method in dict.fromkeys(key.split("/")[0] for key in headline)),
        "  method             split  fraction   mean KL   JS(α,α')   top-1   perplexity   "
        "gen. match",
    ]
    for method, split, fraction, row in _pruning_rows(result):
        if round(fraction * 10, 6) % 3 != 0:  # 0, 30, 60, 90%: enough for a terminal
            continue
        lines.append(
            f"  {method:<18} {split:<5}  {fraction:>7.0%}   {row['kl']:.2e}   "
            f"{row['alpha_js']:.2e}   {row['top1_agreement']:.3f}   "
            f"{row['perplexity']:>10.2f}   {row.get('generation_match', float('nan')):.3f}")
    lines += [
        *_stages_and_plots(result),
        f"  metrics: {result['artifacts']['pruning']}",
    ]
    return "\n".join(lines)


def pruning_markdown(result: dict[str, Any]) -> str:
    headline = "\n".join(f"| {key} | {value:.0%} |" for key, value in result["headline"].items())
    rows = "\n".join(
        f"| {method} | {split} | {fraction:.0%} | {row['kl']:.2e} | {row['js']:.2e} | "
        f"{row['alpha_js']:.2e} | {row['top1_agreement']:.3f} | {row['perplexity']:.2f} | "
        f"{row.get('generation_match', float('nan')):.3f} |"
        for method, split, fraction, row in _pruning_rows(result))
    return (f"# Pruning: {result['model']}\n\nDeletable with JS(α, α') < "
            f"{result['js_threshold']:g}:\n\n| method/split | fraction |\n|---|---:|\n"
            f"{headline}\n\n| method | split | fraction | KL | JS | JS(α,α') | top-1 | "
            f"perplexity | gen. match |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
            f"{rows}\n")


def frequency_note(dataset: str, training_data: bool) -> str:
    """Which corpus f_w is counted on: the paper counts it on the training data, which
    only the built-in pre-training run has; hub checkpoints get the user's corpus."""
    if training_data:
        return f"f_w is counted on {dataset}, the corpus the checkpoints were trained on."
    return (f"f_w is counted on {dataset}, not on the checkpoints' training data: the "
            "adjusted R² of −log f measures how E encodes this corpus's frequencies.")


def dynamics_text(result: dict[str, Any]) -> str:
    """The summary printed at the end of `tokprob run dynamics`."""
    lines = [
        f"tokprob dynamics: {len(result['checkpoints'])} checkpoints, token frequencies in "
        f"{result['dataset']}",
        f"  {result['frequency_note']}",
        "     step   tokens seen     loss   adj R² −log f   adj R² −log α   rel. distance",
        *(f"  {c['step']:>7}   {_number(c['tokens_seen']):>11}   {_number(c['loss'], 3):>6}   "
          f"{c['adj_r2_freq']:>13.3f}   {_number(c['adj_r2_alpha'], 3):>13}   "
          f"{c['rel_distance_mean']:>13.3f}" for c in result["checkpoints"]),
        f"  frequency encoding passes half its final adjusted R² at step "
        f"{_number(result['freq_half_step'])}; parameters come within half their initial "
        f"distance of the final checkpoint at step {_number(result['distance_half_step'])}",
        *_stages_and_plots(result),
        f"  table: {result['artifacts']['dynamics']}",
    ]
    return "\n".join(lines)


def dynamics_markdown(result: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {c['step']} | {_number(c['tokens_seen'])} | {_number(c['loss'], 3)} | "
        f"{c['adj_r2_freq']:.3f} | {_number(c['adj_r2_alpha'], 3)} | "
        f"{c['rel_distance_mean']:.3f} |" for c in result["checkpoints"])
    return (f"# Training dynamics on {result['dataset']}\n\n{result['frequency_note']}\n\n"
            f"Frequency encoding at half strength: step {_number(result['freq_half_step'])}; "
            f"half-way convergence: step {_number(result['distance_half_step'])}\n\n"
            "| step | tokens | loss | adj R² −log f | adj R² −log α | rel. distance |\n"
            f"|---:|---:|---:|---:|---:|---:|\n{rows}\n")


def _stages_and_plots(result: dict[str, Any]) -> list[str]:
    """What every flow's summary ends with: the cache hits, the plots and the report."""
    cached = sum(1 for state in result["stages"].values() if state == "cached")
    lines = [f"  stages: {cached} of {len(result['stages'])} from cache", "  plots:",
             *(f"    {path}" for path in result["plots"].values())]
    if result.get("report"):
        lines.append(f"  report: {result['report']}")
    return lines


def _number(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.{digits}f}"


def paper_text(result: dict[str, Any]) -> str:
    """The comparison printed at the end of `tokprob run paper`."""
    lines = [f"tokprob paper: {len(result['comparison'])} models",
             "  model                       adj R²   top-4 dims   steer err r=2   r=20   "
             "prunable (saliency, id/ood)"]
    for row in result["comparison"]:
        lines.append(
            f"  {row['model'][:26]:<26}  {row['adj_r2']:>6.3f}   {row['adj_r2_top4_dims']:>10.3f}"
            f"   {row['steering_error_r2']:>13.3f}   {row['steering_error_r20']:>4.2f}   "
            f"{row['prunable_saliency_id']:.0%} / {row['prunable_saliency_ood']:.0%}")
    if result.get("freq_half_step") is not None:
        lines.append(f"  dynamics: frequency encoding at half strength by step "
                     f"{_number(result['freq_half_step'])}, parameters half-way converged at "
                     f"step {_number(result['distance_half_step'])}")
    lines.append(f"  report: {result['report']}")
    return "\n".join(lines)
