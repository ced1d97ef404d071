"""A small GPT-2-style pre-training run with log-spaced checkpoints (paper §5).

The training dynamics analysis needs checkpoints; with no hub, tokprob makes its own:
a byte-level BPE tokenizer trained on the corpus, a GPT-2 architecture (untied output
embeddings by default, as in Pythia, so E is the output side alone) trained from
scratch with AdamW, and ordinary transformers folders saved at steps 0, 1, 2, 4, … and
the final step. The batch of step s is drawn from a generator seeded by (seed, s), so a
run is deterministic on CPU and resumes exactly from its last checkpoint after an
interruption.

    tokenizer = train_tokenizer(documents, vocab_size=8192)
    run = Pretraining(config, tokenizer, windows, work_dir)
    run.train(progress)
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tokprob.errors import TokprobError
from tokprob.models import quiet_transformers
from tokprob.progress import Progress

END_OF_TEXT = "<|endoftext|>"
STATE_FILE = "training-state.pt"
LOSS_FILE = "loss.jsonl"


@dataclass(frozen=True)
class PretrainSettings:
    """Size and schedule of a pre-training run (the fields of PretrainConfig)."""

    vocab_size: int
    layers: int
    hidden_size: int
    heads: int
    context: int
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    tie_embeddings: bool
    seed: int


def checkpoint_steps(steps: int) -> list[int]:
    """0, 1, 2, 4, … below `steps`, and `steps` itself."""
    return [0] + [1 << i for i in range(steps.bit_length()) if (1 << i) < steps] + [steps]


def train_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the documents, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(documents, trainer, length=len(documents))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=END_OF_TEXT,
                                   bos_token=END_OF_TEXT, unk_token=END_OF_TEXT)


def build_model(settings: PretrainSettings, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=settings.context,
                        n_embd=settings.hidden_size, n_layer=settings.layers,
                        n_head=settings.heads, bos_token_id=0, eos_token_id=0,
                        tie_word_embeddings=settings.tie_embeddings)
    torch.manual_seed(settings.seed)
    model = GPT2LMHeadModel(config)
    # transformers finds no loss for the class name GPT2LMHeadModel and warns on every run
    # before falling back to this one, the next-token cross-entropy.
    model.loss_type = "ForCausalLM"
    return model


def learning_rate(settings: PretrainSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / span, 1.0)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(seed: int, step: int, n_windows: int, batch_size: int) -> np.ndarray:
    """The windows of step `step`: a function of (seed, step) alone, so resuming from
    any checkpoint replays exactly the batches an uninterrupted run would see."""
    return np.random.default_rng([seed, step]).integers(0, n_windows, size=batch_size)


class Pretraining:
    """A resumable run writing checkpoints into `work_dir/step-XXXXXX/`."""

    def __init__(self, settings: PretrainSettings, tokenizer, windows: np.ndarray,
                 work_dir: Path) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.windows = torch.as_tensor(windows, dtype=torch.long)
        self.work_dir = work_dir
        self.checkpoints = checkpoint_steps(settings.steps)

    def checkpoint_dir(self, step: int) -> Path:
        return self.work_dir / f"step-{step:06d}"

    def train(self, progress: Progress | None = None) -> list[dict[str, float]]:
        """Train to the last step, resuming from the latest saved state; returns the
        loss of every step."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        model = build_model(self.settings, len(self.tokenizer))
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.settings.learning_rate,
                                      betas=(0.9, 0.95), weight_decay=0.1)
        start = self._resume(model, optimizer)
        if start == 0:
            self._save(model, optimizer, 0)
        if progress is not None:
            progress.update(start)
        model.train()
        tokens_per_step = self.settings.batch_size * self.settings.context
        for step in range(start, self.settings.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(self.settings, step)
            rows = batch_indices(self.settings.seed, step, len(self.windows),
                                 self.settings.batch_size)
            batch = self.windows[rows]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with (self.work_dir / LOSS_FILE).open("a") as log:
                log.write(json.dumps({"step": step + 1, "loss": loss.item(),
                                      "tokens_seen": (step + 1) * tokens_per_step}) + "\n")
            if step + 1 in self.checkpoints:
                self._save(model, optimizer, step + 1)
            if progress is not None:
                progress.update(1)
        return self.losses()

    def losses(self) -> list[dict[str, float]]:
        """The loss of each step, the latest record of a step winning (a resumed run
        may have logged steps after its last checkpoint twice)."""
        path = self.work_dir / LOSS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines]
        by_step = {record["step"]: record for record in records}
        return [by_step[step] for step in sorted(by_step)]

    def _save(self, model, optimizer, step: int) -> None:
        folder = self.checkpoint_dir(step)
        scratch = folder.with_name(folder.name + ".tmp")
        with quiet_transformers():
            model.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)
        (scratch / "tokprob-pretrain.json").write_text(json.dumps(
            asdict(self.settings) | {"step": step}, indent=2))
        if folder.exists():  # written before an interruption: the same weights
            import shutil

            shutil.rmtree(folder)
        scratch.replace(folder)
        state = {"step": step, "optimizer": optimizer.state_dict(),
                 "rng": torch.get_rng_state()}
        torch.save(state, self.work_dir / (STATE_FILE + ".tmp"))
        (self.work_dir / (STATE_FILE + ".tmp")).replace(self.work_dir / STATE_FILE)

    def _resume(self, model, optimizer) -> int:
        state_path = self.work_dir / STATE_FILE
        if not state_path.exists():
            return 0
        try:
            # Tensors, numbers and containers only: unpickling anything else could run
            # code written into the data folder.
            state = torch.load(state_path, weights_only=True)
        except pickle.UnpicklingError:
            raise TokprobError(
                f"The pre-training resume state {state_path} holds more than tensors and "
                "numbers, so it is not loaded (unpickling it could run code). Delete it "
                "to pre-train from the start."
            ) from None
        step = int(state["step"])
        from transformers import GPT2LMHeadModel

        saved = GPT2LMHeadModel.from_pretrained(self.checkpoint_dir(step))
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        return step
