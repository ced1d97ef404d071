"""Writing a pruned copy of a model that any transformers code can load (paper §4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._io import read_embeddings, read_table
from tasks._stage import MODEL_TAG
from tasks.regression import REGRESSION_FILE, read_gram
from tokprob.config import PruningConfig
from tokprob.models import (
    ModelSource,
    load_model,
    load_tokenizer,
    new_model_folder,
    output_head,
    save_model_folder,
    untie_output_embeddings,
)
from tokprob.pruning import check_fractions, deletion_plans, prune_columns, saliency_scores
from tokprob.store import ArtifactRef

RECORD = "tokprob-pruning.json"


@task(name="save-pruned-model", cache_policy=NO_CACHE, tags=[MODEL_TAG])
def save_pruned_model(model: ModelSource, regression: ArtifactRef, embeddings: ArtifactRef,
                      fraction: float, config: PruningConfig, out: str) -> dict[str, Any]:
    """Zero the least salient fraction of E's columns (untied first; the bias stays) and
    save the model with save_pretrained, its tokenizer and the deleted dimensions."""
    check_fractions((fraction,))
    target = new_model_folder(out)
    weight = read_embeddings(embeddings)
    gram = read_gram(regression)
    scores = saliency_scores(read_table(regression, REGRESSION_FILE),
                             np.sqrt(np.diag(gram.gram) / (gram.n - 1)), config.saliency)
    saliency_plan = deletion_plans(scores, np.linalg.norm(weight, axis=0), ())[0]
    deleted = np.sort(saliency_plan.deleted(fraction))
    lm = load_model(model.path, dtype="auto", device="cpu")  # exported in its own dtype
    untie_output_embeddings(lm)
    with torch.no_grad():
        output_head(lm).weight.copy_(torch.from_numpy(prune_columns(weight, deleted)))
    record = {"source_model": model.spec, "source_fingerprint": model.fingerprint,
              "fraction": fraction, "saliency": config.saliency,
              "hidden_size": int(weight.shape[1]), "deleted_dimensions": deleted.tolist()}
    save_model_folder(lm, load_tokenizer(model.path), target, RECORD, record)
    return {"out": str(target)} | record
