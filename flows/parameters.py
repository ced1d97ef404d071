"""The flows' parameters as the command line and the Python API see them: read from each
flow's own signature, and gathered back into the flow's parameter objects.

A flow takes shared objects (`corpus: Corpus`, `detection: Detection`) and configs, each a
frozen dataclass of documented fields. Flattened, every field is one name the user gives
(`--max-tokens`, `tokprob.run(max_tokens=…)`), unique within a flow; `flow_inputs` puts
the names back into the objects the flow takes.

The signature is read from the flow's source, not from the imported flow: importing a flow
imports Prefect, which reads its settings (server, home) once, at import, and the command
line chooses them only after its arguments are checked. The names a flow's annotations and
defaults use must therefore be imported from Prefect-free modules (`tokprob.*`,
`flows.stages`, `typing`, `annotated_types`); a test holds the signature read here equal
to the imported flow's.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pydantic

from tokprob.config import Checked, field_docs
from tokprob.errors import TokprobError

PREFECT_FREE = re.compile(r"^(tokprob(\.\w+)*|flows\.stages|typing|annotated_types)$")
"""Modules whose names a flow's signature may use."""


@dataclass(frozen=True)
class Parameter:
    """One name a flow takes: a parameter of its signature, or a field of one of its
    parameter objects (at any depth), with the path that leads to it."""

    path: tuple[str, ...]
    """From the flow's parameter down: ("detection", "probability_config", "max_tokens")."""
    hint: Any
    """The annotation, with its `Annotated` bounds."""
    default: Any
    """The default (`inspect.Parameter.empty` for a required parameter)."""
    doc: str
    """What it means, from the field's docstring or the flow's `Args:` section."""

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def group(self) -> type | None:
        """The dataclass this name holds (its fields are names of their own), or None."""
        return self.hint if is_group(self.hint) else None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def is_group(hint: Any) -> bool:
    """Whether a parameter is an object of documented fields (a config or a group of
    configs) rather than one value."""
    return isinstance(hint, type) and issubclass(hint, Checked)


@cache
def _flow_definition(module: str, name: str | None) -> tuple[Path, ast.Module, ast.FunctionDef]:
    """flows/<module>.py, its syntax tree and the definition of its flow `name` (default:
    `module`), parsed once."""
    path = Path(__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text())
    name = name or module
    function = next((node for node in tree.body
                     if isinstance(node, ast.FunctionDef) and node.name == name), None)
    if function is None:
        raise TokprobError(f"{path} defines no flow {name!r}.")
    return path, tree, function


@cache
def flow_signature(module: str, name: str | None = None) -> tuple[Parameter, ...]:
    """The parameters of the flow `name` (default: `module`) of flows/<module>.py, with
    every field of its parameter objects after the object, read without importing it."""
    path, tree, function = _flow_definition(module, name)
    namespace = _prefect_free_names(tree)
    docs = own_docs(ast.get_docstring(function) or "")
    arguments = function.args.args + function.args.kwonlyargs
    defaults = ([None] * (len(function.args.args) - len(function.args.defaults))
                + function.args.defaults + function.args.kw_defaults)
    found: list[Parameter] = []
    for argument, default in zip(arguments, defaults, strict=True):
        hint = _evaluate(argument.annotation, namespace, path, argument.arg)
        value = (inspect.Parameter.empty if default is None
                 else _evaluate(default, namespace, path, argument.arg))
        found += _with_fields(Parameter((argument.arg,), hint, value,
                                        docs.get(argument.arg) or class_doc(hint)))
    return tuple(found)


def flow_summary(module: str, name: str | None = None) -> str:
    """The first sentence of the flow's docstring, as one line (the command's help)."""
    _, _, function = _flow_definition(module, name)
    first = " ".join((ast.get_docstring(function) or "").split("\n\n")[0].split())
    return first.split(": ")[0].rstrip(".")


def own_docs(docstring: str) -> dict[str, str]:
    """The descriptions in a docstring's `Args:` section, each as one line."""
    section = re.search(r"^Args:\n((?:    .*\n?|\s*\n)*)", inspect.cleandoc(docstring),
                        re.MULTILINE)
    if section is None:
        return {}
    entries = re.split(r"^    (?=\w+:)", section.group(1), flags=re.MULTILINE)
    return {entry.split(":", 1)[0]: " ".join(entry.split(":", 1)[1].split())
            for entry in entries if ":" in entry}


def _with_fields(parameter: Parameter) -> list[Parameter]:
    group = parameter.group
    if group is None:
        return [parameter]
    hints = typing.get_type_hints(group, include_extras=True)
    docs = field_docs(group)
    found = [parameter]
    for field in dataclasses.fields(group):
        found += _with_fields(Parameter(
            (*parameter.path, field.name), hints[field.name], field.default,
            docs.get(field.name) or class_doc(hints[field.name])))
    return found


def class_doc(hint: Any) -> str:
    """A parameter object's description: its class docstring, as one line."""
    return " ".join((hint.__doc__ or "").split()) if is_group(hint) else ""


def _prefect_free_names(tree: ast.Module) -> dict[str, Any]:
    """The names the module imports from Prefect-free modules, imported."""
    namespace: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and PREFECT_FREE.match(node.module or ""):
            exec(compile(ast.Module([node], type_ignores=[]), "<flow imports>", "exec"),
                 namespace)
    return namespace


def _evaluate(node: ast.expr | None, namespace: dict[str, Any], path: Path,
              argument: str) -> Any:
    if node is None:
        raise TokprobError(f"{path}: the flow parameter {argument!r} has no annotation; "
                           "every flow parameter needs one (its form and option).")
    expression = ast.unparse(node)
    try:
        return eval(expression, dict(namespace))  # the project's own source
    except NameError as error:
        raise TokprobError(
            f"{path}: the flow parameter {argument!r} uses {error.name!r}, which is not "
            "imported from tokprob, flows.stages, typing or annotated_types; import it "
            "from there so that the command line can read the flow without Prefect."
        ) from None


def flow_inputs(flow: str, parameters: tuple[Parameter, ...],
                given: dict[str, Any]) -> dict[str, Any]:
    """The flow's keyword arguments from names given flat (`max_tokens=4096`) or whole
    (`detection=Detection(…)`, `corpus={"dataset": …}`); what is not given keeps the flow's
    defaults."""
    if unknown := sorted(set(given) - {parameter.name for parameter in parameters}):
        raise TokprobError(
            f"The {flow} flow has no parameter {', '.join(map(repr, unknown))}. It takes "
            f"{', '.join(p.name for p in parameters if len(p.path) == 1)}, and the fields of "
            f"their objects: {', '.join(sorted(p.name for p in parameters if len(p.path) > 1))}."
        )
    inputs = {}
    for parameter in parameters:
        if len(parameter.path) == 1:
            value = _gather(parameter, parameters, given)
            if value is not _MISSING:
                inputs[parameter.name] = value
    return inputs


_MISSING = object()


def _gather(parameter: Parameter, parameters: tuple[Parameter, ...],
            given: dict[str, Any]) -> Any:
    children = [p for p in parameters if p.path[:-1] == parameter.path]
    if parameter.name in given:
        if inner := sorted(p.name for p in parameters
                           if p.path[:len(parameter.path)] == parameter.path
                           and p is not parameter and p.name in given):
            raise TokprobError(f"Give either {parameter.name} or its fields "
                               f"({', '.join(inner)}), not both.")
        value = given[parameter.name]
        if parameter.group and isinstance(value, dict):  # as a deployment's YAML gives it
            check_mapping(parameter.name, parameter.group, value)
            return pydantic.TypeAdapter(parameter.group).validate_python(value)
        return value
    values = {child.name: value for child in children
              if (value := _gather(child, parameters, given)) is not _MISSING}
    return parameter.group(**values) if values else _MISSING


def check_mapping(key: str, hint: Any, value: Any) -> None:
    """A parameter object given as a mapping names only fields it has, at every depth
    (pydantic would drop the others without a word)."""
    if not (dataclasses.is_dataclass(hint) and isinstance(value, dict)):
        return
    fields = [field.name for field in dataclasses.fields(hint)]
    if extra := sorted(set(value) - set(fields)):
        raise TokprobError(f"{key} has no field {', '.join(extra)}; its fields are "
                           f"{', '.join(fields)}.")
    inner = typing.get_type_hints(hint)
    for field, item in value.items():
        check_mapping(f"{key}.{field}", inner[field], item)
