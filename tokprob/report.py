"""One self-contained report of a run: HTML (figures embedded) and Markdown.

    report = Report("SmolLM2 on wiki-leads", [Section("Encoding", text, tables, figures)])
    html, markdown = render_html(report), render_markdown(report, relative_to=folder)
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Figure:
    title: str
    path: Path


@dataclass(frozen=True)
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    title: str
    sections: list[Section]


def cell(value: Any) -> str:
    """A table cell: numbers to four significant digits, the rest as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "–" if value != value else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
th { background: #f4f4f4; } td { font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; max-width: 46%; }
figure img { max-width: 100%; } figcaption { font-size: .85rem; color: #555; }
"""


def render_html(report: Report) -> str:
    """One HTML file with every figure embedded (no other files needed to view it)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>"
             f"{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>"]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for table in section.tables:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row)
                           + "</tr>" for row in table.rows)
            parts.append(f"<h3>{html.escape(table.title)}</h3><table><tr>{head}</tr>{body}"
                         "</table>")
        for figure in section.figures:
            if not figure.path.is_file():
                continue
            data = base64.b64encode(figure.path.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(figure.title)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{html.escape(figure.title)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(report: Report, relative_to: Path) -> str:
    """The same report as Markdown, figures linked relative to the report's folder."""
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        for table in section.tables:
            lines += [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
                      "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |"
                      for row in table.rows]
            lines.append("")
        for figure in section.figures:
            link = Path(os.path.relpath(figure.path, relative_to)).as_posix()
            lines += [f"![{figure.title}]({link})", ""]
    return "\n".join(lines)
