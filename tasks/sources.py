"""Resolve what the user named into a local model folder and a corpus location.

Not cached by Prefect: each run re-checks the local copies (a file that changed gets a
new fingerprint). Both are cheap once the built-ins are fetched and GGUF converted.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tokprob.config import Corpus
from tokprob.corpora import CorpusSource, resolve_corpus
from tokprob.model_sources import ModelSource, resolve_model
from tokprob.specs import ModelSpec
from tokprob.workspace import Workspace


@task(name="model", cache_policy=NO_CACHE)
def model_source(workspace: Workspace, spec: str) -> ModelSource:
    """Fetch or locate the model; dequantize a GGUF once."""
    return resolve_model(ModelSpec.parse(spec), workspace)


@task(name="dataset", cache_policy=NO_CACHE)
def corpus_source(workspace: Workspace, text: Corpus) -> CorpusSource:
    """Fetch or locate the corpus and fingerprint its content."""
    return resolve_corpus(text.spec(), workspace)
