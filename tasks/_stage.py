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
import functools
import inspect
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging.handlers import APILogHandler

from tasks.locks import LiveHolderLockManager
from tokprob.codeversion import code_version
from tokprob.config import key_params
from tokprob.corpora import CorpusSource
from tokprob.hashing import sha256_json
from tokprob.model_sources import ModelSource
from tokprob.progress import Progress, observed
from tokprob.store import ArtifactRef, ArtifactStore, ArtifactWriter
from tokprob.workspace import Workspace

log = logging.getLogger("tokprob")


def _forward_library_logs() -> None:
    """tokprob's own lines (progress, reuse, warnings) go to the Prefect run log however
    the flow was started: the command line, a worker, a deployment or a notebook. The
    command line also names the logger in PREFECT_LOGGING_EXTRA_LOGGERS; a handler is
    added once either way. Called again by each stage, since Prefect may set its logging
    up anew (new handlers) after this module was imported."""
    # Only the API handler: the console is reached through the root logger already.
    current = [handler for handler in logging.getLogger("prefect.extra").handlers
               if isinstance(handler, APILogHandler)]
    for handler in list(log.handlers):
        if isinstance(handler, APILogHandler) and handler not in current:
            log.removeHandler(handler)
    for handler in current:
        if handler not in log.handlers:
            log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


_forward_library_logs()

NOT_IN_KEY = ("workspace", "force")
"""Task arguments that never change what a stage computes."""


Part = str | Callable[[dict[str, Any]], str]
"""The part of an input a stage reads: its name, or a function of the call's arguments
that gives it (a stage told which split to read)."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    """The task module; its source and the project modules it imports version the stage."""
    environment: tuple[str, ...] = ()
    """Packages whose versions change the stage's numbers (torch, transformers)."""
    reads: dict[str, Part] = field(default_factory=dict)
    """Input name → the one part of that upstream artifact the stage reads (see `stage`)."""


STAGES: dict[str, StageSpec] = {}


@dataclass(frozen=True)
class StageIdentity:
    key: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    code_version: str
    subject: str
    """The model the artifact is about, for labels and Prefect artifact keys."""
    dataset: str
    """The corpus it is about (short name), for the same."""


MODEL_TAG = "tokprob-model"
"""Tag of the stages that load a model: a Prefect concurrency limit on it (`tokprob server`
sets one of 1) keeps two runs from loading models at once on one machine."""


def register(name: str, module: str, environment: tuple[str, ...] = (),
             loads_model: bool = False, reads: dict[str, Part] | None = None) -> dict[str, Any]:
    """Register a stage and return the @task options that cache it by content."""
    STAGES[name] = StageSpec(name, module, environment, dict(reads or {}))
    return {
        "name": name,
        "cache_policy": StagePolicy(stage=name),
        "persist_result": True,
        "result_serializer": "json",
        "tags": [MODEL_TAG] if loads_model else [],
    }


def identify(stage: str, arguments: dict[str, Any]) -> StageIdentity:
    """The key of a stage call from its arguments (the same in the key fn and the body)."""
    spec = STAGES[stage]
    params: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    models: list[str] = []
    subjects: list[str] = []
    datasets: list[str] = []
    for name, value in sorted(arguments.items()):
        if name in NOT_IN_KEY:
            continue
        if isinstance(value, ArtifactRef):
            inputs[name], (subject, dataset) = _upstream(value, _part(spec, name, arguments))
            subjects.append(subject)
            datasets.append(dataset)
        elif isinstance(value, list | tuple) and value and all(
                isinstance(item, ArtifactRef) for item in value):
            upstream = [_upstream(item) for item in value]
            inputs[name] = [identity for identity, _ in upstream]
            subjects.extend(subject for _, (subject, _) in upstream)
            datasets.extend(dataset for _, (_, dataset) in upstream)
        elif hasattr(value, "cache_identity"):
            inputs[name] = value.cache_identity()
        elif isinstance(value, ModelSource | CorpusSource):
            inputs[name] = value.fingerprint
            if isinstance(value, ModelSource):
                models.append(value.display_name)
            else:
                datasets.insert(0, value.display_name)
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
    # A stage's own model comes first (the first by argument name), then its inputs'.
    subject = next((s for s in models + subjects if s), "")
    dataset = next((d for d in datasets if d), "")
    return StageIdentity(key, params, inputs, version, subject, dataset)


def _part(spec: StageSpec, name: str, arguments: dict[str, Any]) -> str | None:
    part = spec.reads.get(name)
    return part(arguments) if callable(part) else part


def _upstream(ref: ArtifactRef, part: str | None = None,
              ) -> tuple[dict[str, str], tuple[str, str]]:
    """An upstream artifact's identity (its content hash, or that of the one `part` read,
    where the artifact's summary reports it under split_sha256), subject and dataset."""
    manifest = store_of(ref).manifest(ref)
    identity = {"stage": ref.stage, "key": ref.key, "content": manifest.content_sha256}
    parts = manifest.summary.get("split_sha256", {})
    if part is not None and part in parts:
        identity |= {"part": part, "content": parts[part]}
    return (identity,
            (manifest.summary.get("subject", ""), manifest.summary.get("dataset_name", "")))


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
    _forward_library_logs()
    identity = _identified_by_policy(stage) or identify(stage, arguments)
    store = ArtifactStore(workspace.artifacts)
    if not force and store.verify(stage, identity.key) is not None:
        log.info("%s: reusing stored artifact %s", stage, identity.key)
        _reused.add((stage, identity.key))
        return store.ref(stage, identity.key)
    if force:  # recomputed from scratch: an interrupted run's progress is not reused
        shutil.rmtree(store.partial(stage, identity.key), ignore_errors=True)
    with store.write(stage, identity.key, identity.params, identity.inputs,
                     identity.code_version) as writer:
        writer.summary["subject"] = identity.subject
        writer.summary["dataset_name"] = identity.dataset
        with observed(ProgressArtifact(artifact_key(f"{stage}-progress", identity.subject,
                                                    identity.dataset))):
            compute(writer)
    return store.ref(stage, identity.key)


def stage(name: str, environment: tuple[str, ...] = (), loads_model: bool = False,
          reads: dict[str, Part] | None = None,
          ) -> Callable[[Callable[..., None]], Task[..., ArtifactRef]]:
    """A stage written as one function; the Prefect task that runs it, cached by content.

        @stage("pca")
        def pca(out: ArtifactWriter, regression: ArtifactRef, embeddings: ArtifactRef):
            out.write_table("components.parquet", ...)

    The task takes the body's parameters after `out`, plus `workspace` (the store's
    folder; the body may name it too) and `force`. Its key hashes exactly those
    parameters but these two (`identify`), so the Prefect cache key and the artifact
    key come from the one signature and cannot drift apart. The body runs only when the
    store holds no intact artifact for that key, and gets the writer of a new one.
    `environment` names packages whose versions change the numbers; `loads_model` tags
    the task for the model-loading concurrency limit. `reads` names inputs of which the
    body reads one part only ({"windows": "detect"}, or a function of the call's arguments
    naming the part): the key hashes that part's content, as the upstream artifact reports
    it, so that a change elsewhere in that artifact (more held-out windows) does not
    recompute the stage.
    """

    def decorate(body: Callable[..., None]) -> Task[..., ArtifactRef]:
        signature = _task_signature(body)
        body_parameters = list(inspect.signature(body).parameters)[1:]

        def run(*args: Any, **kwargs: Any) -> ArtifactRef:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            own = {parameter: arguments[parameter] for parameter in body_parameters}
            return run_stage(name, arguments["workspace"], arguments,
                             lambda out: body(out, **own), arguments["force"])

        run.__signature__ = signature  # type: ignore[attr-defined]
        functools.update_wrapper(run, body, updated=())
        del run.__wrapped__  # type: ignore[attr-defined] # Prefect reads __signature__
        made = task(**register(name, body.__module__, environment, loads_model, reads))(run)
        made.body = body  # type: ignore[attr-defined] # the computation, for direct tests
        return made

    return decorate


def _task_signature(body: Callable[..., None]) -> inspect.Signature:
    """`(workspace, <the body's parameters after out>, force=False)`."""
    parameters = list(inspect.signature(body).parameters.values())
    if not parameters or parameters[0].name != "out":
        raise TypeError(f"the stage function {body.__qualname__} must take the artifact "
                        "writer `out` as its first parameter")
    own = parameters[1:]
    if any(parameter.name == "force" for parameter in own):
        raise TypeError(f"{body.__qualname__}: `force` is the stage task's own parameter")
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    workspace = [] if any(parameter.name == "workspace" for parameter in own) else [
        inspect.Parameter("workspace", positional, annotation="Workspace")]
    force = inspect.Parameter("force", positional, default=False, annotation="bool")
    return inspect.Signature(workspace + own + [force], return_annotation="ArtifactRef")


class ProgressArtifact:
    """Shows a stage's long loops in the Prefect UI as a progress artifact that moves
    while they run (one artifact per loop, updated in place)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.artifacts: dict[int, Any] = {}

    def __call__(self, progress: Progress) -> None:
        description = f"{progress.description}: {progress.status()}"
        artifact = self.artifacts.get(id(progress))
        if artifact is None:
            self.artifacts[id(progress)] = create_progress_artifact(
                progress.percent, key=self.key, description=description)
        else:
            update_progress_artifact(artifact, progress.percent, description=description)


_reused: set[tuple[str, str]] = set()
"""Artifacts a stage task of this process found in the store instead of computing."""


def was_reused(ref: ArtifactRef) -> bool:
    """Whether the stage call that returned `ref` took it from the store (asked once:
    a later call of the stage may compute it)."""
    found = (ref.stage, ref.key) in _reused
    _reused.discard((ref.stage, ref.key))
    return found


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
        # Prefect asks for the key several times per task run; the call is identified once.
        identity = _identified.get((self.stage, task_ctx.task_run.id))
        if identity is None:
            identity = identify(self.stage, inputs)
            _remember(_identified, (self.stage, task_ctx.task_run.id), identity)
        prefect_key = f"{self.stage}-{identity.key}-{sha256_json(workspace.data_dir)[:8]}"
        intact = ArtifactStore(workspace.artifacts).verify(self.stage, identity.key)
        if intact is None and task_ctx.result_store.exists(prefect_key):
            # The cached reference points at a damaged or deleted artifact: run the
            # stage (uncached) so it rebuilds the artifact the reference names. Prefect
            # asks for the key several times per task run: the warning is said once.
            if (task_ctx.task_run.id, prefect_key) not in _damage_reported:
                _remember(_damage_reported, (task_ctx.task_run.id, prefect_key), True)
                log.warning("%s: artifact %s is missing or damaged; recomputing",
                            self.stage, identity.key)
            return None
        return prefect_key


_identified: dict[tuple[str, Any], StageIdentity] = {}
"""The identity the cache policy computed for a stage's task run, so that the run
identifies its call once: the body reuses it (Prefect asks for the key before the
run starts, from the same arguments)."""

REMEMBERED_TASK_RUNS = 4096
"""How many task runs the per-task-run memories keep: a served process runs flows for
days, and only a task run in progress needs its entry."""


def _remember(memory: dict, key: Any, value: Any) -> None:
    """Store key → value, forgetting the oldest entries beyond `REMEMBERED_TASK_RUNS`."""
    memory[key] = value
    while len(memory) > REMEMBERED_TASK_RUNS:
        del memory[next(iter(memory))]


def _identified_by_policy(stage: str) -> StageIdentity | None:
    context = TaskRunContext.get()
    if context is None:  # called directly (`.fn`), outside a Prefect task run
        return None
    return _identified.get((stage, context.task_run.id))


_damage_reported: dict[tuple[Any, str], bool] = {}
"""(task run, cache key) pairs whose damaged artifact has been reported."""


def stage_policy(stage: str, workspace: Workspace) -> StagePolicy:
    """The cache policy a stage runs under in a flow: keyed by content, serialized per
    key across processes through lock files in the workspace."""
    return StagePolicy(stage=stage, isolation_level="SERIALIZABLE",
                       lock_manager=LiveHolderLockManager(workspace.root / "locks"))


def artifact_key(stage: str, *about: str) -> str:
    """A Prefect artifact key, `<stage>-<model>-<dataset>`: lowercase letters, digits and
    dashes, so that the UI lists the latest result per model and corpus."""
    text = "-".join([stage, *(part for part in about if part)])
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:100] or stage


def publish_table(stage: str, writer: ArtifactWriter, rows: list[dict[str, Any]],
                  description: str) -> None:
    """A table artifact in the Prefect UI for this stage's key numbers."""
    create_table_artifact(table=rows, key=_writer_key(stage, writer), description=description)


def publish_markdown(stage: str, writer: ArtifactWriter, markdown: str,
                     description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=_writer_key(stage, writer),
                             description=description)


def _writer_key(stage: str, writer: ArtifactWriter) -> str:
    return artifact_key(stage, writer.summary.get("subject", ""),
                        writer.summary.get("dataset_name", ""))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
