"""Infrastructure, not analysis: the version of a stage's code: a hash of its sources
and of the project modules they use.

Hashing only the task function would miss edits to the library code it calls, so the
version follows imports through the project's own packages, except through the modules
that cannot change what a stage computes (NOT_COMPUTATION): editing the artifact store or
a progress bar must not throw away hours of cached forward passes.

What is hashed is the syntax tree, not the text: comments, formatting, docstrings (of
modules, classes, functions and config fields) and the messages of raised errors cannot
change a result, so editing them keeps every cached stage; a changed formula does not.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

from tokprob.hashing import sha256_json

PROJECT_PACKAGES = ("tokprob", "tasks")

NOT_COMPUTATION = frozenset({
    "tasks._stage",  # keys, the store and UI artifacts: orchestration
    "tasks.locks",
    "tasks.runner",
    "tokprob.store",
    "tokprob.hashing",
    "tokprob.codeversion",
    "tokprob.progress",
    "tokprob.errors",
    "tokprob.retry",  # how downloads are retried, not what they hold
    "tokprob.workspace",
    # Parameter descriptions and checks: the values themselves are in every key.
    "tokprob.config",
    "tokprob.summary",  # text for people, not artifact content
    "tasks.stage_summaries",  # declarations of what summaries hold, not their values
    # The Python API starts flows and reads results: `tokprob/__init__.py` names it, so
    # without this every stage would re-version when it changes.
    "tokprob.api",
    # What a spec names is identified by content (fingerprints), not by the code that
    # found or fetched it.
    "tokprob.specs",
    "tokprob.assets",
})


@cache
def code_version(module: str) -> str:
    """Hash of `module`'s source and of every project module it imports, transitively."""
    sources = {name: _computation(name) for name in sorted(_closure(module))}
    return sha256_json(sources)[:16]


def _closure(root: str) -> set[str]:
    seen: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen or _origin(name) is None or (name in NOT_COMPUTATION and name != root):
            continue
        seen.add(name)
        pending.extend(_project_imports(name))
    return seen


def _project_imports(module: str) -> list[str]:
    tree = ast.parse(_source(module))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            # `from tokprob import regression` imports a module, not a name.
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return [name for name in found if name.split(".")[0] in PROJECT_PACKAGES]


def _origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _source(module: str) -> str:
    origin = _origin(module)
    return origin.read_text() if origin else ""


def _computation(module: str) -> str:
    """The module's syntax tree without what only people read (see the module docstring)."""
    source = _source(module)
    if not source:
        return ""
    tree = _WithoutProse().visit(ast.parse(source))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


class _WithoutProse(ast.NodeTransformer):
    """Drops bare string statements (docstrings, field docs) and blanks error messages."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if isinstance(node.exc, ast.Call):
            node.exc.args = [_blank(arg) for arg in node.exc.args]
        return self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        # A class or function whose body was only a docstring keeps a valid body.
        if isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]
        return node


def _blank(argument: ast.expr) -> ast.expr:
    """An error message (a string, an f-string, text joined or formatted) as ''."""
    return ast.Constant("") if _is_text(argument) else argument


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)) or (
        isinstance(node, ast.BinOp) and (_is_text(node.left) or _is_text(node.right)))
