"""Writing a steered copy of a model that any transformers code can load (paper §3)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._stage import MODEL_TAG
from tasks.catalog import ALPHA, SLOPES, read_bias, read_embeddings, read_hidden
from tokprob.calibration import effective_positions, jointly_calibrated_edits
from tokprob.config import SparsityConfig, SteeringConfig
from tokprob.errors import TokprobError
from tokprob.head import float32_head, output_head
from tokprob.model_export import new_model_folder, save_model_folder
from tokprob.model_sources import ModelSource
from tokprob.models import load_model, load_tokenizer
from tokprob.resampling import ratio_intervals
from tokprob.steering import (
    check_edits,
    closed_form_edits,
    omega_mask,
    resolve_targets,
    steer_model,
    steering_direction,
    target_logits,
    window_of_positions,
)
from tokprob.store import ArtifactRef

RECORD = "tokprob-steering.json"


@task(name="save-steered-model", cache_policy=NO_CACHE, tags=[MODEL_TAG])
def save_steered_model(model: ModelSource, regression: ArtifactRef, embeddings: ArtifactRef,
                       probabilities: ArtifactRef, hidden: ArtifactRef,
                       detect_hidden: ArtifactRef | None, tokens: list[str],
                       ratios: list[float], method: str, config: SteeringConfig,
                       significance: SparsityConfig, out: str) -> dict[str, Any]:
    """Steer the tokens by the ratios and save the model with save_pretrained (untied),
    its tokenizer, and a JSON record of the edit with the ratios predicted on held-out
    text."""
    check_edits(tokens, ratios)
    target = new_model_folder(out)
    tokenizer = load_tokenizer(model.path)
    weight, bias = read_embeddings(embeddings), read_bias(embeddings)
    ids = resolve_targets(tuple(tokens), tokenizer, len(weight))
    if len(set(ids)) != len(ids):
        raise TokprobError("A token is given twice; give each token once with its ratio.")
    rests_on = None  # per calibrated edit, the detecting positions it effectively rests on
    if method == "calibrated":
        detect = read_hidden(detect_hidden).hidden
        stats = target_logits(detect, weight, bias, np.asarray(ids), jointly=True)
        edits = jointly_calibrated_edits(detect, weight, bias, ids, ratios,
                                         [tokenizer.decode([token]) for token in ids], stats)
        details = {"detect_positions": len(detect)}
        rests_on = [effective_positions(p) for p in stats.probabilities().T]
    else:
        table = SLOPES.read(regression)
        mask = omega_mask(table, config.omega, significance.significance, config.top_k)
        direction = steering_direction(table["slope"].to_numpy(), mask)
        edits = closed_form_edits(dict(zip(ids, ratios, strict=True)), direction)
        details = {"omega": config.omega, "omega_dims": int(mask.sum()),
                   "direction": direction.tolist()}
    lm = load_model(model.path, dtype="auto", device="cpu")  # exported in its own dtype
    steer_model(lm, edits)
    # One pass of the original head gives the targets' held-out α and their support, one
    # of the saved head their α' (the edits act together through one normalizer); the
    # interval resamples held-out windows.
    stored = read_hidden(hidden)
    held_p = target_logits(stored.hidden, weight, bias, np.asarray(ids),
                           jointly=True).probabilities()
    steered = float32_head(output_head(lm))
    steered_p = target_logits(stored.hidden, steered.weight.detach().numpy(),
                              None if steered.bias is None else steered.bias.detach().numpy(),
                              np.asarray(ids), jointly=True).probabilities()
    alpha_heldout = held_p.mean(axis=0)
    before = dict(zip(ids, alpha_heldout.tolist(), strict=True))
    predicted = dict(zip(ids, (steered_p.mean(axis=0) / alpha_heldout).tolist(), strict=True))
    intervals = ratio_intervals(window_of_positions(stored.targets), held_p, steered_p)
    detect_alpha = ALPHA.read(probabilities, ["alpha"])["alpha"].to_numpy()
    record = {
        "source_model": model.spec, "source_fingerprint": model.fingerprint,
        "method": method, **details,
        "edits": [
            {"token": tokenizer.decode([token]), "token_id": token, "ratio": ratio,
             "delta": edits[token].tolist(), "alpha_detect": float(detect_alpha[token]),
             "alpha_heldout": float(before[token]),
             "predicted_ratio_heldout": predicted[token],
             "predicted_ratio_heldout_interval": intervals[k],
             "heldout_log_error": abs(float(np.log(predicted[token] / ratio))),
             "heldout_effective_positions": effective_positions(held_p[:, k])}
            | ({} if rests_on is None else {"detect_effective_positions": rests_on[k]})
            for k, (token, ratio) in enumerate(zip(ids, ratios, strict=True))
        ],
    }
    save_model_folder(lm, tokenizer, target, RECORD, record)
    return {"out": str(target)} | {k: v for k, v in record.items() if k != "direction"} | {
        "edits": [{k: v for k, v in edit.items() if k != "delta"} for edit in record["edits"]]}
