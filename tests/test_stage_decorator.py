"""A stage is one decorated function: its task's parameters, its key and its body come
from that function's signature."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pandas as pd
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


@stage("parts-example")
def with_parts(out: ArtifactWriter, parts: dict[str, int]) -> None:
    """An upstream artifact that reports the content of each of its parts."""
    out.summary["split_sha256"] = {name: f"sha-{value}" for name, value in parts.items()}
    out.write_table("parts.parquet", pd.DataFrame({"part": list(parts),
                                                   "value": list(parts.values())}))


@stage("no-parts-example")
def without_parts(out: ArtifactWriter, value: int) -> None:
    out.write_table("value.parquet", pd.DataFrame({"value": [value]}))


@stage("reads-one-part", reads={"upstream": "first"})
def reads_one_part(out: ArtifactWriter, upstream: ArtifactRef) -> None:
    calls.append({"upstream": upstream.key})


@stage("reads-the-part-asked", reads={"upstream": lambda arguments: arguments["part"]})
def reads_the_part_asked(out: ArtifactWriter, upstream: ArtifactRef, part: str) -> None:
    calls.append({"upstream": upstream.key, "part": part})


@stage("reads-all")
def reads_all(out: ArtifactWriter, upstream: ArtifactRef) -> None:
    calls.append({"upstream": upstream.key})


def test_a_stage_reading_one_part_of_an_input_is_keyed_by_that_part_alone(workspace):
    calls.clear()
    base = with_parts.fn(workspace, {"first": 1, "second": 2})
    other_second = with_parts.fn(workspace, {"first": 1, "second": 3})
    other_first = with_parts.fn(workspace, {"first": 4, "second": 2})
    assert len({base.key, other_second.key, other_first.key}) == 3
    one = [reads_one_part.fn(workspace, ref) for ref in (base, other_second, other_first)]
    assert one[0].key == one[1].key != one[2].key
    assert len(calls) == 2  # the change of the other part reused the stored artifact
    manifest = ArtifactStore(workspace.artifacts).manifest(one[0])
    assert manifest.inputs["upstream"]["part"] == "first"
    # The part may be named by an argument of the call (the split a stage is told to read).
    asked = [reads_the_part_asked.fn(workspace, ref, "second")
             for ref in (base, other_second, other_first)]
    assert asked[0].key == asked[2].key != asked[1].key
    # A stage that reads the whole input is keyed by all of its content.
    whole = [reads_all.fn(workspace, ref) for ref in (base, other_second)]
    assert whole[0].key != whole[1].key
    # An upstream artifact that reports no parts keys the reader by its whole content.
    plain = [without_parts.fn(workspace, 1), without_parts.fn(workspace, 2)]
    assert len({reads_one_part.fn(workspace, ref).key for ref in plain}) == 2


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
