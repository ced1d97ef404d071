"""What every stage task shares: its cache key, the store, and Prefect UI artifacts.

A stage's key hashes (1) its parameters (config dataclasses, minus execution settings),
(2) the content hash of each upstream artifact and the fingerprint of each source
(model, corpus), (3) the version of its code: its task module and every project module
that module imports, and the versions of torch and transformers where they matter.

Prefect caches the small ArtifactRef a stage returns under that key. Before trusting a
cached reference the key function verifies the artifact on disk: a damaged or deleted
artifact makes the stage run again instead of being used.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from tokprob.codeversion import code_version
from tokprob.config import key_params
from tokprob.corpora import CorpusSource
from tokprob.hashing import sha256_json
from tokprob.models import ModelSource
from tokprob.store import ArtifactRef, ArtifactStore, ArtifactWriter
from tokprob.workspace import Workspace

log = logging.getLogger("tokprob")

NOT_IN_KEY = ("workspace", "force")
"""Task arguments that never change what a stage computes."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    """The task module; its source and the project modules it imports version the stage."""
    environment: tuple[str, ...] = ()
    """Packages whose versions change the stage's numbers (torch, transformers)."""


STAGES: dict[str, StageSpec] = {}


@dataclass(frozen=True)
class StageIdentity:
    key: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    code_version: str
    subject: str
    """The model the artifact is about, for labels and Prefect artifact keys."""


def register(name: str, module: str, environment: tuple[str, ...] = ()) -> dict[str, Any]:
    """Register a stage and return the @task options that cache it by content."""
    STAGES[name] = StageSpec(name, module, environment)
    return {
        "name": name,
        "cache_policy": StagePolicy(stage=name),
        "persist_result": True,
        "result_serializer": "json",
    }


def identify(stage: str, arguments: dict[str, Any]) -> StageIdentity:
    """The key of a stage call from its arguments (the same in the key fn and the body)."""
    spec = STAGES[stage]
    params: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    subjects: list[str] = []
    for name, value in sorted(arguments.items()):
        if name in NOT_IN_KEY:
            continue
        if isinstance(value, ArtifactRef):
            inputs[name], subject = _upstream(value)
            subjects.append(subject)
        elif isinstance(value, list | tuple) and value and all(
                isinstance(item, ArtifactRef) for item in value):
            inputs[name] = [_upstream(item)[0] for item in value]
        elif hasattr(value, "cache_identity"):
            inputs[name] = value.cache_identity()
        elif isinstance(value, ModelSource | CorpusSource):
            inputs[name] = value.fingerprint
            if isinstance(value, ModelSource):
                subjects.insert(0, value.display_name)
        elif dataclasses.is_dataclass(value):
            params[name] = key_params(value)
        else:
            params[name] = value
    for package in spec.environment:
        params[f"{package}_version"] = _version(package)
    version = code_version(spec.module)
    key = sha256_json({"stage": stage, "params": params,
                       "inputs": {k: _content(v) for k, v in inputs.items()},
                       "code": version})[:20]
    subject = next((s for s in subjects if s), "")
    return StageIdentity(key, params, inputs, version, subject)


def _upstream(ref: ArtifactRef) -> tuple[dict[str, str], str]:
    """An upstream artifact's identity (its content hash) and subject."""
    manifest = store_of(ref).manifest(ref)
    return ({"stage": ref.stage, "key": ref.key, "content": manifest.content_sha256},
            manifest.summary.get("subject", ""))


def _content(identity: Any) -> Any:
    """What of an input's identity enters the key: content, not where it is stored."""
    if isinstance(identity, dict) and "content" in identity:
        return identity["content"]
    if isinstance(identity, list):
        return [_content(item) for item in identity]
    return identity


def run_stage(
    stage: str,
    workspace: Workspace,
    arguments: dict[str, Any],
    compute: Callable[[ArtifactWriter], None],
    force: bool = False,
) -> ArtifactRef:
    """Reuse the stage's stored artifact, or compute and store it atomically."""
    identity = identify(stage, arguments)
    store = ArtifactStore(workspace.artifacts)
    if not force and store.verify(stage, identity.key) is not None:
        log.info("%s: reusing stored artifact %s", stage, identity.key)
        return store.ref(stage, identity.key)
    with store.write(stage, identity.key, identity.params, identity.inputs,
                     identity.code_version) as writer:
        writer.summary["subject"] = identity.subject
        compute(writer)
    return store.ref(stage, identity.key)


def store_of(ref: ArtifactRef) -> ArtifactStore:
    """The store holding an artifact (its folder is <root>/<stage>/<key>)."""
    return ArtifactStore(Path(ref.path).parent.parent)


@dataclass
class StagePolicy(CachePolicy):
    """Prefect cache key = stage key + workspace; verifies the artifact behind a hit."""

    stage: str = ""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        workspace: Workspace = inputs["workspace"]
        identity = identify(self.stage, inputs)
        prefect_key = f"{self.stage}-{identity.key}-{sha256_json(workspace.data_dir)[:8]}"
        intact = ArtifactStore(workspace.artifacts).verify(self.stage, identity.key)
        if intact is None and task_ctx.result_store.exists(prefect_key):
            # The cached reference points at a damaged or deleted artifact: run the
            # stage (uncached) so it rebuilds the artifact the reference names.
            log.warning("%s: artifact %s is missing or damaged; recomputing",
                        self.stage, identity.key)
            return None
        return prefect_key


def artifact_key(stage: str, subject: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{stage}-{subject}".lower()).strip("-")
    return slug[:100] or stage


def publish_table(stage: str, writer: ArtifactWriter, rows: list[dict[str, Any]],
                  description: str) -> None:
    """A table artifact in the Prefect UI for this stage's key numbers."""
    create_table_artifact(table=rows, key=artifact_key(stage, writer.summary.get("subject", "")),
                          description=description)


def publish_markdown(stage: str, writer: ArtifactWriter, markdown: str,
                     description: str) -> None:
    create_markdown_artifact(markdown=markdown,
                             key=artifact_key(stage, writer.summary.get("subject", "")),
                             description=description)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
