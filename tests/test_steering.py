"""Steering (paper §3): the edit, Ω, and its evaluation from cached hidden states."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tokprob.errors import TokprobError
from tokprob.head import final_hidden_states, output_head, untie_output_embeddings
from tokprob.models import load_model
from tokprob.steering import (
    SteeringEvaluator,
    omega_mask,
    steer_embeddings,
    steering_direction,
)


def _table(slope, t, p):
    return pd.DataFrame({"dim": np.arange(len(slope)), "slope": slope, "t": t, "p": p})


def test_omega_masks():
    table = _table([1.0, -2.0, 0.5, 0.0], [10.0, -3.0, 1.0, np.nan], [1e-9, 0.004, 0.3, np.nan])
    np.testing.assert_array_equal(omega_mask(table, "bonferroni", 0.05), [True, True, False,
                                                                          False])
    np.testing.assert_array_equal(omega_mask(table, "all"), [True, True, True, False])
    np.testing.assert_array_equal(omega_mask(table, "top-k", top_k=2), [True, True, False,
                                                                        False])
    with pytest.raises(TokprobError, match="selects no dimension"):
        omega_mask(_table([1.0, 1.0], [0.1, 0.2], [0.9, 0.8]), "bonferroni")
    with pytest.raises(TokprobError, match="--omega"):
        omega_mask(table, "some")


def test_direction_moves_the_encoding_by_log_r():
    rng = np.random.default_rng(0)
    slope = rng.normal(size=12)
    mask = rng.random(12) < 0.5
    v = steering_direction(slope, mask)
    assert np.all(v[~mask] == 0)
    embeddings = rng.normal(size=(30, 12)).astype(np.float32)
    steered = steer_embeddings(embeddings, {4: 3.0, 9: 0.25}, v)
    # A·E'_w − A·E_w = −log r: −log α shifts by −log r, α by the factor r.
    assert slope @ (steered[4] - embeddings[4]) == pytest.approx(-np.log(3.0), rel=1e-5)
    assert slope @ (steered[9] - embeddings[9]) == pytest.approx(-np.log(0.25), rel=1e-5)
    untouched = np.setdiff1d(np.arange(30), [4, 9])
    np.testing.assert_array_equal(steered[untouched], embeddings[untouched])


@pytest.mark.parametrize("ratio", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_ratios_are_rejected(ratio):
    with pytest.raises(TokprobError, match="positive finite"):
        steer_embeddings(np.zeros((3, 2), np.float32), {1: ratio}, np.ones(2))


@pytest.mark.parametrize("architecture", ["gpt2", "phi"])
def test_evaluation_from_hidden_states_equals_the_edited_models_forward(tiny_models,
                                                                      architecture):
    model = load_model(tiny_models[architecture])
    untie_output_embeddings(model)
    head = output_head(model)
    windows = torch.randint(0, 300, (4, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        hidden = final_hidden_states(model, windows).reshape(-1, head.hidden_size)
    weight = head.weight.numpy().copy()
    bias = None if head.bias is None else head.bias.numpy()
    direction = np.random.default_rng(1).normal(size=head.hidden_size)
    tokens, ratios = np.array([5, 5, 17, 250]), np.array([0.1, 8.0, 2.0, 0.5])

    effects = SteeringEvaluator(hidden.numpy(), weight, bias, tokens, rows_per_chunk=7).evaluate(
        tokens, ratios, direction)

    for k, (token, ratio) in enumerate(zip(tokens, ratios, strict=True)):
        steered = steer_embeddings(weight, {int(token): float(ratio)}, direction)
        with torch.no_grad():
            model.get_output_embeddings().weight.copy_(torch.from_numpy(steered))
            after = torch.softmax(model(input_ids=windows).logits.double(), -1)
            model.get_output_embeddings().weight.copy_(torch.from_numpy(weight))
            before = torch.softmax(model(input_ids=windows).logits.double(), -1)
        alpha = before.reshape(-1, before.shape[-1]).mean(0).numpy()
        steered_alpha = after.reshape(-1, after.shape[-1]).mean(0).numpy()
        assert effects.alpha[k] == pytest.approx(alpha[token], rel=1e-5)
        assert effects.steered_alpha[k] == pytest.approx(steered_alpha[token], rel=1e-5)
        keep = np.arange(len(alpha)) != token
        p = alpha[keep] / alpha[keep].sum()
        q = steered_alpha[keep] / steered_alpha[keep].sum()
        assert effects.kl_other[k] == pytest.approx(np.sum(p * np.log(p / q)), rel=1e-3,
                                                    abs=1e-9)


def test_untying_separates_output_from_input_embeddings(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_model(tiny_models["gpt2"])
    inputs_before = model.get_input_embeddings().weight.detach().clone()
    untie_output_embeddings(model)
    assert not output_head(model).tied
    with torch.no_grad():
        model.get_output_embeddings().weight[3] += 1.0
    torch.testing.assert_close(model.get_input_embeddings().weight, inputs_before)
    model.save_pretrained(tmp_path / "untied")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "untied")
    assert not output_head(reloaded).tied
    torch.testing.assert_close(reloaded.get_output_embeddings().weight,
                               model.get_output_embeddings().weight)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, inputs_before)
