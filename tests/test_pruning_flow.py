"""The pruning flow and `tokprob prune` through Prefect, on tiny random models."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_saved_in_bfloat16, save_bfloat16_model

from cli.main import main
from tokprob.pruning import METHODS

pytestmark = pytest.mark.prefect

TINY = ["--window", "16", "--heldout-fraction", "0.3", "--max-tokens", "160",
        "--heldout-tokens", "64", "--eval-tokens", "48", "--fractions", "0,0.25,0.5,0.75",
        "--random-seeds", "0,1", "--prompts", "2", "--prompt-tokens", "8", "--new-tokens", "4"]


@pytest.fixture(scope="module")
def ood_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ood") / "ood.jsonl"
    lines = [f"Number {i} and number {i * 7} are {'odd' if i % 2 else 'even'} friends."
             for i in range(200)]
    path.write_text("\n".join(json.dumps({"text": line}) for line in lines))
    return path


def _cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pruning_flow_reports_every_method_in_and_out_of_distribution(
        prefect_api, tiny_models, tiny_text_dir, ood_corpus, tmp_path, capsys):
    common = ["--model", str(tiny_models["llama"]), "--dataset", str(tiny_text_dir),
              "--ood-dataset", str(ood_corpus), "--data-dir", str(tmp_path), *TINY]
    code, out, err = _cli(capsys, "run", "pruning", *common, "--json")
    assert code == 0, err
    result = json.loads(out)
    metrics = pq.read_table(result["artifacts"]["pruning"]).to_pandas()
    assert list(metrics.columns[:4]) == ["method", "seed", "fraction", "split"]
    for column in ("kl", "js", "alpha_kl", "alpha_js", "top1_agreement", "perplexity",
                   "generation_match", "first_divergence"):
        assert column in metrics.columns
    assert set(metrics["split"]) == {"id", "ood"}
    assert set(metrics["method"]) == set(METHODS)
    assert sorted(metrics["fraction"].unique()) == [0.0, 0.25, 0.5, 0.75]
    assert len(metrics) == 2 * 4 * (4 + 2)  # splits × fractions × (4 methods + 2 seeds)
    unpruned = metrics[metrics["fraction"] == 0.0]
    assert (unpruned["top1_agreement"] == 1.0).all() and (unpruned["kl"] < 1e-9).all()
    assert (unpruned["generation_match"].dropna() == 1.0).all()
    generated = metrics.dropna(subset=["generation_match"])
    assert set(generated[generated["method"] == "random"]["seed"]) == {1}
    assert set(result["headline"]) == {f"{m}/{s}" for m in METHODS for s in ("id", "ood")}
    assert result["stages"]["windows-ood"] == "computed"
    assert result["stages"]["hidden-detect"] == "computed"
    # --json: per method, split and fraction the main metrics, seeds averaged.
    summary = {(row["method"], row["split"], row["fraction"]): row for row in result["metrics"]}
    assert len(summary) == 5 * 2 * 4
    row = summary["random", "ood", 0.5]
    chosen = metrics[(metrics["method"] == "random") & (metrics["split"] == "ood")
                     & (metrics["fraction"] == 0.5)]
    for column in ("kl", "alpha_js", "top1_agreement", "first_divergence"):
        assert row[column] == pytest.approx(chosen[column].mean(), rel=1e-12), column

    code, out, _ = _cli(capsys, "run", "pruning", *common, "--json")
    assert set(json.loads(out)["stages"].values()) == {"cached"}
    code, out, _ = _cli(capsys, "run", "pruning", *common)
    assert "deletable with JS" in out and "pruning_metrics.png" in out
    assert "compensated-greedy" in out


@pytest.mark.parametrize(("flags", "method", "fraction"),
                         [(["--compensate"], "compensated", 0.25),
                          (["--compensate", "--greedy"], "compensated-greedy", 0.5)])
def test_compensated_model_reproduces_the_sweep_in_a_real_forward_pass(
        prefect_api, tiny_models, tiny_text_dir, ood_corpus, tmp_path, capsys, flags, method,
        fraction):
    """The written model, reloaded, moves the held-out distributions exactly as the sweep
    (computed from cached hidden states) says, with |D| zero columns and nothing else new."""
    from transformers import AutoModelForCausalLM

    source = tiny_models["llama"]
    common = ["--model", str(source), "--dataset", str(tiny_text_dir), "--data-dir",
              str(tmp_path / "data"), *TINY]
    code, out, err = _cli(capsys, "run", "pruning", "--ood-dataset", str(ood_corpus), *common,
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    code, out, err = _cli(capsys, "prune", *common, *flags, "--fraction", str(fraction),
                          "--out", str(tmp_path / "pruned"), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["method"] == method
    original = AutoModelForCausalLM.from_pretrained(source)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    weight = pruned.get_output_embeddings().weight
    zero = (weight == 0).all(dim=0)
    assert sorted(torch.nonzero(zero).flatten().tolist()) == record["deleted_dimensions"]
    assert len(record["deleted_dimensions"]) == int(32 * fraction)
    assert not torch.equal(weight[:, ~zero],
                           original.get_output_embeddings().weight[:, ~zero])  # compensated
    for name, tensor in original.state_dict().items():
        if name != "lm_head.weight":
            torch.testing.assert_close(pruned.state_dict()[name], tensor, rtol=0, atol=0)
    assert pruned.get_output_embeddings().bias is None

    held = pq.read_table(Path(result["artifact_dirs"]["hidden"]) / "hidden.parquet",
                         columns=["input_id"]).column("input_id").to_numpy()[:48]
    windows = torch.as_tensor(held.reshape(-1, 16), dtype=torch.long)
    with torch.no_grad():
        log_p = torch.log_softmax(original(input_ids=windows).logits.double(), -1).flatten(0, 1)
        log_q = torch.log_softmax(pruned(input_ids=windows).logits.double(), -1).flatten(0, 1)
    p, q = log_p.exp(), log_q.exp()
    alpha, alpha_pruned = p.mean(0), q.mean(0)
    mid = (alpha + alpha_pruned) / 2
    metrics = pq.read_table(result["artifacts"]["pruning"]).to_pandas()
    row = metrics[(metrics["method"] == method) & (metrics["split"] == "id")
                  & (metrics["fraction"] == fraction)].iloc[0]
    assert row["kl"] > 1e-6  # something moved, and by the amount the sweep says
    assert row["kl"] == pytest.approx(float((p * (log_p - log_q)).sum(-1).mean()), rel=1e-4)
    assert row["top1_agreement"] == pytest.approx(
        float((p.argmax(-1) == q.argmax(-1)).double().mean()))
    assert row["alpha_js"] == pytest.approx(
        float(0.5 * (alpha * (alpha / mid).log()).sum()
              + 0.5 * (alpha_pruned * (alpha_pruned / mid).log()).sum()), rel=1e-3, abs=1e-9)


@pytest.mark.parametrize("command", [["run", "pruning"], ["prune", "--fraction", "0.5"]])
def test_pruning_refuses_the_frequency_regression_before_any_stage(
        prefect_api, tiny_models, tiny_text_dir, tmp_path, capsys, command):
    extra = ["--out", str(tmp_path / "out")] if command[0] == "prune" else []
    code, out, err = _cli(capsys, *command, "--target", "frequency", "--model",
                          str(tiny_models["llama"]), "--dataset", str(tiny_text_dir),
                          "--data-dir", str(tmp_path / "data"), "--window", "16",
                          "--max-tokens", "160", *extra)
    assert code == 2 and out == ""
    assert "−log α" in err and "--target alpha" in err
    assert not (tmp_path / "data" / "artifacts").exists()


def test_pruned_model_loads_with_its_columns_deleted(prefect_api, tiny_models, tiny_text_dir,
                                                     tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    source = tiny_models["gpt2"]  # tied: the input embeddings must survive
    out = tmp_path / "pruned"
    code, stdout, err = _cli(capsys, "prune", "--model", str(source), "--dataset",
                             str(tiny_text_dir), "--data-dir", str(tmp_path / "data"),
                             "--window", "16", "--max-tokens", "160", "--fraction", "0.25",
                             "--out", str(out), "--json")
    assert code == 0, err
    record = json.loads((out / "tokprob-pruning.json").read_text())
    assert json.loads(stdout)["deleted_dimensions"] == record["deleted_dimensions"]
    assert len(record["deleted_dimensions"]) == 8  # 25% of 32
    original = AutoModelForCausalLM.from_pretrained(source)
    pruned = AutoModelForCausalLM.from_pretrained(out)
    weight = pruned.get_output_embeddings().weight
    zero = (weight == 0).all(dim=0)
    assert sorted(torch.nonzero(zero).flatten().tolist()) == record["deleted_dimensions"]
    kept = ~zero
    torch.testing.assert_close(weight[:, kept], original.get_output_embeddings().weight[:, kept])
    torch.testing.assert_close(pruned.get_input_embeddings().weight,
                               original.get_input_embeddings().weight)
    with torch.no_grad():
        assert torch.isfinite(pruned(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    # Permissions follow the umask, not the private temporary folder's 0700.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o666 & ~umask}


def test_pruned_bfloat16_model_is_saved_in_bfloat16(prefect_api, tiny_text_dir, tmp_path,
                                                     capsys):
    source = save_bfloat16_model("llama", tmp_path / "bf16")
    out = tmp_path / "pruned"
    code, _, err = _cli(capsys, "prune", "--model", str(source), "--dataset",
                        str(tiny_text_dir), "--data-dir", str(tmp_path / "data"),
                        "--window", "16", "--max-tokens", "160", "--fraction", "0.25",
                        "--out", str(out))
    assert code == 0, err
    assert_saved_in_bfloat16(out)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["prune", "--fraction", "1.0"], "[0, 1)"),
        (["prune", "--fraction", "-0.1"], "[0, 1)"),
        (["run", "pruning", "--fractions", ""], "--fractions"),
        (["run", "pruning", "--fractions", "0,1.2"], "--fractions"),
        (["prune", "--fraction", "0.5", "--greedy"], "--greedy chooses"),
    ],
)
def test_bad_pruning_input_exits_2(prefect_api, tiny_models, tiny_text_dir, tmp_path, capsys,
                                   command, message):
    extra = ["--out", str(tmp_path / "out")] if command[0] == "prune" else []
    code, out, err = _cli(capsys, *command, "--model", str(tiny_models["llama"]), "--dataset",
                          str(tiny_text_dir), "--data-dir", str(tmp_path / "data"), "--window",
                          "16", "--max-tokens", "160", *extra)
    assert code == 2, err
    assert message in err and out == ""
    assert not (tmp_path / "out").exists()


def test_ood_corpus_shorter_than_one_window_exits_2(prefect_api, tiny_models, tiny_text_dir,
                                                   tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    code, _, err = _cli(capsys, "run", "pruning", "--model", str(tiny_models["llama"]),
                        "--dataset", str(tiny_text_dir), "--ood-dataset", str(short),
                        "--data-dir", str(tmp_path / "data"), *TINY)
    assert code == 2
    assert "fewer than one window" in err


def test_pruned_model_evaluates_under_lm_evaluation_harness(prefect_api, tiny_models,
                                                            tiny_text_dir, tmp_path, capsys):
    """HFLM takes the pruned folder as any local model; its log-likelihoods are the
    pruned model's own."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    code, _, err = _cli(capsys, "prune", "--model", str(tiny_models["llama"]), "--dataset",
                        str(tiny_text_dir), "--data-dir", str(tmp_path / "data"), "--window",
                        "16", "--max-tokens", "160", "--fraction", "0.5", "--out", str(out))
    assert code == 0, err
    harness = HFLM(pretrained=str(out), device="cpu", batch_size=1)
    context, continuation = "The cat sat on the", " mat"
    request = Instance(request_type="loglikelihood", doc={}, idx=0,
                       arguments=(context, continuation))
    ((loglikelihood, _),) = harness.loglikelihood([request])

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = harness.tokenizer
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    prefix = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        log_p = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
    expected = sum(float(log_p[i - 1, whole[i]]) for i in range(prefix, len(whole)))
    assert loglikelihood == pytest.approx(expected, rel=1e-4)
