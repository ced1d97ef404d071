"""Greedy generations of pruned models, decoded together, against each pruned model
decoded alone."""

import numpy as np
import pytest
import torch

import tokprob.generation
from tokprob.generation import generation_agreement, greedy_agreement, greedy_continuations
from tokprob.head import output_head, untie_output_embeddings
from tokprob.models import load_model
from tokprob.pruning import deletion_plans


def test_greedy_agreement():
    original = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    pruned = np.array([[1, 2, 9, 4], [5, 6, 7, 8]])
    match, first = greedy_agreement(original, pruned)
    assert match == pytest.approx(7 / 8)
    assert first == pytest.approx((2 + 4) / 2)


def _argmax_loop(model, prompts: torch.Tensor, new_tokens: int) -> np.ndarray:
    """Greedy decoding written out: the full forward pass at every step, the most probable
    token but end-of-sequence (continuations are kept to their full length)."""
    ids = prompts
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = model(input_ids=ids).logits[:, -1].clone()
            if eos is not None and eos < logits.shape[1]:
                logits[:, eos] = -torch.inf
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompts.shape[1]:].numpy()


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_greedy_continuations_equal_a_step_by_step_argmax_loop(tiny_models, architecture):
    model = load_model(tiny_models[architecture])
    prompts = torch.randint(0, 300, (3, 6), generator=torch.Generator().manual_seed(2))
    continued = greedy_continuations(model, prompts, 5)
    assert continued.shape == (3, 5)
    np.testing.assert_array_equal(continued, _argmax_loop(model, prompts, 5))


@pytest.mark.parametrize("architecture", ["llama", "phi"])  # phi: an LM head with a bias
@pytest.mark.parametrize("heads_bytes", [1, tokprob.generation.HEADS_BYTES],
                         ids=["one-at-a-time", "all-together"])
def test_generation_agreement_compares_each_pruned_model_with_the_original(
        tiny_models, monkeypatch, architecture, heads_bytes):
    monkeypatch.setattr(tokprob.generation, "HEADS_BYTES", heads_bytes)
    model = load_model(tiny_models[architecture])
    untie_output_embeddings(model)
    module = model.get_output_embeddings()
    head = output_head(model).weight
    weight = head.numpy().copy()
    prompts = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(4))
    original = _argmax_loop(model, prompts, 4)
    plans = deletion_plans(np.arange(32.0), np.linalg.norm(weight, axis=0), seeds=(0,))
    fractions = (0.0, 0.5, 0.9)
    table = generation_agreement(model, weight, plans, fractions, prompts, 4)
    assert model.get_output_embeddings() is module and np.array_equal(head.numpy(), weight)
    assert len(table) == len(plans) * len(fractions)
    for plan in plans:
        for fraction in fractions:
            with torch.no_grad():
                head.copy_(torch.from_numpy(plan.pruned_weight(weight, fraction)))
            expected = greedy_agreement(original, _argmax_loop(model, prompts, 4))
            row = table[(table["method"] == plan.method)
                        & (table["fraction"] == fraction)].iloc[0]
            assert (row["generation_match"], row["first_divergence"]) == expected
    assert (table[table["fraction"] == 0.0]["generation_match"] == 1.0).all()


def test_generation_agreement_runs_the_model_in_its_own_dtype(tiny_models):
    # The pruning stage generates with the run's dtype (a bfloat16 model stays bfloat16):
    # each float32 pruned E is rounded to bfloat16, as the saved pruned model holds it.
    model = load_model(tiny_models["llama"], dtype="bfloat16")
    untie_output_embeddings(model)
    head = output_head(model).weight
    weight = head.float().numpy().copy()
    prompts = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(4))
    original = greedy_continuations(model, prompts, 4)
    plans = deletion_plans(np.arange(32.0), np.linalg.norm(weight, axis=0), seeds=(0,))
    before = head.detach().clone()
    table = generation_agreement(model, weight, plans, (0.0, 0.9), prompts, 4)
    assert output_head(model).weight.dtype == torch.bfloat16
    assert torch.equal(output_head(model).weight, before)  # the model is as it was
    assert (table[table["fraction"] == 0.0]["generation_match"] == 1.0).all()
    with torch.no_grad():
        head.copy_(torch.from_numpy(plans[0].pruned_weight(weight, 0.9)))
    row = table[(table["method"] == plans[0].method) & (table["fraction"] == 0.9)].iloc[0]
    assert (row["generation_match"], row["first_divergence"]) == greedy_agreement(
        original, _argmax_loop(model, prompts, 4))


def test_head_per_model_gives_each_interleaved_row_its_models_weight():
    from tokprob.generation import _HeadPerModel

    rng = torch.Generator().manual_seed(1)
    weights = [torch.randn(7, 5, generator=rng) for _ in range(3)]
    bias = torch.randn(7, generator=rng)
    hidden = torch.randn(6, 4, 5, generator=rng)  # 2 prompts × 3 models, 4 positions
    logits = _HeadPerModel(weights, bias)(hidden)
    assert logits.shape == (6, 4, 7)
    for row in range(6):
        expected = hidden[row] @ weights[row % 3].T + bias
        torch.testing.assert_close(logits[row], expected)
