"""Training dynamics (paper §5): parameter groups, steps, convergence and half-way steps."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_tiny_model

from tokprob.dynamics import (
    checkpoint_steps,
    checkpoint_table,
    convergence,
    encoding_fits,
    first_step,
    parameter_group,
    step_of,
    training_milestones,
    unigram_counts,
)
from tokprob.errors import TokprobError


@pytest.mark.parametrize(("name", "group"), [
    ("transformer.h.3.attn.c_attn.weight", "layer_3"),
    ("model.layers.11.mlp.up_proj.weight", "layer_11"),
    ("gpt_neox.layers.0.attention.dense.bias", "layer_0"),
    ("transformer.wte.weight", "embeddings"),
    ("model.embed_tokens.weight", "embeddings"),
    ("lm_head.weight", "head"),
    ("embed_out.weight", "head"),
    ("transformer.ln_f.weight", "other"),
])
def test_parameter_groups(name, group):
    assert parameter_group(name) == group


def test_steps_from_names():
    assert step_of("EleutherAI/pythia-70m@step1000") == 1000
    assert step_of("/runs/x/checkpoints/step-000128") == 128
    assert step_of("out/checkpoint-500") == 500
    assert step_of("gpt2") is None


def test_checkpoint_steps_from_names_or_from_the_list():
    named = ["EleutherAI/pythia-70m@step0", "runs/step-000128", "out/checkpoint-500"]
    assert checkpoint_steps(named) == [0, 128, 500]
    assert checkpoint_steps(["./early", "./middle", "./final"]) == [0, 1, 2]


@pytest.mark.parametrize("specs", [
    ["pythia-70m@step0", "pythia-70m@step1000", "pythia-70m"],
    ["pythia-70m@step0", "pythia-70m", "pythia-70m@step1000"],
    ["pythia-70m", "pythia-70m@step1000"],
])
def test_a_checkpoint_without_a_step_among_named_ones_is_refused(specs):
    """Not given its list index as its step: pythia-70m (the final model) would then sort
    before @step1000 and @step1000 would be taken for the final checkpoint."""
    with pytest.raises(TokprobError, match=r"The checkpoint pythia-70m states no training "
                                           r"step while the others do.*@step143000"):
        checkpoint_steps(specs)


def test_convergence_equals_a_direct_computation(tmp_path):
    from transformers import AutoModelForCausalLM

    early = save_tiny_model("gpt_neox", tmp_path / "early", seed=0)
    final = save_tiny_model("gpt_neox", tmp_path / "final", seed=1)
    result = convergence(early, final)
    a = AutoModelForCausalLM.from_pretrained(early).state_dict()
    b = AutoModelForCausalLM.from_pretrained(final).state_dict()
    for group in ("embeddings", "layer_0", "layer_1", "head"):
        names = [n for n in b if parameter_group(n) == group]
        x = torch.cat([a[n].double().flatten() for n in names])
        y = torch.cat([b[n].double().flatten() for n in names])
        assert result[group]["rel_distance"] == pytest.approx(
            float((x - y).norm() / y.norm()), rel=1e-10)
        assert result[group]["cosine"] == pytest.approx(
            float(x @ y / (x.norm() * y.norm())), rel=1e-10)
    same = convergence(final, final)
    assert all(v["rel_distance"] == 0 and v["cosine"] == pytest.approx(1.0)
               for v in same.values())


BUFFERS = {
    # What Pythia's files hold beside the parameters, per layer.
    "gpt_neox": lambda i: {
        f"gpt_neox.layers.{i}.attention.bias": torch.tril(torch.ones(1, 1, 256, 256,
                                                                     dtype=torch.bool)),
        f"gpt_neox.layers.{i}.attention.masked_bias": torch.tensor(-1e9),
        f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq":
            1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8),
    },
    # What older GPT-2 files hold.
    "gpt2": lambda i: {
        f"transformer.h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 256, 256)),
        f"transformer.h.{i}.attn.masked_bias": torch.tensor(-1e4),
    },
}


def _with_buffers(folder, architecture: str):
    """The checkpoint's safetensors file with the buffers added, as the hub's files have."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    for layer in range(2):
        tensors |= BUFFERS[architecture](layer)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("architecture", ["gpt_neox", "gpt2"])
def test_convergence_ignores_the_buffers_in_the_weight_files(tmp_path, architecture):
    """Distances over named_parameters() (a tied head counted once, as embeddings), not
    swamped by masks of −1e9 or 1s that never change."""
    from transformers import AutoModelForCausalLM

    early = _with_buffers(save_tiny_model(architecture, tmp_path / "early", seed=0),
                          architecture)
    final = _with_buffers(save_tiny_model(architecture, tmp_path / "final", seed=1),
                          architecture)
    result = convergence(early, final)
    a = dict(AutoModelForCausalLM.from_pretrained(early).named_parameters())
    b = dict(AutoModelForCausalLM.from_pretrained(final).named_parameters())
    groups = {parameter_group(name) for name in b}
    assert set(result) == groups
    assert ("head" in groups) == (architecture == "gpt_neox")  # GPT-2's head is tied
    for group in groups:
        names = [n for n in b if parameter_group(n) == group]
        x = torch.cat([a[n].detach().double().flatten() for n in names])
        y = torch.cat([b[n].detach().double().flatten() for n in names])
        assert result[group]["rel_distance"] == pytest.approx(
            float((x - y).norm() / y.norm()), rel=1e-10)
        assert result[group]["cosine"] == pytest.approx(
            float(x @ y / (x.norm() * y.norm())), rel=1e-10, abs=1e-12)
    assert result["layer_0"]["rel_distance"] > 0.1  # independent random weights


def test_convergence_refuses_checkpoints_of_different_models(tmp_path):
    first = save_tiny_model("gpt_neox", tmp_path / "a")
    other = save_tiny_model("llama", tmp_path / "b")
    with pytest.raises(TokprobError, match="share no parameter"):
        convergence(first, other)


def test_first_steps():
    table = pd.DataFrame({"step": [0, 1, 2, 4, 8], "adj_r2_freq": [0.0, 0.1, 0.5, 0.7, 0.8],
                          "rel_distance_mean": [1.0, 0.9, 0.6, 0.4, 0.0]})
    assert first_step(table, "adj_r2_freq", above=True, share=0.5) == 2
    assert first_step(table, "rel_distance_mean", above=False, share=0.5) == 4
    flat = table.assign(adj_r2_freq=np.zeros(5))
    assert math.isnan(first_step(flat, "adj_r2_freq", above=True, share=0.5))


def test_unigram_counts_equal_a_counter():
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 50, size=n).tolist() for n in (30, 0, 7, 120)]
    counts, tokens = unigram_counts(iter(documents), 64)
    counter = Counter(token for document in documents for token in document)
    assert counts.dtype == np.int64 and len(counts) == 64
    assert counts.tolist() == [counter[token] for token in range(64)]
    assert tokens == sum(len(document) for document in documents)


def test_encoding_fits_equal_statsmodels_ols():
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(80, 5))
    counts = rng.integers(0, 40, size=80)
    alpha = rng.dirichlet(np.ones(80))
    alpha[3] = 0.0  # underflow: left out of the α fit
    fits = encoding_fits(matrix, counts, alpha)
    frequency = -np.log((counts + 1.0) / (counts.sum() + 80))
    by_frequency = sm.OLS(frequency, sm.add_constant(matrix)).fit()
    kept = alpha > 0
    by_alpha = sm.OLS(-np.log(alpha[kept]), sm.add_constant(matrix[kept])).fit()
    expected = {"r2_freq": by_frequency.rsquared, "adj_r2_freq": by_frequency.rsquared_adj,
                "r2_alpha": by_alpha.rsquared, "adj_r2_alpha": by_alpha.rsquared_adj}
    assert list(fits) == list(expected)
    for name, value in expected.items():
        assert fits[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    without_alpha = encoding_fits(matrix, counts)
    assert without_alpha["adj_r2_freq"] == pytest.approx(by_frequency.rsquared_adj, rel=1e-9)
    assert math.isnan(without_alpha["r2_alpha"]) and math.isnan(without_alpha["adj_r2_alpha"])


def test_checkpoint_table_orders_by_step_and_averages_the_groups():
    rows = [pd.DataFrame([{"step": step, "adj_r2_freq": r2, "rel_distance_head": head,
                           "rel_distance_layer_0": layer, "cosine_head": 1 - head,
                           "cosine_layer_0": 1 - layer / 2}])
            for step, r2, head, layer in ((4, 0.7, 0.2, 0.6), (0, 0.0, 1.0, 0.8),
                                          (8, 0.8, 0.0, 0.0), (1, 0.5, 0.9, 0.9))]
    table = checkpoint_table(rows)
    assert table["step"].tolist() == [0, 1, 4, 8]
    np.testing.assert_allclose(table["rel_distance_mean"], [0.9, 0.9, 0.4, 0.0], rtol=1e-12)
    np.testing.assert_allclose(table["cosine_mean"], [0.3, 0.325, 0.75, 1.0], rtol=1e-12)
    assert training_milestones(table) == {"checkpoints": 4, "freq_half_step": 1.0,
                                          "distance_half_step": 4.0,
                                          "final_adj_r2_freq": 0.8}
