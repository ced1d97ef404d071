"""The flows' parameter forms as Prefect generates them for its UI: every field described,
bounds and choices declared by the same annotations the command line checks, and a bad
value refused by the Prefect API before a run starts."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest

from flows.parameters import flow_signature
from flows.stages import (
    DYNAMICS_STAGES,
    ENCODING_STAGES,
    PAPER_STAGES,
    PRUNING_STAGES,
    STEERING_STAGES,
)
from tokprob.config import (
    Corpus,
    Detection,
    PretrainConfig,
    PruningConfig,
    RegressionConfig,
    RunConfig,
    SparsityConfig,
    WindowConfig,
)
from tokprob.errors import TokprobError

FLOWS = {  # module: flow name: the stages its `refresh` may name (None: no refresh)
    "encoding": {"encoding": ENCODING_STAGES},
    "steering": {"steering": STEERING_STAGES, "steer": None},
    "pruning": {"pruning": PRUNING_STAGES, "prune": None},
    "dynamics": {"dynamics": DYNAMICS_STAGES, "pretraining": DYNAMICS_STAGES},
    "paper": {"paper": PAPER_STAGES},
}
EVERY_FLOW = [(module, name) for module, flows in FLOWS.items() for name in flows]
CONFIGS = list(dict.fromkeys(parameter.group for module, name in EVERY_FLOW
                             for parameter in flow_signature(module, name) if parameter.group))
"""Every parameter object a flow takes, at any depth."""


def _flow(module: str, name: str):
    return getattr(importlib.import_module(f"flows.{module}"), name)


def _schema(module: str, name: str) -> dict:
    """The schema a deployment of the flow stores and the UI renders its form from."""
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(_flow(module, name).fn).model_dump_for_openapi()


def _definition(schema: dict, config: type) -> dict:
    return schema["definitions"][config.__name__]


def test_the_configs_checked_here_include_those_inside_parameter_objects():
    assert {Corpus, Detection, WindowConfig, PretrainConfig} <= set(CONFIGS)


def test_every_flow_module_is_covered():
    from prefect import Flow

    for module, flows in FLOWS.items():
        found = {value.name for value in vars(importlib.import_module(f"flows.{module}")).values()
                 if isinstance(value, Flow) and value.fn.__module__ == f"flows.{module}"}
        assert found == set(flows)


@pytest.mark.parametrize(("module", "name"), EVERY_FLOW)
def test_every_field_of_the_form_is_described(module, name):
    schema = _schema(module, name)
    definitions = schema.get("definitions", {})

    def description(prop: dict) -> str:
        # A config parameter's text is its class docstring, on the definition it refers to.
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        return prop.get("description") or definitions.get(ref, {}).get("description", "")

    undescribed = [field for field, prop in schema["properties"].items()
                   if not description(prop).strip()]
    undescribed += [f"{config}.{field}" for config, definition in definitions.items()
                    for field, prop in definition["properties"].items()
                    if not description(prop).strip()]
    assert undescribed == []
    assert len(definitions) >= (1 if name == "pretraining" else 4)


def test_nested_descriptions_are_the_field_docstrings():
    run = _definition(_schema("encoding", "encoding"), RunConfig)["properties"]
    assert run["batch_size"]["description"] == "Windows per forward pass."
    assert run["shards"]["description"].startswith("Shards of the detecting windows for α")


@pytest.mark.parametrize(("module", "name"), EVERY_FLOW)
def test_refresh_offers_the_flows_own_stages(module, name):
    stages = FLOWS[module][name]
    properties = _schema(module, name)["properties"]
    if stages is None:
        assert "refresh" not in properties
        return
    (listed,) = [option for option in properties["refresh"]["anyOf"]
                 if option.get("type") == "array"]
    assert listed["items"]["enum"] == stages


def test_bounds_and_choices_are_in_the_form():
    schema = _schema("paper", "paper")
    run = _definition(schema, RunConfig)["properties"]
    assert run["batch_size"]["minimum"] == 1
    assert run["dtype"]["enum"] == ["float32", "bfloat16", "float16", "auto"]
    (named,) = [option for option in run["device"]["anyOf"] if "enum" in option]
    assert named["enum"] == ["auto", "cpu", "cuda", "mps"]
    (indexed,) = [option for option in run["device"]["anyOf"] if "pattern" in option]
    assert indexed["pattern"] == r"^cuda:\d+$"
    window = _definition(schema, WindowConfig)["properties"]
    # No held-out split at all (0) is a valid choice for an encoding-only analysis.
    assert (window["heldout_fraction"]["minimum"],
            window["heldout_fraction"]["exclusiveMaximum"]) == (0, 1)
    significance = _definition(schema, SparsityConfig)["properties"]["significance"]
    assert (significance["exclusiveMinimum"], significance["exclusiveMaximum"]) == (0, 1)
    fractions = _definition(schema, PruningConfig)["properties"]["fractions"]
    assert fractions["minItems"] == 1
    assert (fractions["items"]["minimum"], fractions["items"]["exclusiveMaximum"]) == (0, 1)
    assert _definition(schema, RegressionConfig)["properties"]["solver"]["enum"] == [
        "normal", "statsmodels"]
    prune = _schema("pruning", "prune")["properties"]
    assert prune["method"]["enum"] == ["saliency", "compensated", "compensated-greedy"]
    assert (prune["fraction"]["minimum"], prune["fraction"]["exclusiveMaximum"]) == (0, 1)


def _edges(bounds: dict, integer: bool) -> tuple[list[float], list[float]]:
    """Values just inside and just outside the bounds of one JSON-schema field."""
    step = 1 if integer else 1e-6
    inside, outside = [], []
    if "minimum" in bounds:
        inside.append(bounds["minimum"])
        outside.append(bounds["minimum"] - step)
    if "exclusiveMinimum" in bounds:
        inside.append(bounds["exclusiveMinimum"] + step)
        outside.append(bounds["exclusiveMinimum"])
    if "maximum" in bounds:
        inside.append(bounds["maximum"])
        outside.append(bounds["maximum"] + step)
    if "exclusiveMaximum" in bounds:
        inside.append(bounds["exclusiveMaximum"] - step)
        outside.append(bounds["exclusiveMaximum"])
    return inside, outside


# The shared parameter objects hold free text (Corpus) and configs (Detection): no bounds
# of their own.
BOUNDED = [config for config in CONFIGS if config not in (Corpus, Detection)]


@pytest.mark.parametrize("config", BOUNDED, ids=lambda config: config.__name__)
def test_the_form_and_the_command_line_check_the_same_bounds(config):
    """Every bound and choice the form shows is the one the config (and so the command
    line) enforces: a value on the edge is accepted, one past it is refused."""
    from pydantic import TypeAdapter

    properties = TypeAdapter(config).json_schema()["properties"]
    checked = 0
    for field in dataclasses.fields(config):
        prop = properties[field.name]
        is_tuple = prop.get("type") == "array"
        bounds = prop.get("items", {}) if is_tuple else prop
        inside, outside = _edges(bounds, bounds.get("type") == "integer")
        for value in bounds.get("enum", []):
            inside.append(value)
        if "enum" in bounds:
            outside.append("none-of-these")
        wrap = (lambda value: (value,)) if is_tuple else (lambda value: value)
        for value in inside:
            config(**{field.name: wrap(value)})
        for value in outside:
            with pytest.raises(TokprobError, match=f"Invalid --{field.name.replace('_', '-')}:"):
                config(**{field.name: wrap(value)})
        if prop.get("minItems"):
            with pytest.raises(TokprobError, match="at least 1 value"):
                config(**{field.name: ()})
        checked += len(inside) + len(outside)
    assert checked > 0


def test_a_direct_call_is_validated_against_the_same_annotations():
    from prefect.exceptions import ParameterTypeError

    from flows.dynamics import dynamics
    from flows.encoding import encoding

    with pytest.raises(ParameterTypeError, match=r"detection\.run_config\.batch_size"):
        encoding.validate_parameters({"detection": {"run_config": {"batch_size": 0}}})
    with pytest.raises(ParameterTypeError, match=r"refresh\.0"):
        encoding.validate_parameters({"refresh": ["regresion"]})
    # A check across fields, which no form can show, still speaks in the config's words.
    with pytest.raises(TokprobError, match="Invalid --heads: expected a divisor"):
        dynamics.validate_parameters({"pretrain_config": {"heads": 3}})
    valid = encoding.validate_parameters({
        "detection": {"run_config": {"batch_size": 2, "device": "cuda:1"}},
        "corpus": {"dataset": "x.txt"}, "refresh": ["pca"]})
    assert valid["detection"].run_config == RunConfig(batch_size=2, device="cuda:1")
    assert valid["corpus"] == Corpus(dataset="x.txt")
    assert valid["refresh"] == ["pca"]


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(TokprobError, match="Invalid --significance"):
        SparsityConfig(significance=value)


@pytest.mark.prefect
def test_the_api_refuses_a_bad_value_before_a_run_starts(prefect_api):
    """The deployment keeps the flow's schema and the server enforces it, as for a run
    started from the UI's form: nothing is scheduled for a bad value."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.encoding import encoding

    deployment_id = encoding.to_deployment(name="forms").apply()
    with get_client(sync_client=True) as client:
        assert client.read_deployment(deployment_id).enforce_parameter_schema
        for bad in ({"detection": {"run_config": {"batch_size": 0}}},
                    {"detection": {"window_config": {"heldout_fraction": 1.0}}},
                    {"detection": {"run_config": {"device": "tpu"}}},
                    {"refresh": ["regresion"]}):
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(deployment_id, parameters=bad)
            assert refused.value.response.status_code == 409
        accepted = client.create_flow_run_from_deployment(
            deployment_id, parameters={
                "detection": {"run_config": {"batch_size": 1, "device": "cuda:0"}},
                "refresh": ["pca"]})
        assert accepted.parameters["detection"]["run_config"]["batch_size"] == 1
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])))
        assert [run.id for run in runs] == [accepted.id]


def test_the_command_line_reads_the_same_declarations(tmp_path, monkeypatch):
    from cli.commands import _flow_inputs
    from cli.main import build_parser

    monkeypatch.setattr("cli.commands.prepare_environment", lambda workspace: None)
    data = ["--data-dir", str(tmp_path)]
    args = build_parser().parse_args(["run", "encoding", "--batch-size", "4", "--device",
                                      "cuda:1", "--dtype", "bfloat16", *data])
    assert _flow_inputs(args, "encoding")["detection"].run_config == RunConfig(
        dtype="bfloat16", batch_size=4, device="cuda:1")
    for device in ("cuda:x", "tpu"):
        args = build_parser().parse_args(["run", "encoding", "--device", device, *data])
        with pytest.raises(TokprobError, match="Invalid --device: expected cpu, cuda, cuda:N"):
            _flow_inputs(args, "encoding")


def test_a_served_deployment_with_a_value_out_of_bounds_is_refused(monkeypatch):
    from cli.serve import Deployment, serve_deployments

    def served(*_):
        raise AssertionError("served a deployment whose runs would all fail")

    monkeypatch.setattr("prefect.serve", served)
    entry = Deployment(name="nightly", flow="encoding", schedules=[], tags=[],
                       parameters={"detection": {"run_config": {"batch_size": 0}}})
    with pytest.raises(TokprobError) as refused:
        serve_deployments([entry], "/tmp/data")
    assert "detection.run_config.batch_size: Input should be greater than or equal to 1" in str(
        refused.value)
    assert "\n" not in str(refused.value)
