"""One list of flows: the command line, the Python API and `tokprob serve` take each flow,
its stages and its configs from flows.stages.FLOWS, which must match the flows."""

from __future__ import annotations

import inspect
import typing

import pytest

from flows.stages import FLOWS


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_each_flows_configs_and_refresh_choices_are_its_signatures(name):
    info = FLOWS[name]
    flow = info.load()
    assert flow.name == name
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    configs = {parameter: hints[parameter] for parameter in inspect.signature(flow.fn).parameters
               if parameter.endswith("_config")}
    assert configs == info.configs
    refresh_choices = typing.get_args(typing.get_args(typing.get_args(hints["refresh"])[0])[0])
    assert list(refresh_choices) == info.stages


def test_every_flow_module_is_listed():
    import pkgutil

    import flows

    modules = {module.name for module in pkgutil.iter_modules(flows.__path__)}
    assert set(FLOWS) == modules - {"labels", "stages"}
