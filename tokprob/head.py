"""The output head of a causal LM: E, its bias and tying, and logits rebuilt from the
final hidden states (logits = h @ E.T + b, paper §2). Every stage's arithmetic on the head
goes through these.

    head = output_head(model)
    logits = head_logits(final_hidden_states(model, input_ids), head)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokprob.errors import TokprobError


@dataclass(frozen=True)
class OutputHead:
    """The LM head: logits = hidden @ weight.T + bias."""

    weight: torch.Tensor
    """E: (vocab, d)."""
    bias: torch.Tensor | None
    """b: (vocab,), or None."""
    tied: bool
    """Whether E is the input embedding matrix itself."""

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]


def output_head(model) -> OutputHead:
    """E, its bias and whether it is tied to the input embeddings."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TokprobError(
            f"{type(model).__name__} has no linear output embedding (LM head); tokprob "
            "analyses causal LMs whose logits are hidden @ E.T (+ b)."
        )
    inputs = model.get_input_embeddings()
    tied = inputs is not None and inputs.weight.data_ptr() == head.weight.data_ptr()
    bias = getattr(head, "bias", None)
    return OutputHead(weight=head.weight.detach(),
                      bias=None if bias is None else bias.detach(), tied=tied)


def float32_head(head: OutputHead) -> OutputHead:
    """The head upcast to float32, for float32 hidden states (a bfloat16 model's edits
    evaluated as the saved weights compute them)."""
    return OutputHead(weight=head.weight.float(),
                      bias=None if head.bias is None else head.bias.float(), tied=head.tied)


def untie_output_embeddings(model) -> None:
    """Give the LM head its own copy of E, so that editing it leaves the input embeddings
    alone (steering and pruning change only the output side, paper §3 and §4)."""
    if not output_head(model).tied:
        return
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False


def final_hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states after the final norm: (batch, positions, d)."""
    # No key/value cache: nothing generates from these states, and a model of GPT-2 XL's
    # shape would keep 80 MB of it per 256-token window of the batch.
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def head_logits(hidden: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """float32 logits hidden @ E.T + b, in the model's dtype until the upcast."""
    # A model spread over devices (device_map) may end its last layer on another one.
    logits = hidden.to(head.weight.device) @ head.weight.T
    if head.bias is not None:
        logits = logits + head.bias
    return logits.float()


def check_head(model, head: OutputHead, vocab_size: int) -> None:
    """Fail unless logits rebuilt from final hidden states and E equal the model's.

    tokprob's stages rely on logits = h @ E.T + b; a model that scales or caps its logits
    after the head would make every stage silently wrong.
    """
    device = head.weight.device
    probe = torch.arange(min(8, vocab_size), device=device).unsqueeze(0)
    with torch.inference_mode():
        expected = model(input_ids=probe).logits.float()
        rebuilt = head_logits(final_hidden_states(model, probe), head)
    if not torch.isfinite(expected).all():
        raise TokprobError(
            "The model's logits contain NaN or infinity on a short probe input. The weights "
            "are likely damaged, or the dtype overflows (try --dtype float32)."
        )
    tolerance = 1e-3 if head.weight.dtype == torch.float32 else 5e-2
    scale = expected.abs().max().clamp_min(1.0)
    if (expected - rebuilt).abs().max() > tolerance * scale:
        raise TokprobError(
            f"{type(model).__name__} does not compute its logits as final hidden states @ "
            "E.T (+ bias): it transforms them after the head (scaling or soft-capping). "
            "tokprob's analysis assumes a plain linear LM head."
        )
