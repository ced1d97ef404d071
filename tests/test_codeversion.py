"""A stage's code version follows the project modules it imports, transitively."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tokprob import codeversion
from tokprob.codeversion import _uses, code_version

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_cache():
    code_version.cache_clear()
    yield
    code_version.cache_clear()


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A throwaway project package `pkg` on sys.path:

    stage -> helper (import) -> numbers (from-import of a module) -> tokprob.regression;
    stage -> io (orchestration, left out); unused is imported by nobody.
    """
    name = f"tmpproj_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    files = {
        "__init__.py": "",
        "stage.py": f"import {name}.helper\nfrom {name} import io\n",
        "helper.py": f"from {name} import numbers\n\nSCALE = 2\n",
        "numbers.py": "import json\nfrom tokprob.regression import fit_ols\n\nOFFSET = 1\n",
        "io.py": "WHERE = 'disk'\n",
        "unused.py": "X = 1\n",
    }
    for file, text in files.items():
        (root / file).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(codeversion, "PROJECT_PACKAGES", (*codeversion.PROJECT_PACKAGES, name))
    monkeypatch.setattr(codeversion, "NOT_COMPUTATION",
                        codeversion.NOT_COMPUTATION | {f"{name}.io"})
    yield name, root
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def _version_after_edit(name: str, path: Path, text: str) -> str:
    path.write_text(path.read_text() + text)
    code_version.cache_clear()
    return code_version(f"{name}.stage")


def test_closure_follows_imports_through_project_modules(package):
    name, _ = package
    closure = set(_uses(f"{name}.stage"))
    assert {f"{name}.stage", f"{name}.helper", f"{name}.numbers", "tokprob.regression"} <= closure
    assert f"{name}.io" not in closure and f"{name}.unused" not in closure
    assert "json" not in closure and "numpy" not in closure
    # tokprob.regression imports tokprob.errors, which is orchestration: left out.
    assert "tokprob.errors" not in closure


@pytest.mark.parametrize(("file", "changes"), [
    ("stage.py", True), ("helper.py", True), ("numbers.py", True),
    ("io.py", False), ("unused.py", False),
])
def test_an_edit_changes_the_version_only_through_the_imports(package, file, changes):
    name, root = package
    before = code_version(f"{name}.stage")
    after = _version_after_edit(name, root / file, "\nEDITED = 1\n")
    assert (after != before) is changes


DEFINITIONS = """\
from {name} import numbers
from {name}.io import WHERE

SCALE = 2
TABLE = {{"a": 1}}
TABLE["b"] = 3
REGISTRY = []


def _double(x):
    return x * SCALE


def used(x):
    return _double(x) + numbers.OFFSET + TABLE["b"]


def unused(x):
    return x - 1


def register(function):
    REGISTRY.append(function)
    return function


@register
def plugin():
    return 3


class Shape:
    sides = 4


TABLE.update(c=5)  # a statement that binds nothing
"""


@pytest.fixture
def by_name(package):
    """`pkg.user` imports `used` and `REGISTRY` by name from `pkg.definitions`."""
    name, root = package
    (root / "definitions.py").write_text(DEFINITIONS.format(name=name))
    (root / "user.py").write_text(f"from {name}.definitions import REGISTRY, used\n")
    return name, root


@pytest.mark.parametrize(("old", "new", "changes"), [
    ("return x - 1", "return x - 2", False),  # a function nothing uses
    ("sides = 4", "sides = 5", False),  # a class nothing uses
    ("return x * SCALE", "return x * SCALE * 2", True),  # a helper the used name calls
    ("SCALE = 2", "SCALE = 3", True),  # a constant the helper reads
    ('TABLE["b"] = 3', 'TABLE["b"] = 4', True),  # a later assignment to a used name
    ("return 3", "return 4", True),  # a function that registers itself in REGISTRY
    ("# a statement that binds nothing", "# a comment", False),
    ("TABLE.update(c=5)", "TABLE.update(c=6)", True),  # a statement that binds nothing
])
def test_a_module_imported_by_name_counts_with_what_those_names_need(by_name, old, new,
                                                                     changes):
    name, root = by_name
    before = code_version(f"{name}.user")
    definitions = root / "definitions.py"
    assert definitions.read_text().count(old) == 1
    definitions.write_text(definitions.read_text().replace(old, new))
    code_version.cache_clear()
    assert (code_version(f"{name}.user") != before) is changes


def test_a_module_imported_whole_or_by_both_counts_whole(by_name):
    name, root = by_name
    (root / "whole.py").write_text(f"from {name} import definitions\n")
    (root / "both.py").write_text(f"from {name}.definitions import used\nimport {name}.user\n"
                                  f"from {name} import whole\n")
    before = {module: code_version(f"{name}.{module}") for module in ("whole", "both", "user")}
    definitions = root / "definitions.py"
    definitions.write_text(definitions.read_text().replace("return x - 1", "return x - 2"))
    code_version.cache_clear()
    after = {module: code_version(f"{name}.{module}") for module in before}
    assert after["whole"] != before["whole"] and after["both"] != before["both"]
    assert after["user"] == before["user"]
    # `used` reaches numbers by the module (whole) and io not at all (orchestration).
    closure = set(_uses(f"{name}.user"))
    assert f"{name}.numbers" in closure and f"{name}.io" not in closure


def test_an_orchestration_module_has_a_version_of_its_own(package):
    name, root = package
    before = code_version(f"{name}.io")
    (root / "io.py").write_text("WHERE = 'cloud'\n")
    code_version.cache_clear()
    assert code_version(f"{name}.io") != before


def test_version_is_a_short_hex_digest_and_deterministic():
    version = code_version("tasks.regression")
    assert len(version) == 16 and int(version, 16) >= 0
    code_version.cache_clear()
    assert code_version("tasks.regression") == version
    # A new interpreter (another hash seed, another import order) agrees.
    # A new interpreter (another hash seed, another import order) agrees. (tokprob.pca:
    # computing a version imports the modules it names, and the tasks import torch.)
    script = "from tokprob.codeversion import code_version; print(code_version('tokprob.pca'))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, cwd=REPO, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert other.stdout.split() == [code_version("tokprob.pca")]


def test_project_stages_have_distinct_versions_covering_their_library_code():
    assert code_version("tasks.regression") != code_version("tasks.sparsity")
    regression = set(_uses("tasks.regression"))
    assert {"tasks.regression", "tokprob.regression"} <= regression
    sparsity = set(_uses("tasks.sparsity"))
    assert {"tokprob.sparsity", "tokprob.regression"} <= sparsity
    # Orchestration does not reach the key: the store, the stage runner, the workspace.
    for closure in (regression, sparsity):
        assert not closure & {"tokprob.store", "tasks._stage", "tokprob.workspace",
                              "tokprob.hashing", "tokprob.config"}


@pytest.mark.parametrize(("stage", "library"), [
    ("tasks.pruning", "tokprob.pruning"), ("tasks.dynamics", "tokprob.dynamics"),
    ("tasks.pruning_figures", "tokprob.plots"), ("tasks.dynamics_table", "tokprob.plots"),
])
def test_stage_modules_cover_the_library_code_they_run(stage, library):
    assert library in _uses(stage)


@pytest.mark.parametrize("stage", ["tasks.pruning", "tasks.dynamics", "tasks.regression"])
def test_computing_stage_modules_leave_the_plots_out(stage):
    assert "tokprob.plots" not in _uses(stage)


def test_an_unknown_module_has_the_version_of_nothing():
    assert _uses("tokprob.no_such_module") == {}
    assert code_version("tokprob.no_such_module") == code_version("tasks.no_such_module")


@pytest.mark.parametrize(("edit", "changes"), [
    ("\n# a comment\n\n\n", False),
    ("\n\ndef helper( x ):\n    return x+1\n", True),
])
def test_comments_and_formatting_keep_the_version_code_does_not(package, edit, changes):
    name, root = package
    before = code_version(f"{name}.stage")
    assert (_version_after_edit(name, root / "numbers.py", edit) != before) is changes


def test_docstrings_field_docs_and_error_messages_keep_the_version(package):
    name, root = package
    numbers = root / "numbers.py"
    numbers.write_text(numbers.read_text() + (
        "\n\nclass Config:\n    size: int = 2\n\n\n"
        "def check(x):\n    if x < 0:\n        raise ValueError(f'bad {x}')\n"
        "    return x * 2\n"))
    code_version.cache_clear()
    before = code_version(f"{name}.stage")
    text = numbers.read_text()
    numbers.write_text('"""A module docstring."""\n' + text
                       .replace("size: int = 2", 'size: int = 2\n    """How big."""')
                       .replace("def check(x):", 'def check(x):\n    """Checks x."""')
                       .replace("f'bad {x}'", "f'x must not be negative, got {x}' + '.'"))
    code_version.cache_clear()
    assert code_version(f"{name}.stage") == before
    numbers.write_text(numbers.read_text().replace("return x * 2", "return x * 3"))
    code_version.cache_clear()
    assert code_version(f"{name}.stage") != before


def _add_prose(root: Path) -> None:
    """One more sentence in each module docstring and a comment line at each module's end."""
    for folder in ("tokprob", "tasks"):
        for path in sorted((root / folder).glob("*.py")):
            text = path.read_text()
            if text.startswith('"""'):
                text = '"""An added sentence. ' + text[3:]
            path.write_text(text + "\n# an added comment line\n")


def _stage_versions(root: Path) -> dict[str, str]:
    script = ("import json, tasks.figures, tasks.pruning, tasks.pruning_figures, "
              "tasks.steering, tasks.steering_figures, tasks.dynamics, tasks.dynamics_table, "
              "tasks.pretrain, "
              "tasks.prune_model, tasks.steer_model, flows.encoding\n"
              "from tasks._stage import STAGES\n"
              "from tokprob.codeversion import code_version\n"
              "print(json.dumps({n: code_version(s.module) for n, s in STAGES.items()}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=root, env={"PATH": "", "PYTHONPATH": str(root)}, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_prose_edits_to_every_module_keep_every_stage_version(tmp_path):
    """A comment line and a docstring sentence added to every module of the library and
    the tasks keeps every stage's code version, so every cached stage."""
    root = tmp_path / "repo"
    for folder in ("tokprob", "tasks", "flows", "cli"):
        shutil.copytree(REPO / folder, root / folder)
    before = _stage_versions(root)
    assert len(before) >= 15
    _add_prose(root)
    assert "An added sentence." in (root / "tokprob" / "pca.py").read_text()
    assert _stage_versions(root) == before
    pca = root / "tokprob" / "pca.py"
    pca.write_text(pca.read_text() + "\n\ndef added(x):\n    return 2 * x\n")
    assert _stage_versions(root) == before  # a function no stage uses
    old = "    order = np.argsort(values)[::-1]\n"
    assert pca.read_text().count(old) == 1
    pca.write_text(pca.read_text().replace(old, old.replace("[::-1]", "[::-1].copy()")))
    after = _stage_versions(root)
    assert after["pca"] != before["pca"] and after["regression"] == before["regression"]


FIGURE_STAGES = {"figures", "pruning-figures", "steering-figures", "dynamics"}
"""The stages that draw plots (`dynamics` also gathers the checkpoints' rows)."""


@pytest.fixture(scope="module")
def plot_edit(tmp_path_factory) -> tuple[dict[str, str], dict[str, str]]:
    """Every stage's version before and after a change to how every plot is drawn."""
    root = tmp_path_factory.mktemp("plots") / "repo"
    for folder in ("tokprob", "tasks", "flows", "cli"):
        shutil.copytree(REPO / folder, root / folder)
    before = _stage_versions(root)
    plots = root / "tokprob" / "plots.py"
    assert "\nDPI = 120\n" in plots.read_text()
    plots.write_text(plots.read_text().replace("\nDPI = 120\n", "\nDPI = 150\n"))
    return before, _stage_versions(root)


def test_a_plot_edit_re_versions_every_figure_stage(plot_edit):
    before, after = plot_edit
    assert set(before) >= FIGURE_STAGES
    assert {stage for stage in FIGURE_STAGES if after[stage] != before[stage]} == FIGURE_STAGES


def test_a_plot_edit_keeps_every_stage_that_computes(plot_edit):
    """Editing a plot re-draws figures and never re-runs a sweep, a fit or a model."""
    before, after = plot_edit
    changed = {stage for stage in before if after[stage] != before[stage]}
    assert changed - FIGURE_STAGES == set()
    assert {"pruning", "steering", "checkpoint", "unigram", "regression"} <= set(before)


def test_an_edit_to_the_python_api_or_the_flow_parameters_keeps_every_stage(tmp_path):
    """How flows are started (tokprob.run, the parameters read from their signatures)
    computes nothing a stage stores."""
    root = tmp_path / "repo"
    for folder in ("tokprob", "tasks", "flows", "cli"):
        shutil.copytree(REPO / folder, root / folder)
    before = _stage_versions(root)
    for module in (root / "tokprob" / "api.py", root / "flows" / "parameters.py"):
        module.write_text(module.read_text() + "\n\ndef added(x):\n    return 2 * x\n")
    assert _stage_versions(root) == before


def test_declaring_a_new_summary_field_keeps_every_stage(tmp_path):
    """What a stage's summary holds is declared apart from the catalog of its files, so a
    new field recomputes nothing cached; a new column every artifact must have recomputes
    the stages that use that table, and only those."""
    root = tmp_path / "repo"
    for folder in ("tokprob", "tasks", "flows", "cli"):
        shutil.copytree(REPO / folder, root / folder)
    before = _stage_versions(root)
    summaries = root / "tasks" / "stage_summaries.py"
    old = "class SteeringSummary(StageSummary):\n"
    assert old in summaries.read_text()
    summaries.write_text(summaries.read_text().replace(old, old + "    added: int\n"))
    assert _stage_versions(root) == before
    catalog = root / "tasks" / "catalog.py"
    assert '"heldout_effective_positions"),' in catalog.read_text()
    catalog.write_text(catalog.read_text().replace('"heldout_effective_positions"),',
                                                   '"heldout_effective_positions", "added"),'))
    after = _stage_versions(root)
    # Only the stages that use the steering table: the catalog counts by the names used.
    assert {stage for stage in before if after[stage] != before[stage]} == {
        "steering", "steering-figures"}
