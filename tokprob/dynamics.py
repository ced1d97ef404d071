"""Frequency encoding through training (paper §5).

For a series of checkpoints: the regression of −log f_w (add-one smoothed unigram
frequency of the training corpus) on each checkpoint's output embeddings, and how far
each group of parameters still is from the final checkpoint, relative distance
‖θ_c − θ_f‖/‖θ_f‖ and cosine similarity. The paper's claim: frequency encoding appears
in the very first steps, before the parameters visibly converge.

Parameters are compared tensor by tensor straight from the safetensors files, so memory
stays at one tensor of each checkpoint, not two models. Only what the architecture holds
as parameters counts: Pythia's files also hold buffers that never change (causal masks,
−1e9 mask values, rotary frequencies), which would swamp ‖θ_f‖ and show every group as
converged from the first step.

    counts, tokens = unigram_counts(tokenized_documents, vocab_size)
    row = encoding_fits(embeddings, counts, alpha)   # per checkpoint
    table = checkpoint_table(rows)                   # every checkpoint, by step
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tokprob.errors import TokprobError
from tokprob.regression import encoding_target, fit_ols
from tokprob.weights import meta_skeleton, parameter_names

_LAYER = re.compile(r"\.(?:h|layers|layer|blocks)\.(\d+)\.")
_STEP = re.compile(r"(?:step|checkpoint)[-_]?(\d+)", re.IGNORECASE)


def parameter_group(name: str) -> str:
    """embeddings, layer_<i>, head (untied output embeddings) or other (final norm…)."""
    layer = _LAYER.search(name)
    if layer:
        return f"layer_{int(layer.group(1))}"
    if "lm_head" in name or "embed_out" in name:
        return "head"
    if any(part in name for part in ("wte", "wpe", "embed")):
        return "embeddings"
    return "other"


def step_of(spec: str) -> int | None:
    """The training step a revision or folder name states (step1000, step-000128)."""
    found = _STEP.findall(spec)
    return int(found[-1]) if found else None


def checkpoint_steps(specs: list[str]) -> list[int]:
    """The training step of each checkpoint: the one its name states (step1000,
    step-000128) or, where no name states one, its place in the list. A mix is refused:
    a checkpoint without a step among ones with steps (a hub model's main revision, say)
    has no place to sort by."""
    steps = [step_of(spec) for spec in specs]
    unnamed = [spec for spec, step in zip(specs, steps, strict=True) if step is None]
    if not unnamed:
        return steps
    if len(unnamed) == len(specs):
        return list(range(len(specs)))
    raise TokprobError(
        f"The checkpoint{'s' if len(unnamed) > 1 else ''} {', '.join(unnamed)} state"
        f"{'' if len(unnamed) > 1 else 's'} no training step while the others do, so "
        "where it belongs among them is unknown. Name the step in the revision (e.g. "
        "EleutherAI/pythia-70m@step143000, the final Pythia checkpoint), or give only "
        "checkpoints without steps, oldest first."
    )


def check_checkpoint_count(count: int) -> None:
    """The analysis compares checkpoints with the final one: it needs two at least."""
    if count < 2:
        raise TokprobError(
            f"Training dynamics need at least two checkpoints, got {count}. Give several "
            "with --checkpoints, oldest first (e.g. EleutherAI/pythia-70m@step0,…@step1000), "
            "or none to use the built-in pre-training run."
        )


def parameter_filter(folder: Path) -> Callable[[str], bool]:
    """Whether a tensor stored in a checkpoint file of this model is one of its parameters
    (a tied output embedding counts once, under its input name), by the architecture
    built on the meta device, so no weights are allocated; stored names are read as
    transformers reads them on loading (Pythia's `embed_out` is `lm_head`)."""
    try:
        skeleton = meta_skeleton(folder)
    except (OSError, ValueError, KeyError) as error:
        raise TokprobError(
            f"Cannot build the architecture of {folder} from its config.json ({error}), "
            "which tells its parameters from the buffers its weight files also hold. "
            "Give checkpoints of a transformers causal LM."
        ) from error
    parameters = dict(skeleton.named_parameters())
    return lambda stored: any(name in parameters
                              for name in parameter_names(skeleton, [stored]))


def convergence(checkpoint: Path, final: Path) -> dict[str, dict[str, float]]:
    """Per parameter group: relative distance to the final checkpoint and cosine, over
    the model's parameters (not its buffers)."""
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(4))  # diff², f², c², c·f
    is_parameter = parameter_filter(final)
    with ExitStack() as stack:
        current = _tensors(checkpoint, stack)
        reference = dict(_tensors(final, stack))
        seen = set()
        for name, tensor in current:
            if name not in reference or not is_parameter(name):
                continue
            target = reference[name]()
            value = tensor()
            if value.shape != target.shape:
                raise TokprobError(
                    f"Parameter {name} has shape {tuple(value.shape)} in {checkpoint} but "
                    f"{tuple(target.shape)} in {final}: the checkpoints are not of one model."
                )
            value, target = value.double(), target.double()
            sums[parameter_group(name)] += np.array([
                float(((value - target) ** 2).sum()), float((target**2).sum()),
                float((value**2).sum()), float((value * target).sum())])
            seen.add(name)
    if not seen:
        raise TokprobError(f"{checkpoint} and {final} share no parameter names: they are not "
                           "checkpoints of one model.")
    result = {}
    for group, (diff, final_sq, current_sq, dot) in sorted(sums.items()):
        result[group] = {
            "rel_distance": float(np.sqrt(diff / final_sq)) if final_sq > 0 else float("nan"),
            "cosine": float(dot / np.sqrt(final_sq * current_sq))
            if final_sq > 0 and current_sq > 0 else float("nan"),
        }
    return result


def unigram_counts(documents: Iterable[list[int]], vocab_size: int) -> tuple[np.ndarray, int]:
    """How often each of the `vocab_size` token ids occurs in the tokenized documents
    (int64), and how many tokens they hold."""
    ids = np.concatenate([np.asarray(doc, dtype=np.int64) for doc in documents if doc])
    counts = np.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts.astype(np.int64), int(ids.size)


def encoding_fits(embeddings: np.ndarray, counts: np.ndarray,
                  alpha: np.ndarray | None = None) -> dict[str, float]:
    """R² and adjusted R² of one checkpoint's E for −log f (add-one smoothed unigram
    frequency) and, given α, for −log α (tokens with α = 0 left out); NaN without α."""
    frequency = fit_ols(embeddings, encoding_target(counts, counts, "frequency"))
    fits = {"r2_freq": frequency.r2, "adj_r2_freq": frequency.adj_r2,
            "r2_alpha": math.nan, "adj_r2_alpha": math.nan}
    if alpha is not None:
        y = encoding_target(alpha, alpha, "alpha")
        usable = np.isfinite(y)
        fit = fit_ols(embeddings[usable], y[usable])
        fits |= {"r2_alpha": fit.r2, "adj_r2_alpha": fit.adj_r2}
    return fits


def checkpoint_table(rows: list[pd.DataFrame]) -> pd.DataFrame:
    """Every checkpoint's row, by step, with the relative distance and the cosine to the
    final checkpoint averaged over the parameter groups."""
    table = pd.concat(rows, ignore_index=True).sort_values("step", ignore_index=True)
    distances = [c for c in table if c.startswith("rel_distance_")]
    table["rel_distance_mean"] = table[distances].mean(axis=1)
    table["cosine_mean"] = table[[c.replace("rel_distance", "cosine")
                                  for c in distances]].mean(axis=1)
    return table


def training_milestones(table: pd.DataFrame) -> dict[str, float]:
    """How many checkpoints, the final adjusted R² of −log f, the first step at which it
    passes half of that, and the first at which the mean relative distance to the final
    checkpoint falls below half its initial value."""
    return {
        "checkpoints": len(table),
        "freq_half_step": first_step(table, "adj_r2_freq", above=True, share=0.5),
        "distance_half_step": first_step(table, "rel_distance_mean", above=False, share=0.5),
        "final_adj_r2_freq": float(table["adj_r2_freq"].iloc[-1]),
    }


def first_step(table: pd.DataFrame, column: str, above: bool, share: float) -> float:
    """The first step at which `column` is above (or below) `share` of its final value
    (above) or of its initial value (below); NaN if it never is."""
    ordered = table.sort_values("step")
    values = ordered[column].to_numpy()
    reference = values[-1] if above else values[0]
    hit = values > share * reference if above else values < share * reference
    return float(ordered["step"].to_numpy()[np.argmax(hit)]) if hit.any() else float("nan")


def _tensors(folder: Path, stack: ExitStack) -> Iterator[tuple[str, callable]]:
    """(name, loader) for every parameter of a model folder, loaded one at a time."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for path in files:
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, (lambda handle=handle, name=name: handle.get_tensor(name))
        return
    binaries = sorted(folder.glob("pytorch_model*.bin"))
    if not binaries:
        raise TokprobError(f"No weights (.safetensors or pytorch_model.bin) in {folder}.")
    for path in binaries:
        for name, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
            yield name, (lambda tensor=tensor: tensor)
