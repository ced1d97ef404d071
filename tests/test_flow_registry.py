"""One declaration of each flow's parameters: its signature. The command line and the
Python API read it from the flow's source without importing Prefect (flows/parameters.py);
these tests hold what they read equal to the imported flows."""

from __future__ import annotations

import importlib
import inspect
import typing

import pytest

from flows.parameters import flow_inputs, flow_signature, own_docs
from flows.stages import FLOWS
from tokprob.config import Corpus, Detection, ProbabilityConfig, WindowConfig
from tokprob.errors import TokprobError

EVERY_FLOW = [(name, None) for name in FLOWS] + [
    ("steering", "steer"), ("pruning", "prune"), ("dynamics", "pretraining")]


@pytest.mark.parametrize(("module", "name"), EVERY_FLOW)
def test_the_signature_read_from_source_is_the_imported_flows(module, name):
    flow = getattr(importlib.import_module(f"flows.{module}"), name or module)
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    imported = [(p.name, hints[p.name], p.default)
                for p in inspect.signature(flow.fn).parameters.values()]
    read = [(p.name, p.hint, p.default) for p in flow_signature(module, name)
            if len(p.path) == 1]
    assert read == imported


@pytest.mark.parametrize(("module", "name"), EVERY_FLOW)
def test_every_name_a_flow_takes_is_unique_and_documented(module, name):
    parameters = flow_signature(module, name)
    flat = [p.name for p in parameters]
    assert len(flat) == len(set(flat)), sorted(n for n in flat if flat.count(n) > 1)
    from flows.stages import PARAMETER_DOCS

    undocumented = [p.name for p in parameters
                    if not (p.doc or PARAMETER_DOCS.get(p.name))]
    assert undocumented == []


def test_the_shared_objects_replace_the_repeated_block():
    for name in ("encoding", "steering", "pruning", "paper"):
        top = [p.name for p in FLOWS[name].parameters() if len(p.path) == 1]
        assert {"corpus", "detection"} <= set(top)
        assert not {"dataset", "split", "text_column", "window_config"} & set(top)


def test_flow_inputs_gathers_flat_names_into_the_objects():
    parameters = FLOWS["encoding"].parameters()
    inputs = flow_inputs("encoding", parameters,
                         {"model": "m", "dataset": "d.txt", "max_tokens": 64, "window": 16})
    assert inputs == {
        "model": "m", "corpus": Corpus(dataset="d.txt"),
        "detection": Detection(window_config=WindowConfig(window=16),
                               probability_config=ProbabilityConfig(max_tokens=64))}
    # Whole objects, and mappings as a deployment's YAML gives them, are taken as they are.
    assert flow_inputs("encoding", parameters, {"detection": {
        "probability_config": {"max_tokens": 5}}})["detection"] == Detection(
        probability_config=ProbabilityConfig(max_tokens=5))
    assert flow_inputs("encoding", parameters, {}) == {}


def test_flow_inputs_refuses_unknown_names_and_an_object_given_twice():
    parameters = FLOWS["encoding"].parameters()
    with pytest.raises(TokprobError, match=r"no parameter 'max_tokenz'.*max_tokens"):
        flow_inputs("encoding", parameters, {"max_tokenz": 5})
    with pytest.raises(TokprobError, match=r"either detection or its fields \(max_tokens\)"):
        flow_inputs("encoding", parameters, {"detection": Detection(), "max_tokens": 5})
    # A mapping's misspelt field, at any depth, is refused rather than dropped.
    with pytest.raises(TokprobError, match=r"^corpus has no field datasett; its fields are "
                                           r"dataset, split, text_column\.$"):
        flow_inputs("encoding", parameters, {"corpus": {"datasett": "a.txt"}})
    with pytest.raises(TokprobError, match=r"detection\.probability_config has no field "
                                           r"max_tokenz"):
        flow_inputs("encoding", parameters,
                    {"detection": {"probability_config": {"max_tokenz": 5}}})
    # A bound is checked where the object is made, naming the option.
    with pytest.raises(TokprobError, match="--max-tokens"):
        flow_inputs("encoding", parameters, {"max_tokens": 0})


def test_a_flow_annotation_from_a_prefect_module_is_refused(tmp_path, monkeypatch):
    import flows.parameters as module

    source = tmp_path / "odd.py"
    source.write_text("from tasks.runner import StageRunner\n\n"
                      "def odd(stage: StageRunner, n: int = 1):\n    pass\n")
    monkeypatch.setattr(module, "__file__", str(tmp_path / "parameters.py"))
    with pytest.raises(TokprobError, match="'StageRunner', which is not imported from tokprob"):
        module.flow_signature.__wrapped__("odd")


def test_own_docs_reads_the_args_section():
    doc = """Do it.

    Args:
        tokens: Tokens to steer: text that is
            exactly one token.
        out: Folder.
    """
    assert own_docs(doc) == {"tokens": "Tokens to steer: text that is exactly one token.",
                             "out": "Folder."}
    assert own_docs("No arguments.") == {}


def test_every_flow_module_is_listed():
    import pkgutil

    import flows

    modules = {module.name for module in pkgutil.iter_modules(flows.__path__)}
    assert set(FLOWS) == modules - {"labels", "stages", "parameters"}
