"""Infrastructure, not analysis: the version of a stage's code: a hash of its sources
and of the project modules they use.

Hashing only the task function would miss edits to the library code it calls, so the
version follows imports through the project's own packages, except through the modules
that cannot change what a stage computes (NOT_COMPUTATION): editing the artifact store or
a progress bar must not throw away hours of cached forward passes.

What is hashed is the syntax tree, not the text: comments, formatting, docstrings (of
modules, classes, functions and config fields) and the messages of raised errors cannot
change a result, so editing them keeps every cached stage; a changed formula does not.

A module imported by name (`from tasks.catalog import ALPHA`) counts only with what those
names need: the top-level statements that bind them and, transitively, every top-level
name they use, plus the statements that bind nothing (they may act on anything) and the
definitions decorated by or derived from the module's own code (they may register
themselves). Adding a column to the steering table then re-versions the stages that use
that table, not the corpus and the forward passes that every stage's catalog import would
otherwise reach. A module imported whole (`import x`, `from pkg import module`) counts
whole.
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


Names = frozenset[str] | None
"""The top-level names of a module a stage uses; None: the whole module."""


@cache
def code_version(module: str) -> str:
    """Hash of `module`'s source and of what it uses of the project modules it imports,
    transitively."""
    sources = {name: _computation(statements)
               for name, statements in sorted(_uses(module).items())}
    return sha256_json(sources)[:16]


def _uses(root: str) -> dict[str, list[ast.stmt]]:
    """Each project module `root` reaches, with the top-level statements of it that `root`
    uses (transitively): the part of the module in `root`'s version."""
    names_used: dict[str, Names] = {}
    statements: dict[str, list[ast.stmt]] = {}
    pending: list[tuple[str, Names]] = [(root, None)]
    while pending:
        name, names = pending.pop()
        if _origin(name) is None or (name in NOT_COMPUTATION and name != root):
            continue
        if name in names_used:
            known = names_used[name]
            merged = None if known is None or names is None else known | names
            if merged == known:
                continue
            names = merged
        names_used[name] = names
        statements[name] = _statements(name, names)
        pending.extend(_project_imports(statements[name]))
    return statements


def _statements(module: str, names: Names) -> list[ast.stmt]:
    """The top-level statements of `module` that `names` need (all of them for None)."""
    body = ast.parse(_source(module)).body
    if names is None:
        return body
    local = {name for statement in body if not isinstance(statement, ast.Import | ast.ImportFrom)
             for name in _bound(statement)}
    needed = set(names)
    chosen = [not _bound(statement) or _may_register(statement, local) for statement in body]
    grown = True
    while grown:
        grown = False
        for index, statement in enumerate(body):
            if chosen[index] or not _bound(statement) & needed:
                continue
            chosen[index] = grown = True
        used = {node.id for index, statement in enumerate(body) if chosen[index]
                for node in ast.walk(statement) if isinstance(node, ast.Name)}
        grown = grown or not used <= needed
        needed |= used
    return [statement for index, statement in enumerate(body) if chosen[index]]


def _bound(statement: ast.stmt) -> set[str]:
    """The names a top-level definition, assignment or import binds; empty for anything
    else, which is therefore always kept."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {statement.name}
    if isinstance(statement, ast.Import | ast.ImportFrom):
        if any(alias.name == "*" for alias in statement.names):
            return set()
        return {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
    if isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        return {node.id for target in targets for node in ast.walk(target)
                if isinstance(node, ast.Name)}
    return set()


def _may_register(statement: ast.stmt, local: set[str]) -> bool:
    """A definition whose decorators or bases are the module's own may add itself to
    something else of the module (a registry), so it is kept like a bare statement."""
    if not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return False
    heads = [*statement.decorator_list]
    if isinstance(statement, ast.ClassDef):
        heads += [*statement.bases, *(keyword.value for keyword in statement.keywords)]
    return any(isinstance(node, ast.Name) and node.id in local
               for head in heads for node in ast.walk(head))


def _project_imports(statements: list[ast.stmt]) -> list[tuple[str, Names]]:
    found: list[tuple[str, Names]] = []
    for node in (node for statement in statements for node in ast.walk(statement)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported = frozenset(alias.name for alias in node.names)
            found.append((node.module, None if "*" in imported else imported))
            # `from tokprob import regression` imports a module, not a name.
            found.extend((f"{node.module}.{alias.name}", None) for alias in node.names)
    return [(name, names) for name, names in found if name.split(".")[0] in PROJECT_PACKAGES]


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


def _computation(statements: list[ast.stmt]) -> str:
    """The syntax tree of the statements used of a module, without what only people read
    (see the module docstring); nothing for an empty module."""
    if not statements:
        return ""
    tree = _WithoutProse().visit(ast.Module(statements, type_ignores=[]))
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
