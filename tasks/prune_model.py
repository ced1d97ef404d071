"""Writing a pruned copy of a model that any transformers code can load (paper §4), its
deleted dimensions optionally compensated from the kept ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._stage import MODEL_TAG
from tasks.pruning import plan_deletions
from tokprob.config import PruningConfig
from tokprob.head import output_head, untie_output_embeddings
from tokprob.model_export import new_model_folder, save_model_folder
from tokprob.model_sources import ModelSource
from tokprob.models import load_model, load_tokenizer
from tokprob.pruning import check_fractions
from tokprob.store import ArtifactRef

RECORD = "tokprob-pruning.json"


@task(name="save-pruned-model", cache_policy=NO_CACHE, tags=[MODEL_TAG])
def save_pruned_model(model: ModelSource, regression: ArtifactRef, embeddings: ArtifactRef,
                      fraction: float, config: PruningConfig, out: str,
                      method: str = "saliency", probabilities: ArtifactRef | None = None,
                      hidden_detect: ArtifactRef | None = None) -> dict[str, Any]:
    """Delete a fraction of E's columns by one method (untied first; the bias stays):
    the least salient (saliency), the same compensated from the kept columns
    (compensated), or in the compensated greedy order; save the model with
    save_pretrained, its tokenizer and the deleted dimensions."""
    check_fractions((fraction,))
    target = new_model_folder(out)
    weight, plans = plan_deletions(regression, embeddings, probabilities, hidden_detect,
                                   config, ())
    plan = next(p for p in plans if p.method == method)
    deleted = np.sort(plan.deleted(fraction))
    lm = load_model(model.path, dtype="auto", device="cpu")  # exported in its own dtype
    untie_output_embeddings(lm)
    with torch.no_grad():
        output_head(lm).weight.copy_(torch.from_numpy(plan.pruned_weight(weight, fraction)))
    record = {"source_model": model.spec, "source_fingerprint": model.fingerprint,
              "fraction": fraction, "saliency": config.saliency, "method": method,
              "hidden_size": int(weight.shape[1]), "deleted_dimensions": deleted.tolist()}
    save_model_folder(lm, load_tokenizer(model.path), target, RECORD, record)
    return {"out": str(target)} | record
