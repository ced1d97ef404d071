"""The cache policy of a stage: a damaged artifact behind a cached reference is reported
once per task run, however often Prefect asks for the key."""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

import tasks.corpus  # noqa: F401 - registers the corpus stage
from tasks._stage import StagePolicy
from tokprob.corpora import CorpusSource


def test_a_damaged_artifact_is_reported_once_per_task_run(workspace, caplog):
    source = CorpusSource(spec="tiny", kind="local", location="/corpus", files=("/corpus/a.txt",),
                          fingerprint="files:0123")
    policy = StagePolicy(stage="corpus")
    # Prefect holds a cached reference, but the store has no artifact behind it.
    task_run = SimpleNamespace(id=uuid.uuid4())
    context = SimpleNamespace(task_run=task_run, result_store=SimpleNamespace(
        exists=lambda key: True))
    inputs = {"workspace": workspace, "source": source, "force": False}
    with caplog.at_level(logging.WARNING, logger="tokprob"):
        keys = [policy.compute_key(context, inputs, {}) for _ in range(3)]
        next_run = SimpleNamespace(task_run=SimpleNamespace(id=uuid.uuid4()),
                                   result_store=context.result_store)
        policy.compute_key(next_run, inputs, {})
    assert keys == [None, None, None]  # recompute, each time it is asked
    reports = [r.getMessage() for r in caplog.records if "missing or damaged" in r.getMessage()]
    assert len(reports) == 2  # once for each task run


def test_per_task_run_memories_stay_bounded_in_a_long_lived_process(workspace, monkeypatch):
    from tasks import _stage

    monkeypatch.setattr(_stage, "REMEMBERED_TASK_RUNS", 5)
    monkeypatch.setattr(_stage, "_identified", {})
    source = CorpusSource(spec="tiny", kind="local", location="/corpus", files=("/corpus/a.txt",),
                          fingerprint="files:0123")
    policy = StagePolicy(stage="corpus")
    runs = [uuid.uuid4() for _ in range(12)]
    for run in runs:
        context = SimpleNamespace(task_run=SimpleNamespace(id=run),
                                  result_store=SimpleNamespace(exists=lambda key: False))
        policy.compute_key(context, {"workspace": workspace, "source": source, "force": False},
                           {})
    # The newest task runs are remembered (a run in progress finds its identity); older
    # ones are forgotten instead of accumulating for as long as the process serves.
    assert list(_stage._identified) == [("corpus", run) for run in runs[-5:]]
