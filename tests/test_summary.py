"""The summaries people read: what they state besides the numbers."""

from __future__ import annotations

import pytest

from tokprob.summary import dynamics_markdown, dynamics_text, frequency_note


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
