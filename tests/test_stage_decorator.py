"""A stage is one decorated function: its task's parameters, its key and its body come
from that function's signature."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
from prefect import flow

import tasks._stage as stage_module
from tasks._stage import stage, stage_policy
from tasks.pca import pca
from tokprob.store import ArtifactRef, ArtifactStore, ArtifactWriter
from tokprob.workspace import Workspace

calls: list[dict] = []


@dataclass(frozen=True)
class Settings:
    scale: float = 2.0


@stage("decorated-example")
def scaled(out: ArtifactWriter, number: int, settings: Settings = Settings()) -> None:
    """Writes number × scale."""
    calls.append({"number": number, "settings": settings})
    out.summary["value"] = number * settings.scale


def test_the_task_takes_the_bodys_parameters_with_workspace_and_force():
    assert list(inspect.signature(scaled.fn).parameters) == [
        "workspace", "number", "settings", "force"]
    assert list(inspect.signature(pca.fn).parameters) == [
        "workspace", "regression", "embeddings", "force"]
    assert scaled.name == "decorated-example"
    assert scaled.fn.__doc__ == "Writes number × scale."


def test_the_key_hashes_every_parameter_of_the_body_and_nothing_else(workspace):
    calls.clear()
    first = scaled.fn(workspace, 3)
    assert first == scaled.fn(workspace, number=3, settings=Settings())  # reused
    assert len(calls) == 1
    assert ArtifactStore(workspace.artifacts).manifest(first).summary["value"] == 6.0
    other_number = scaled.fn(workspace, 4)
    other_settings = scaled.fn(workspace, 3, Settings(scale=3.0))
    assert len({first.key, other_number.key, other_settings.key}) == 3
    manifest = ArtifactStore(workspace.artifacts).manifest(other_settings)
    assert manifest.params == {"number": 3, "settings": {"scale": 3.0}}


def test_force_recomputes_and_another_workspace_keeps_the_key(tmp_path, workspace):
    calls.clear()
    first = scaled.fn(workspace, 5)
    again = scaled.fn(workspace, 5, force=True)
    assert len(calls) == 2 and again.key == first.key
    elsewhere = scaled.fn(Workspace.from_env(tmp_path / "other"), 5)
    assert elsewhere.key == first.key and elsewhere.path != first.path


def test_the_body_is_reachable_for_direct_tests(workspace):
    calls.clear()
    with ArtifactStore(workspace.artifacts).write("decorated-example", "direct", {}, {},
                                                  "v") as out:
        scaled.body(out, 7, Settings(scale=0.5))
        assert out.summary["value"] == 3.5
    assert calls == [{"number": 7, "settings": Settings(scale=0.5)}]


def test_a_stage_function_without_the_writer_first_is_refused():
    with pytest.raises(TypeError, match="writer `out`"):
        stage("bad")(lambda number: None)
    with pytest.raises(TypeError, match="`force`"):
        stage("bad")(lambda out, force: None)


@pytest.mark.prefect
def test_in_a_flow_the_call_is_identified_once_and_the_prefect_key_matches(
        prefect_api, workspace, monkeypatch):
    identified = []
    real = stage_module.identify
    monkeypatch.setattr(stage_module, "identify",
                        lambda name, arguments: identified.append(name) or real(name, arguments))

    @flow
    def one_stage() -> ArtifactRef:
        configured = scaled.with_options(cache_policy=stage_policy(scaled.name, workspace),
                                         result_storage=workspace.prefect_results)
        return configured(workspace, 11)

    ref = one_stage()
    assert identified == ["decorated-example"]
    assert ref == scaled.fn(workspace, 11)  # the same key outside Prefect
