"""Greedy generations of pruned models against the original's (paper §4's generation
agreement).

Every pruned model shares the original's transformer body; only its LM head differs. So
the body reads the prompts once: their key/value cache (all but the last token) is
computed once and copied for every model, which is most of the work when prompts are
longer than continuations. The pruned models are then decoded several at a time, one
`generate` call over the prompts repeated once per model, with an LM head that gives
each model's copy of a prompt that model's own pruned E (in the model's dtype and on its
device, as the saved model computes). The original's continuation is decoded the same
way, so an unpruned model agrees with it exactly.

    table = generation_agreement(lm, weight, plans, fractions, prompts, new_tokens=16)
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from tokprob.progress import Progress
from tokprob.pruning import DeletionPlan

HEADS_BYTES = 512 * 2**20
"""Memory the pruned heads decoded together may take (one E each, in the model's dtype):
SmolLM2-135M's float32 E is 113 MB, so four at a time; a model whose E alone exceeds it
is decoded one pruned head at a time."""


class _HeadPerModel(torch.nn.Module):
    """An LM head for sequences interleaved by model (row i belongs to model i mod n):
    each model's rows get its own weight; the bias is shared, as pruning leaves it."""

    def __init__(self, weights: list[torch.Tensor], bias: torch.Tensor | None):
        super().__init__()
        self.weights, self.bias = weights, bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.to(self.weights[0].device)
        n, (rows, positions, d) = len(self.weights), hidden.shape
        # Each model's rows as one contiguous matrix: a strided 3-d input would take a
        # batched product several times slower.
        logits = [torch.nn.functional.linear(hidden[m::n].reshape(-1, d), weight, self.bias)
                  .reshape(rows // n, positions, -1) for m, weight in enumerate(self.weights)]
        return torch.stack(logits, dim=1).flatten(0, 1)


def greedy_agreement(original: np.ndarray, pruned: np.ndarray) -> tuple[float, float]:
    """Token-level match rate of two greedy continuations (prompts × new tokens) and the
    mean first position where they differ (the continuation length if they never do)."""
    same = original == pruned
    length = original.shape[1]
    first = np.where(same.all(axis=1), length, np.argmin(same, axis=1))
    return float(same.mean()), float(first.mean())


def greedy_continuations(lm, prompts: torch.Tensor, new_tokens: int,
                         prefix=None) -> np.ndarray:
    """The model's greedy continuation of every prompt, exactly `new_tokens` long (the end
    of sequence is never chosen): prompts (n_prompts, prompt_tokens) → tokens
    (n_prompts, new_tokens). `prefix`: the key/value cache of the prompts' first tokens,
    already computed (it is used up)."""
    prompts = prompts.to(lm.device)
    cached = {} if prefix is None else {_cache_argument(): prefix}
    with torch.inference_mode():
        generated = lm.generate(prompts, attention_mask=torch.ones_like(prompts),
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=0, **cached)
    return generated[:, prompts.shape[1]:].cpu().numpy()


def _cache_argument() -> str:
    """The name of a key/value cache, for generate and in a model's output: `cache` in
    the transformers releases that name it so (they deprecate `past_key_values`), else
    the old name."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def _prompt_cache(lm, prompts: torch.Tensor):
    """The body's key/value cache of every prompt but its last token; None for prompts
    of one token, or a cache that cannot be copied per model (then every model reads
    the prompts itself)."""
    if prompts.shape[1] < 2:
        return None
    with torch.inference_mode():
        output = lm.base_model(input_ids=prompts[:, :-1].to(lm.device), use_cache=True)
    cache = output.get(_cache_argument())
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def _decode_together(lm, prompts: torch.Tensor, prefix, weights: list[torch.Tensor],
                     bias: torch.Tensor | None, new_tokens: int) -> list[np.ndarray]:
    """Each weight's model's greedy continuations of the prompts (the body's, with that
    LM head), decoded in one batch from a copy of the prompts' cache."""
    n = len(weights)
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(n)
    lm.set_output_embeddings(_HeadPerModel(weights, bias))
    continued = greedy_continuations(lm, prompts.repeat_interleave(n, dim=0), new_tokens,
                                     cache)
    return [continued[m::n] for m in range(n)]


def generation_agreement(lm, weight: np.ndarray, plans: list[DeletionPlan],
                         fractions: tuple[float, ...], prompts: torch.Tensor, new_tokens: int,
                         progress: Progress | None = None) -> pd.DataFrame:
    """Greedy continuations of the prompts by each plan's pruned model against the
    original model's (`greedy_agreement`), per plan and fraction. `lm` has an untied
    LM head; it is the same model again when this returns."""
    head = lm.get_output_embeddings()
    bias = getattr(head, "bias", None)
    prefix = _prompt_cache(lm, prompts)
    pruned = [(plan, fraction) for plan in plans for fraction in fractions]
    together = max(1, HEADS_BYTES // (head.weight.numel() * head.weight.element_size()))
    rows = []
    try:
        [reference] = _decode_together(lm, prompts, prefix, [head.weight.detach()],
                                       bias, new_tokens)
        for start in range(0, len(pruned), together):
            group = pruned[start:start + together]
            weights = [torch.from_numpy(plan.pruned_weight(weight, fraction))
                       .to(head.weight.device, head.weight.dtype) for plan, fraction in group]
            for (plan, fraction), tokens in zip(
                    group, _decode_together(lm, prompts, prefix, weights, bias,
                                            new_tokens), strict=True):
                match, first = greedy_agreement(reference, tokens)
                rows.append({"method": plan.method, "seed": plan.seed, "fraction": fraction,
                             "generation_match": match, "first_divergence": first})
                if progress is not None:
                    progress.update(1)
    finally:
        lm.set_output_embeddings(head)
    return pd.DataFrame(rows)
