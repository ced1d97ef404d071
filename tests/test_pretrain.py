"""The built-in pre-training run: checkpoints, determinism and exact resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tokenizer, tiny_corpus

from tokprob.pretrain import (
    Pretraining,
    PretrainSettings,
    checkpoint_steps,
    learning_rate,
    train_tokenizer,
)
from tokprob.progress import Progress
from tokprob.windows import pack, tokenize

SETTINGS = PretrainSettings(vocab_size=320, layers=1, hidden_size=16, heads=2, context=16,
                            batch_size=4, steps=6, learning_rate=3e-3, warmup_steps=2,
                            tie_embeddings=False, seed=3)


@pytest.fixture(scope="module")
def data():
    tokenizer = build_tokenizer()
    windows = pack(tokenize(tokenizer, tiny_corpus(80)), SETTINGS.context,
                   tokenizer.eos_token_id)
    return tokenizer, windows


def _weights(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_checkpoint_steps_are_log_spaced():
    assert checkpoint_steps(300) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert checkpoint_steps(8) == [0, 1, 2, 4, 8]
    assert checkpoint_steps(1) == [0, 1]


def test_learning_rate_schedule():
    assert learning_rate(SETTINGS, 0) == pytest.approx(SETTINGS.learning_rate / 2)
    assert learning_rate(SETTINGS, 1) == pytest.approx(SETTINGS.learning_rate)
    assert learning_rate(SETTINGS, SETTINGS.steps) == pytest.approx(SETTINGS.learning_rate / 10)


def test_tokenizer_trained_on_the_corpus():
    tokenizer = train_tokenizer(tiny_corpus(40), vocab_size=300)
    assert len(tokenizer) <= 300
    assert tokenizer.eos_token == "<|endoftext|>"
    text = "The cat sat on the mat"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_training_saves_loadable_checkpoints_and_lowers_the_loss(data, tmp_path):
    tokenizer, windows = data
    run = Pretraining(SETTINGS, tokenizer, windows, tmp_path / "run")
    losses = run.train()
    assert [r["step"] for r in losses] == list(range(1, SETTINGS.steps + 1))
    assert losses[-1]["tokens_seen"] == SETTINGS.steps * SETTINGS.batch_size * SETTINGS.context
    assert losses[-1]["loss"] < losses[0]["loss"]
    for step in checkpoint_steps(SETTINGS.steps):
        folder = run.checkpoint_dir(step)
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    first, last = _weights(run.checkpoint_dir(0)), _weights(run.checkpoint_dir(6))
    assert not torch.equal(first["lm_head.weight"], last["lm_head.weight"])
    assert not torch.equal(first["lm_head.weight"], first["transformer.wte.weight"])  # untied


def test_same_seed_same_run_and_an_interrupted_run_resumes_exactly(data, tmp_path):
    tokenizer, windows = data
    whole = Pretraining(SETTINGS, tokenizer, windows, tmp_path / "whole")
    whole.train()

    class Interrupt(Progress):
        def update(self, amount: int) -> None:
            super().update(amount)
            if self.done == 3:  # after step 3: checkpoints 0, 1, 2 are saved, 4 is not
                raise KeyboardInterrupt

    broken = Pretraining(SETTINGS, tokenizer, windows, tmp_path / "broken")
    with pytest.raises(KeyboardInterrupt):
        broken.train(Interrupt(SETTINGS.steps, "test"))
    assert not broken.checkpoint_dir(4).exists()
    resumed = Pretraining(SETTINGS, tokenizer, windows, tmp_path / "broken").train()
    assert [r["step"] for r in resumed] == list(range(1, SETTINGS.steps + 1))
    for step in checkpoint_steps(SETTINGS.steps):
        reference, other = _weights(whole.checkpoint_dir(step)), _weights(
            broken.checkpoint_dir(step))
        for name, tensor in reference.items():
            torch.testing.assert_close(other[name], tensor, rtol=0, atol=0)
    np.testing.assert_allclose([r["loss"] for r in resumed],
                               [r["loss"] for r in whole.losses()], rtol=1e-6)


class _RunsCode:
    """Pickled, it calls `open(path, "w")` when loaded: a stand-in for any code."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_resume_state_holding_code_is_refused_not_run(data, tmp_path):
    from tokprob.errors import TokprobError
    from tokprob.pretrain import STATE_FILE

    tokenizer, windows = data
    run = Pretraining(SETTINGS, tokenizer, windows, tmp_path / "run")
    run.work_dir.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "optimizer": _RunsCode(marker)}, run.work_dir / STATE_FILE)
    with pytest.raises(TokprobError, match="holds more than tensors and numbers"):
        run.train()
    assert not marker.exists()
