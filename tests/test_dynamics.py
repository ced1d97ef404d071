"""Training dynamics (paper §5): parameter groups, steps, convergence and half-way steps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_tiny_model

from tokprob.dynamics import (
    checkpoint_steps,
    convergence,
    first_step,
    parameter_group,
    step_of,
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
