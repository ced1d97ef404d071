"""The steering flow and `tokprob steer` through Prefect, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_saved_in_bfloat16, save_bfloat16_model

from cli.main import main
from tokprob.config import (
    Corpus,
    Detection,
    HiddenConfig,
    ProbabilityConfig,
    SteeringConfig,
    WindowConfig,
)
from tokprob.steering import method_errors
from tokprob.windows import HELDOUT, Windows

pytestmark = pytest.mark.prefect

SMALL = {
    "detection": Detection(window_config=WindowConfig(window=16, heldout_fraction=0.3),
                           probability_config=ProbabilityConfig(max_tokens=160)),
    "hidden_config": HiddenConfig(heldout_tokens=64),
}
STEER = SteeringConfig(omega="all", ratios=(0.1, 0.5, 2.0, 10.0), tokens_per_percentile=2,
                       percentiles=(10.0, 50.0, 90.0), targets=(" the", "17"))


def test_steering_flow_reuses_the_encoding_stages(prefect_api, tiny_models, tiny_text_dir,
                                                  tmp_path):
    from flows.encoding import encoding
    from flows.steering import steering

    common = {"model": str(tiny_models["phi"]), "corpus": Corpus(dataset=str(tiny_text_dir)),
              "data_dir": str(tmp_path)}
    encoding(**common, detection=SMALL["detection"])
    result = steering(**common, **SMALL, steering_config=STEER)
    for stage in ("corpus", "windows", "embeddings", "probabilities", "regression"):
        assert result["stages"][stage] == "cached"
    assert result["stages"]["steering"] == "computed"
    assert result["stages"]["hidden-detect"] == "computed"
    assert {(row["method"], row["r"]) for row in result["errors"]} == {
        (method, r) for method in ("closed_form", "calibrated", "logit_bias")
        for r in ("0.1", "0.5", "2", "10", "all")}
    for row in result["errors"]:
        assert row["feasible"] + row["infeasible"] == 8 * (4 if row["r"] == "all" else 1)
        assert row["median"] <= row["p90"]
    assert result["targets"] == 3 * 2 + 2
    calibrated = method_errors(result["errors"], "calibrated")
    assert result["comparison"]["pairs"] == calibrated["feasible"]
    for method in ("closed_form", "calibrated", "logit_bias"):  # the bins share out the pairs
        assert sum(row["feasible"] for row in result["errors_by_support"]
                   if row["method"] == method) == method_errors(result["errors"],
                                                                method)["feasible"]

    sweep = pq.read_table(result["artifacts"]["steering"]).to_pandas()
    for column in ("method", "token_id", "token", "alpha", "r", "achieved", "abs_log_error",
                   "feasible", "reachable_ratio", "kl_other", "n_fit", "omega"):
        assert column in sweep.columns
    for method, rows in sweep.groupby("method"):
        full = rows[rows["n_fit"] == rows["n_fit"].max()]
        reached = full[full["feasible"]]
        assert method_errors(result["errors"], method)["median_kl_other_bound"] == (
            pytest.approx(reached["kl_other_bound"].median(), rel=1e-12))
        np.testing.assert_allclose(reached["abs_log_error"],
                                   np.abs(np.log(reached["achieved"]) - np.log(reached["r"])))
        assert (reached["kl_other_bound"] >= 0).all()
        assert reached["kl_other"].isna().all()  # the exact KL only with --exact-kl
        assert 17 in set(full["token_id"])
        assert rows["n_fit"].nunique() > 1  # few-shot fits from the first 1, 2, 4, … windows
    assert sweep.loc[sweep["method"] == "closed_form", "omega"].eq("all").all()
    # 64 stored detecting positions in windows of 16: the calibrated edits use 1, 2, 4.
    assert set(sweep.loc[sweep["method"] == "calibrated", "n_fit"]) == {1, 2, 4}

    again = steering(**common, **SMALL, steering_config=STEER)
    assert set(again["stages"].values()) == {"cached"}
    for path in result["plots"].values():
        assert Path(path).read_bytes()[:4] == b"\x89PNG"
    assert "steering_error_by_support.png" in {Path(p).name for p in result["plots"].values()}


@pytest.mark.parametrize("method", ["calibrated", "closed_form"])
def test_steered_model_loads_and_shows_the_predicted_change(prefect_api, tiny_models,
                                                            tiny_text_dir, tmp_path, capsys,
                                                            method):
    from transformers import AutoModelForCausalLM

    source = tiny_models["gpt2"]  # tied: must be untied before the edit
    out = tmp_path / "steered"
    code = main(["steer", "--model", str(source), "--dataset", str(tiny_text_dir),
                 "--data-dir", str(tmp_path / "data"), "--window", "16",
                 "--heldout-fraction", "0.3", "--max-tokens", "160", "--heldout-tokens", "64",
                 "--omega", "all", "--token", " the", "--ratio", "4", "--token", "42",
                 "--ratio", "0.25", "--out", str(out), "--method", method, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0
    saved = json.loads((out / "tokprob-steering.json").read_text())
    assert [e["ratio"] for e in saved["edits"]] == [4.0, 0.25]
    assert saved["method"] == method

    original = AutoModelForCausalLM.from_pretrained(source)
    steered = AutoModelForCausalLM.from_pretrained(out)
    assert not steered.config.tie_word_embeddings
    torch.testing.assert_close(steered.get_input_embeddings().weight,
                               original.get_input_embeddings().weight)
    changed = (steered.get_output_embeddings().weight
               != original.get_output_embeddings().weight).any(dim=1)
    edited = {e["token_id"] for e in record["edits"]}
    assert set(torch.nonzero(changed).flatten().tolist()) == edited

    windows_file = next((tmp_path / "data" / "artifacts" / "windows").glob("*/windows.parquet"))
    heldout = Windows.from_arrow(pq.read_table(windows_file)).take(HELDOUT, 64)
    ids = torch.as_tensor(heldout, dtype=torch.long)
    with torch.no_grad():
        before = torch.softmax(original(input_ids=ids).logits.double(), -1).mean((0, 1))
        after = torch.softmax(steered(input_ids=ids).logits.double(), -1).mean((0, 1))
    for edit in record["edits"]:
        token = edit["token_id"]
        assert float(after[token] / before[token]) == pytest.approx(
            edit["predicted_ratio_heldout"], rel=1e-5)
        assert edit["heldout_log_error"] == pytest.approx(
            abs(np.log(edit["predicted_ratio_heldout"] / edit["ratio"])), rel=1e-9)
        # A resampled ratio of sums is a weighted mean of the windows' own ratios.
        with torch.no_grad():
            per_window = (torch.softmax(steered(input_ids=ids).logits.double(), -1)
                          [..., token].sum(1)
                          / torch.softmax(original(input_ids=ids).logits.double(), -1)
                          [..., token].sum(1)).numpy()
        low, high = edit["predicted_ratio_heldout_interval"]
        assert per_window.min() * (1 - 1e-5) <= low <= high <= per_window.max() * (1 + 1e-5)
        p = (torch.softmax(original(input_ids=ids).logits.double(), -1)[..., token]
             .flatten().detach().numpy())
        assert edit["heldout_effective_positions"] == pytest.approx(
            p.sum() ** 2 / np.sum(p ** 2), rel=1e-4)  # Kish's number under p_w
        if method == "calibrated":
            assert 1.0 <= edit["detect_effective_positions"] <= saved["detect_positions"]
        else:
            assert "detect_effective_positions" not in edit

    # Without --json: a line per edit, and a note naming each edit that misses its ratio.
    code = main(["steer", "--model", str(source), "--dataset", str(tiny_text_dir),
                 "--data-dir", str(tmp_path / "data"), "--window", "16",
                 "--heldout-fraction", "0.3", "--max-tokens", "160", "--heldout-tokens", "64",
                 "--omega", "all", "--token", " the", "--ratio", "4", "--token", "42",
                 "--ratio", "0.25", "--out", str(tmp_path / "again"), "--method", method])
    text = capsys.readouterr().out
    assert code == 0
    missed = [repr(e["token"]) for e in record["edits"] if e["heldout_log_error"] > 0.05]
    for edit in record["edits"]:
        low, high = edit["predicted_ratio_heldout_interval"]
        assert (f"{edit['token']!r} (id {edit['token_id']}): × {edit['ratio']:g} requested, "
                f"× {edit['predicted_ratio_heldout']:.3f} on held-out text (95% over "
                f"resampled held-out windows: {low:.3f} to {high:.3f}") in text
    note = " ".join(text[text.index("note:"):].split()) if "note:" in text else ""
    assert bool(note) == bool(missed)
    assert note.startswith(f"note: {', '.join(missed)} missed") or not missed
    within = [repr(e["token"]) for e in record["edits"] if e["heldout_log_error"] > 0.05
              and e["predicted_ratio_heldout_interval"][0] <= e["ratio"]
              <= e["predicted_ratio_heldout_interval"][1]]
    assert (f"The ratio requested of {', '.join(within)} lies within" in note) == bool(within)


def test_steered_bfloat16_model_is_saved_in_bfloat16(prefect_api, tiny_text_dir, tmp_path,
                                                      capsys):
    source = save_bfloat16_model("gpt2", tmp_path / "bf16")
    out = tmp_path / "steered"
    code = main(["steer", "--model", str(source), "--dataset", str(tiny_text_dir),
                 "--data-dir", str(tmp_path / "data"), "--window", "16",
                 "--heldout-fraction", "0.3", "--max-tokens", "160", "--heldout-tokens", "64",
                 "--omega", "all", "--token", " the", "--ratio", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert_saved_in_bfloat16(out)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--token", " the", "--ratio", "0"], "positive finite"),
        (["--token", " the", "--ratio", "-2"], "positive finite"),
        (["--token", " the", "--ratio", "nan"], "positive finite"),
        (["--token", "The cat sat", "--ratio", "2"], "is not one token"),
        (["--token", "99999", "--ratio", "2"], "not in the model's vocabulary"),
        (["--token", " the", "--ratio", "2", "--token", "17"], "one --ratio per --token"),
        (["--token", " the", "--ratio", "2", "--significance", "1e-300", "--method",
          "closed_form"], "selects no dimension"),
        (["--token", " the", "--ratio", "1e9"], "can reach at most"),
    ],
)
def test_bad_steering_input_exits_2(prefect_api, tiny_models, tiny_text_dir, tmp_path, capsys,
                                    arguments, message):
    code = main(["steer", "--model", str(tiny_models["llama"]), "--dataset", str(tiny_text_dir),
                 "--data-dir", str(tmp_path / "data"), "--window", "16", "--max-tokens", "160",
                 "--heldout-fraction", "0.3", "--heldout-tokens", "32",
                 "--out", str(tmp_path / "out"), *arguments])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert message in captured.err
    assert not (tmp_path / "out").exists()
