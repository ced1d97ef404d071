"""The paper flow for two models, its comparison, run records and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main

pytestmark = pytest.mark.prefect

TINY = ["--window", "16", "--heldout-fraction", "0.3", "--max-tokens", "160",
        "--heldout-tokens", "64", "--eval-tokens", "48", "--fractions", "0,0.5",
        "--random-seeds", "0", "--prompts", "1", "--prompt-tokens", "4", "--new-tokens", "2",
        "--omega", "all", "--ratios", "0.5,2", "--percentiles", "50", "--no-fewshot",
        "--vocab-size", "320", "--layers", "1", "--hidden-size", "16", "--heads", "2",
        "--context", "16", "--train-batch", "4", "--steps", "4", "--warmup-steps", "1"]


def test_paper_for_two_models_then_their_report(prefect_api, tiny_models, tiny_text_dir,
                                                 tmp_path, capsys):
    models = f"{tiny_models['gpt2']},{tiny_models['phi']}"
    common = ["--models", models, "--dataset", str(tiny_text_dir), "--ood-dataset",
              str(tiny_text_dir), "--data-dir", str(tmp_path), *TINY]
    code = main(["run", "paper", *common, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert [row["model"] for row in result["comparison"]] == ["gpt2", "phi"]
    for row in result["comparison"]:
        assert 0 <= row["adj_r2"] <= 1 and row["steering_error_r2"] >= 0
        measured = row["steering_calibrated_error_well_measured"]
        assert measured is None or measured >= 0  # None: no target with enough support
        assert 0 <= row["prunable_saliency_id"] < 1
    assert result["freq_half_step"] is not None or result["distance_half_step"] is not None
    report = Path(result["report"])
    assert report.is_file() and report.suffix == ".html"
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 2 * 6  # every model's plots, embedded
    assert "comparison" in page

    code = main(["report", "gpt2", "--data-dir", str(tmp_path), "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sorted(run.split(" ")[0] for run in listed["runs"]) == ["encoding", "pruning",
                                                                   "steering"]
    html = Path(listed["html"]).read_text()
    for section in ("encoding: gpt2", "steering: gpt2", "pruning: gpt2", "Versions",
                    "Parameters, code and inputs"):
        assert section in html
    markdown = Path(listed["markdown"]).read_text()
    assert "](../artifacts/" in markdown  # figures linked, relative to the report
    assert "(columns: n)\n\n| method |" in markdown  # nested results name their index column
    assert "| method | r | median | p90 |" in markdown

    code = main(["report", "no-such-model", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "Models with runs" in capsys.readouterr().err
