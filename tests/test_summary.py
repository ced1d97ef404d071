"""The summaries people read: what they state besides the numbers."""

from __future__ import annotations

import pytest

from tokprob.summary import (
    dynamics_markdown,
    dynamics_text,
    frequency_note,
    steering_markdown,
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
                                               "calibrated_median": 0.1}}
    row = next(line for line in steering_markdown(result).splitlines()
               if line.startswith("| 10 |"))
    assert row == "| 10 | 0.1000 | 0.2000 | nan | nan |"
