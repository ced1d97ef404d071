"""Run records and reports: what each flow run produced, kept in the workspace, and one
self-contained report (HTML and Markdown) to read it, linked from the flow run."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact

from tasks._stage import artifact_key
from tokprob.errors import TokprobError
from tokprob.report import Figure, Report, Section, Table, render_html, render_markdown
from tokprob.store import ArtifactStore
from tokprob.workspace import Workspace

PACKAGES = ("tokprob", "torch", "transformers", "prefect", "numpy", "statsmodels")


def publish_run(workspace: Workspace, flow: str, result: dict[str, Any]) -> dict[str, Any]:
    """Record the run, write its report, and link the report from the flow run."""
    from prefect.runtime import flow_run

    now = dt.datetime.now(dt.UTC)
    record = {"flow": flow, "flow_run_id": str(flow_run.id or ""),
              "flow_run_name": flow_run.name or "local",
              "created": now.isoformat(timespec="seconds"), "result": result}
    runs = workspace.root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{now:%Y%m%dT%H%M%S}-{flow}-{record['flow_run_name']}.json"
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(record, indent=2, default=str))
    scratch.replace(path)
    # Run names start with their flow's (flows/labels.py); one started otherwise may not.
    name = record["flow_run_name"]
    html_path, md_path = write_report(workspace, [record], name if name.startswith(f"{flow}-")
                                      else f"{flow}-{name}")
    # Set by the command line when a `tokprob server` serves this data folder's reports.
    served = os.environ.get("TOKPROB_REPORTS_URL")
    link = f"{served}/reports/{html_path.name}" if served else html_path.as_uri()
    key = artifact_key(f"report-{flow}", result.get("model", ""))
    create_link_artifact(link=link, link_text=f"report: {html_path.name}", key=key,
                         description=f"The report of this {flow} run: {html_path}")
    create_markdown_artifact(markdown=ui_markdown(md_path.read_text(), served),
                             key=f"{key}-content"[:100],
                             description=f"The report of this {flow} run")
    return result | {"report": str(html_path)}


def ui_markdown(markdown: str, served: str | None) -> str:
    """A Markdown report as the Prefect UI shows it: its figures (linked relative to the
    reports folder) from the reports server, or named where nothing serves them."""
    if served:
        return re.sub(r"\]\(\.\./", f"]({served}/", markdown)
    return re.sub(r"!\[([^\]]*)\]\(([^)]*)\)", r"*Figure: \1 (`\2` in the reports folder)*",
                  markdown)


def run_records(workspace: Workspace) -> list[dict[str, Any]]:
    """Every recorded run, oldest first."""
    folder = workspace.root / "runs"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] \
        if folder.is_dir() else []


def find_runs(workspace: Workspace, query: str) -> list[dict[str, Any]]:
    """The run whose name or id is `query`, or the latest run of each flow about the
    model `query` (its name or spec)."""
    records = run_records(workspace)
    named = [r for r in records if query in (r["flow_run_name"], r["flow_run_id"])
             or (len(query) >= 8 and r["flow_run_id"].startswith(query))]
    if named:
        return named[-1:]
    wanted = query.lower()
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        result = record["result"]
        models = {str(result.get("model", "")).lower(), str(result.get("model_spec", "")).lower()}
        models |= {str(m).lower() for m in result.get("models", [])}
        if wanted in models:
            latest[record["flow"]] = record
    if not latest:
        known = sorted({r["result"].get("model", "") for r in records} - {""})
        raise TokprobError(
            f"No recorded run is named {query!r} and none is about a model {query!r}. "
            + (f"Models with runs: {', '.join(known)}." if known else "No run is recorded "
               "yet in this data folder: run a flow first.")
        )
    return list(latest.values())


def write_report(workspace: Workspace, records: list[dict[str, Any]],
                 name: str) -> tuple[Path, Path]:
    """Write `reports/<name>.html` and `.md` for the records; returns both paths."""
    folder = workspace.root / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "report"
    store = ArtifactStore(workspace.artifacts)
    sections = [section for record in records for section in _sections(record, store)]
    sections.append(Section("Software", tables=[Table(
        "Versions", ["package", "version"], [[p, _version(p)] for p in PACKAGES])]))
    subjects = sorted({str(r["result"].get("model", "")) for r in records} - {""})
    report = Report(f"tokprob report: {', '.join(subjects) or name}", sections)
    html_path, md_path = folder / f"{slug}.html", folder / f"{slug}.md"
    for path, text in ((html_path, render_html(report)),
                       (md_path, render_markdown(report, relative_to=folder))):
        scratch = path.with_suffix(path.suffix + ".tmp")
        scratch.write_text(text)
        scratch.replace(path)
    return html_path, md_path


RESULT_TABLES = {
    "fewshot_median_error": ("Median steering error, each method fitted on the first n "
                             "detecting windows (columns: n)", "method"),
    "topk_dims_adj_r2": ("Adjusted R² of the top-k dimensions by |t|", "k"),
    "topk_components_adj_r2": ("Adjusted R² of the top-k principal components", "k"),
    "headline": ("Largest fraction pruned with JS(α, α') below the threshold",
                 "method/split"),
}
"""Nested results: a readable title and the name of their index column."""


def _sections(record: dict[str, Any], store: ArtifactStore) -> list[Section]:
    result = record["result"]
    title = f"{record['flow']}: {result.get('model') or ', '.join(result.get('models', []))}"
    scalars = [[key, value] for key, value in result.items()
               if isinstance(value, str | int | float | bool) and key not in ("report",)]
    tables = [Table("Results", ["quantity", "value"], scalars)]
    for key, value in result.items():
        if key in ("stages", "artifacts", "artifact_dirs", "plots"):
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            columns = list(value[0])
            tables.append(Table(key, columns, [[row.get(c) for c in columns] for row in value]))
        elif isinstance(value, dict) and value and all(isinstance(v, dict)
                                                      for v in value.values()):
            columns = list(next(iter(value.values())))
            caption, index = RESULT_TABLES.get(key, (key, key))
            tables.append(Table(caption, [index, *columns],
                                [[k, *[v.get(c) for c in columns]] for k, v in value.items()]))
        elif isinstance(value, dict) and value:
            caption, index = RESULT_TABLES.get(key, (key, "key"))
            tables.append(Table(caption, [index, "value"], [[k, v] for k, v in value.items()]))
    stages = result.get("stages", {})
    dirs = result.get("artifact_dirs", {})
    tables.append(Table("Stages (cached or computed in this run)",
                        ["stage", "state", "artifact"],
                        [[s, state, dirs.get(s, "")] for s, state in stages.items()]))
    provenance = []
    for stage, folder in dirs.items():
        manifest = store.verify(Path(folder).parent.name, Path(folder).name)
        if manifest is not None:
            inputs = {k: v if isinstance(v, str) else v.get("content", "")[:12]
                      for k, v in manifest.inputs.items() if not isinstance(v, list)}
            provenance.append([stage, manifest.code_version, json.dumps(manifest.params,
                              default=str), json.dumps(inputs)])
    tables.append(Table("Parameters, code and inputs of each stage",
                        ["stage", "code version", "parameters", "inputs (fingerprints)"],
                        provenance))
    figures = [Figure(name.replace("_", " "), Path(path))
               for name, path in result.get("plots", {}).items()]
    text = (f"Flow run {record['flow_run_name']} ({record['flow_run_id'] or 'no id'}), "
            f"finished {record['created']}.")
    return [Section(title, text, tables, figures)]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
