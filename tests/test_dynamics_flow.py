"""The dynamics flow and `tokprob pretrain` through Prefect, on a tiny pre-training run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import save_tiny_model

from cli.main import main

pytestmark = pytest.mark.prefect

TINY_RUN = ["--vocab-size", "320", "--layers", "1", "--hidden-size", "16", "--heads", "2",
            "--context", "16", "--train-batch", "4", "--steps", "8", "--warmup-steps", "2",
            "--max-tokens", "256"]


def _cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_builtin_pretraining_then_dynamics(prefect_api, tiny_text_dir, tmp_path, capsys):
    common = ["--dataset", str(tiny_text_dir), "--data-dir", str(tmp_path), *TINY_RUN]
    code, out, err = _cli(capsys, "run", "dynamics", *common, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [c["step"] for c in result["checkpoints"]] == [0, 1, 2, 4, 8]
    table = pq.read_table(result["artifacts"]["dynamics"]).to_pandas()
    for column in ("step", "tokens_seen", "adj_r2_freq", "adj_r2_alpha", "loss",
                   "rel_distance_mean", "rel_distance_embeddings", "rel_distance_layer_0",
                   "rel_distance_head", "cosine_head"):
        assert column in table.columns
    assert list(table["tokens_seen"]) == [step * 4 * 16 for step in (0, 1, 2, 4, 8)]
    last = table.iloc[-1]
    assert last["rel_distance_mean"] == 0.0 and last["cosine_head"] == pytest.approx(1.0)
    assert table["rel_distance_mean"].iloc[0] > 0
    assert "freq_half_step" in result and "distance_half_step" in result
    assert result["frequency_on_training_data"] is True  # the built-in run trained on it

    code, out, _ = _cli(capsys, "run", "dynamics", *common, "--json")
    assert set(json.loads(out)["stages"].values()) == {"cached"}

    code, out, _ = _cli(capsys, "pretrain", "--dataset", str(tiny_text_dir), "--data-dir",
                        str(tmp_path), *TINY_RUN[:-2], "--json")
    listed = json.loads(out)
    assert listed["stages"]["pretrain"] == "cached"  # the same run the dynamics flow made
    assert [c["step"] for c in listed["checkpoints"]] == [0, 1, 2, 4, 8]


def test_adding_a_checkpoint_computes_only_the_new_one(prefect_api, tiny_text_dir, tmp_path,
                                                       capsys):
    code, out, err = _cli(capsys, "pretrain", "--dataset", str(tiny_text_dir), "--data-dir",
                          str(tmp_path), *TINY_RUN[:-2], "--json")
    assert code == 0, err
    paths = {c["step"]: c["path"] for c in json.loads(out)["checkpoints"]}
    common = ["--dataset", str(tiny_text_dir), "--data-dir", str(tmp_path), "--no-alpha",
              "--tokens-per-step", "64"]
    code, out, err = _cli(capsys, "run", "dynamics", *common, "--checkpoints",
                          f"{paths[0]},{paths[8]}", "--json")
    assert code == 0, err
    named = json.loads(out)
    assert named["checkpoints"][1]["tokens_seen"] == 8 * 64
    assert named["frequency_on_training_data"] is False
    assert "not on the checkpoints' training data" in named["frequency_note"]
    code, out, _ = _cli(capsys, "run", "dynamics", *common, "--checkpoints",
                        f"{paths[0]},{paths[2]},{paths[8]}", "--json")
    stages = json.loads(out)["stages"]
    assert stages["checkpoint@step0"] == stages["checkpoint@step8"] == "cached"
    assert stages["checkpoint@step2"] == "computed"


def test_bad_checkpoint_lists_exit_2(prefect_api, tiny_text_dir, tmp_path, capsys):
    one = save_tiny_model("gpt_neox", tmp_path / "step-000001")
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    other = tmp_path / "step-000002"
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=330, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64)) \
        .save_pretrained(other)
    from conftest import build_tokenizer

    build_tokenizer().save_pretrained(other)
    common = ["run", "dynamics", "--dataset", str(tiny_text_dir), "--data-dir",
              str(tmp_path / "data"), "--no-alpha"]
    cases = [
        ([str(one)], "at least two checkpoints"),
        ([str(one), str(other)], "different vocabularies"),
        ([str(one), "nobody/no-model@step99"], "Hugging Face cache"),
    ]
    for checkpoints, message in cases:
        code, out, err = _cli(capsys, *common, "--checkpoints", ",".join(checkpoints))
        assert code == 2, err
        assert message in err and out == ""
