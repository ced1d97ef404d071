"""The summaries people read: what they state besides the numbers."""

from __future__ import annotations

import pytest

from tokprob.summary import (
    dynamics_markdown,
    dynamics_text,
    frequency_note,
    steering_markdown,
    steering_text,
)


def _dynamics_result(training_data: bool) -> dict:
    row = {"step": 0, "tokens_seen": 0.0, "loss": 5.0, "adj_r2_freq": 0.5,
           "adj_r2_alpha": 0.9, "rel_distance_mean": 0.0}
    return {"dataset": "wiki-leads", "checkpoints": [row], "freq_half_step": 0.0,
            "distance_half_step": 0.0, "stages": {}, "plots": {},
            "artifacts": {"dynamics": "dynamics.parquet"},
            "frequency_note": frequency_note("wiki-leads", training_data)}


@pytest.mark.parametrize("describe", [dynamics_text, dynamics_markdown])
def test_the_dynamics_summary_says_which_corpus_f_w_is_counted_on(describe):
    hub = describe(_dynamics_result(training_data=False))
    assert "f_w is counted on wiki-leads, not on the checkpoints' training data" in hub
    built_in = describe(_dynamics_result(training_data=True))
    assert "f_w is counted on wiki-leads, the corpus the checkpoints were trained on" \
        in built_in
    assert "not on the checkpoints' training data" not in built_in


def test_the_steering_table_shows_a_ratio_no_pair_reaches():
    errors = [{"method": m, "r": r, "median": None if (m, r) == ("calibrated", "10") else 0.1,
               "p90": None if (m, r) == ("calibrated", "10") else 0.2,
               "feasible": 0 if (m, r) == ("calibrated", "10") else 4, "infeasible": 0}
              for m in ("closed_form", "calibrated") for r in ("0.5", "10", "all")]
    result = {"model": "m", "dataset": "d", "targets": 4, "omega": "all", "omega_dims": 3,
              "errors": errors, "comparison": {"pairs": 4, "closed_form_median": 0.5,
                                               "calibrated_median": 0.1},
              "median_kl_other_bound": {"closed_form": 1e-9, "calibrated": 2.5e-8}}
    markdown = steering_markdown(result)
    row = next(line for line in markdown.splitlines() if line.startswith("| 10 |"))
    assert row == "| 10 | 0.1000 | 0.2000 | nan | nan |"
    assert "at most: closed_form 1.00e-09, calibrated 2.50e-08." in markdown


def test_the_steering_summary_gives_the_kl_bound_and_the_exact_kl_when_computed():
    errors = [{"method": m, "r": r, "median": 0.1, "p90": 0.2, "feasible": 4, "infeasible": 0}
              for m in ("closed_form", "calibrated") for r in ("0.5", "all")]
    result = {"model": "m", "dataset": "d", "targets": 4, "omega": "all", "omega_dims": 3,
              "heldout_positions": 64, "detect_positions": 64, "errors": errors,
              "comparison": {"pairs": 4, "closed_form_median": 0.5, "calibrated_median": 0.1,
                             "improvement": 5.0},
              "spread": {"closed_form": 0.3, "calibrated": 0.1},
              "median_kl_other_bound": {"closed_form": 1e-9, "calibrated": 2.5e-8},
              "median_kl_other": {"closed_form": None, "calibrated": None},
              "fewshot_median_error": {}, "calibrated_windows_for_goal": None,
              "stages": {}, "plots": {}, "artifacts": {"steering": "s.parquet"}}

    def kl_line(result):
        return next(line for line in steering_text(result).splitlines() if "KL" in line)

    assert kl_line(result).endswith("closed_form ≤ 1.00e-09, calibrated ≤ 2.50e-08")

    def comparison_line(improvement):
        result["comparison"]["improvement"] = improvement
        return next(line for line in steering_text(result).splitlines() if "pairs the" in line)

    assert comparison_line(5.0).endswith("(calibrated), 5.0× lower")
    # Just short of a 10× goal reads as such, not rounded up to it.
    assert comparison_line(9.78).endswith("9.8× lower")
    assert comparison_line(19.3).endswith("19× lower")
    assert "by support" not in steering_text(result)  # a summary from before the bins
    result["errors_by_support"] = [
        {"method": m, "r": "all", "support": b, "median": e, "p90": 2 * e}
        for m, b, e in (("closed_form", "0–3", 0.9), ("closed_form", "≥ 30", 0.3),
                        ("calibrated", "≥ 30", 0.01))]
    result["comparison_well_measured"] = {"pairs": 16, "closed_form_median": 0.3,
                                          "calibrated_median": 0.01}
    result["errors_by_support"][2]["median"] = 3.4e-6  # an exact edit is not shown as 0
    lines = steering_text(result).splitlines()
    assert "  ≥ 30     " + f"{'0.3000 / 0.6000':>22}" + f"{'3.4e-06 / 0.0200':>22}" in lines
    result["errors_by_support"][2]["median"] = 0.01
    lines = steering_text(result).splitlines()
    assert "  0–3      " + f"{'0.9000 / 1.8000':>22}" + f"{'-':>22}" in lines
    assert "  ≥ 30     " + f"{'0.3000 / 0.6000':>22}" + f"{'0.0100 / 0.0200':>22}" in lines
    assert ("  targets with support ≥ 10: median error 0.300 (closed form) → 0.0100 "
            "(calibrated) on 16 pairs") in lines
    result["calibrated_windows_for_goal_well_measured"] = 16
    assert any(line.endswith("≤ 0.03: more than stored; on the targets with support ≥ 10: 16")
               for line in steering_text(result).splitlines())
    result["median_kl_other"] = {"closed_form": 2e-10, "calibrated": 5e-9}
    assert kl_line(result).endswith("closed_form ≤ 1.00e-09 (exact 2.00e-10), "
                                    "calibrated ≤ 2.50e-08 (exact 5.00e-09)")
    # Intervals over resampled targets, below the comparison they qualify.
    assert "interval" not in steering_text(result)  # a summary from before the intervals
    result["comparison"] |= {"calibrated_median_interval": [0.03, 0.14],
                             "improvement_interval": [4.86, 16.5]}
    result["comparison_well_measured"] |= {"calibrated_median_interval": [0.004, 0.03],
                                           "improvement_interval": [12.9, 40.0]}
    lines = steering_text(result).splitlines()
    comparison = next(i for i, line in enumerate(lines) if "pairs the" in line)
    assert lines[comparison + 1] == ("    95% interval over resampled targets: calibrated "
                                     "median 0.0300 to 0.1400, 4.9× to 16× lower")
    measured = next(i for i, line in enumerate(lines) if "support ≥ 10: median" in line)
    assert lines[measured + 1] == ("    95% interval over resampled targets: calibrated "
                                   "median 0.0040 to 0.0300, 13× to 40× lower")
    assert ("(calibrated). 95% interval over resampled targets: calibrated median 0.0300 "
            "to 0.1400, 4.9× to 16× lower. Median KL") in steering_markdown(result)
