"""Stage `hidden`: final hidden states of one split, for LM-head experiments.

The held-out split evaluates interventions; the detecting split calibrates them (the
step size of a calibrated steering edit, the compensation of pruned dimensions)."""

from __future__ import annotations

from typing import Any

from tasks._stage import publish_table, stage
from tasks.catalog import HIDDEN_STATES, read_windows
from tokprob.config import HiddenConfig, RunConfig
from tokprob.errors import TokprobError
from tokprob.hidden import write_hidden_states
from tokprob.model_sources import ModelSource
from tokprob.models import load_model
from tokprob.progress import Progress
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.windows import DETECT, HELDOUT

STAGE = "hidden"


def _split_read(arguments: dict[str, Any]) -> str:
    return arguments.get("split", HELDOUT)


@stage(STAGE, environment=("torch", "transformers"), loads_model=True,
       reads={"windows": _split_read})  # the windows of one split only
def hidden_states(out: ArtifactWriter, windows: ArtifactRef, model: ModelSource,
                  run: RunConfig, config: HiddenConfig, split: str = HELDOUT) -> None:
    """Store h for every position of the first `config.heldout_tokens` tokens of `split`
    (same dtype as α's forward passes)."""
    if split not in (DETECT, HELDOUT):
        raise TokprobError(f"Unknown window split {split!r}; use {DETECT} or {HELDOUT}.")
    heldout = read_windows(windows).take(split, config.heldout_tokens)
    if len(heldout) == 0:
        raise TokprobError(
            f"No {split} window to keep hidden states of: raise --heldout-fraction, "
            "--heldout-tokens (at least one window), or use a longer corpus of more "
            "documents (the held-out split takes whole documents)."
        )
    lm = load_model(model.path, run.dtype, run.device)
    with Progress(heldout.size, f"hidden states of {heldout.size:,} tokens") as progress:
        positions = write_hidden_states(lm, heldout, run.batch_size,
                                        out.path(HIDDEN_STATES.file), progress)
    out.summary.update(positions=positions, windows=len(heldout),
                       dtype=str(lm.dtype).removeprefix("torch."), split=split)
    publish_table(STAGE, out, [out.summary], f"Final hidden states ({split} split)")
