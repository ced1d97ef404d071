"""What the LM-head benchmarks (steering, pruning) share: held-out hidden states of the
default model, computed once, and a timed full forward pass for the baseline."""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks._common import BATCH_SIZE, Fixture
from tokprob.head import final_hidden_states, untie_output_embeddings
from tokprob.models import load_model
from tokprob.probabilities import batches
from tokprob.windows import HELDOUT


def heldout(fixture: Fixture, n_tokens: int,
            split: str = HELDOUT) -> tuple[np.ndarray, np.ndarray, float]:
    """Held-out (or detecting) windows, their final hidden states (positions, d) and the
    seconds the hidden states took: what the `hidden` stage stores once."""
    windows = fixture.windows.take(split, n_tokens)
    model = fixture.model("float32")
    started = time.perf_counter()
    with torch.inference_mode():
        states = [final_hidden_states(model, torch.as_tensor(b, dtype=torch.long))
                  for b in batches(windows, BATCH_SIZE)]
    hidden = torch.cat(states).reshape(-1, states[0].shape[-1]).numpy()
    return windows, hidden, time.perf_counter() - started


def editable_model(fixture: Fixture):
    """A separate, untied float32 copy of the model whose LM head the baseline edits."""
    model = load_model(fixture.model_source.path, dtype="float32")
    untie_output_embeddings(model)
    return model


def forward_probabilities(model, windows: np.ndarray) -> torch.Tensor:
    """Next-token distributions at every position, (positions, vocab) float64, by full
    forward passes: the baseline's work for one edit of the head."""
    rows = []
    with torch.inference_mode():
        for batch in batches(windows, BATCH_SIZE):
            logits = model(input_ids=torch.as_tensor(batch, dtype=torch.long)).logits
            rows.append(torch.softmax(logits.double(), -1).reshape(-1, logits.shape[-1]))
    return torch.cat(rows)
