"""The Python API: run a flow and read its results as DataFrames, without the command line.

    import tokprob
    out = tokprob.run("encoding", model="smollm2-135m-instruct", dataset="wiki-leads",
                      max_tokens=4096)          # the same dict as `tokprob run … --json`
    res = tokprob.results(model="smollm2-135m-instruct", dataset="wiki-leads")
    res.table("probabilities")                  # the stored Parquet, as a DataFrame
    res.summary["adj_r2"]

`results` only reads what finished runs recorded in the data folder; it never computes.
Prefect is imported only when `run` starts a flow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tokprob.errors import TokprobError
from tokprob.specs import short_name
from tokprob.workspace import Workspace


def run(flow: str = "encoding", **parameters: Any) -> dict[str, Any]:
    """Run one of tokprob's flows and return its result (the `--json` dict).

    `parameters` are the flow's own (`model`, `corpus`, `detection`, `data_dir`,
    `refresh`, …) or a field of one of its parameter objects by name (`dataset="…"`,
    `max_tokens=4096`, `window=128`, `target="frequency"`), gathered into that object;
    the rest keep their defaults.
    """
    from cli.environment import configure_logging, prepare_environment
    from flows.parameters import flow_inputs
    from flows.stages import FLOWS  # names only: no Prefect yet

    if flow not in FLOWS:
        raise TokprobError(f"Unknown flow {flow!r}; choose one of {', '.join(FLOWS)}.")
    inputs = flow_inputs(flow, FLOWS[flow].parameters(), parameters)
    if unknown := sorted(set(inputs.get("refresh") or ()) - set(FLOWS[flow].stages)):
        raise TokprobError(f"The {flow} flow has no stage {', '.join(map(repr, unknown))} "
                           f"to refresh; its stages: {', '.join(FLOWS[flow].stages)}.")
    workspace = Workspace.from_env(parameters.get("data_dir"))
    workspace.ensure_writable()
    prepare_environment(workspace)  # Prefect's settings, before Prefect is imported
    chosen = FLOWS[flow].load()
    configure_logging()
    return chosen(**inputs | {"data_dir": workspace.data_dir})


@dataclass(frozen=True)
class Results:
    """What the finished runs of one model on one dataset left in the data folder."""

    summary: dict[str, Any]
    """The latest run's result: the same dict as its `--json` output."""
    runs: list[dict[str, Any]]
    """Every matching run record, oldest first (`flow`, `flow_run_name`, `created`, …)."""
    artifacts: dict[str, Path]
    """Each stage's artifact folder, from the latest run that has the stage."""

    @property
    def stages(self) -> list[str]:
        return sorted(self.artifacts)

    def table(self, stage: str, name: str | None = None) -> pd.DataFrame:
        """A stage's stored table: its main file, or `name` (`table("pca", "scores")`)."""
        if stage not in self.artifacts:
            raise TokprobError(
                f"No stage {stage!r} in these runs; they have {', '.join(self.stages)}."
            )
        folder = self.artifacts[stage]
        files = sorted(folder.glob("*.parquet"))
        if name is None:
            main = self._main_file(stage)
            chosen = main if main is not None else (files[0] if len(files) == 1 else None)
        else:
            chosen = folder / f"{name.removesuffix('.parquet')}.parquet"
        if chosen is None or not chosen.is_file():
            raise TokprobError(
                f"The {stage} artifact in {folder} has no table "
                f"{name or 'to choose by default'}; its tables: "
                f"{', '.join(f.stem for f in files) or 'none (it may have been deleted)'}. "
                "Re-run the flow to rebuild it."
            )
        return pd.read_parquet(chosen)

    def _main_file(self, stage: str) -> Path | None:
        for record in reversed(self.runs):
            path = record["result"].get("artifacts", {}).get(stage)
            if path and Path(path).parent == self.artifacts[stage]:
                return Path(path)
        return None


def results(model: str, dataset: str, flow: str | None = None,
            data_dir: str | None = None) -> Results:
    """The results of the latest finished runs about `model` on `dataset` (their names or
    specs, as given to `run`), of one `flow` or of any; never computes anything."""
    workspace = Workspace.from_env(data_dir)
    records = [r for r in _records(workspace.root / "runs")
               if _about(r["result"], model, dataset) and flow in (None, r["flow"])]
    if not records:
        raise TokprobError(
            f"No finished {flow or 'tokprob'} run about model {model!r} on dataset "
            f"{dataset!r} is recorded in {workspace.root}. Run one first, e.g. "
            f"tokprob.run({(flow or 'encoding')!r}, model={model!r}, dataset={dataset!r}), "
            "or pass data_dir= to read another data folder."
        )
    artifacts: dict[str, Path] = {}
    for record in records:  # oldest first: later runs win
        for stage, folder in record["result"].get("artifact_dirs", {}).items():
            if Path(folder).is_dir():
                artifacts[stage] = Path(folder)
    return Results(summary=records[-1]["result"], runs=records, artifacts=artifacts)


def _records(folder: Path) -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a record being written or damaged: not a finished run
    return sorted(records, key=lambda r: r.get("created", ""))


def _about(result: dict[str, Any], model: str, dataset: str) -> bool:
    """Whether a run is about this model and dataset, each given by name or by spec."""
    models = [result.get("model"), result.get("model_spec"), *result.get("models", [])]
    return bool(_names(model) & _names(*models)) and bool(_names(dataset) & _names(
        result.get("dataset")))


def _names(*specs: Any) -> set[str]:
    """A spec and its short name, lowercase, for matching."""
    return {name.lower() for spec in specs if spec
            for name in (str(spec).rstrip("/"), short_name(str(spec)))}
