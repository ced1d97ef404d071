"""`tokprob serve`: deployments of the flows on schedules, from a TOML file.

    [[deployment]]
    name = "nightly-encoding"
    flow = "encoding"              # encoding, steering, pruning, dynamics or paper
    cron = "0 3 * * *"             # or: interval = 3600 (seconds)
    [deployment.parameters]
    model = "smollm2-135m-instruct"
    probability_config = { max_tokens = 65536 }

Served the Prefect way (`prefect.serve`): the process runs each deployment's scheduled
runs, and ad-hoc runs started from the UI or `prefect deployment run`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tokprob.errors import TokprobError

FLOWS = ("encoding", "steering", "pruning", "dynamics", "paper")


def read_deployments(path: Path) -> list[dict[str, Any]]:
    """The deployments of a TOML file, checked: a known flow, one schedule, parameters."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise TokprobError(f"Cannot read the deployments file {path}: {error}") from None
    deployments = document.get("deployment", [])
    if not deployments:
        raise TokprobError(f"{path} defines no [[deployment]]; see `tokprob serve --help`.")
    names = set()
    for entry in deployments:
        name = entry.get("name")
        if not name or name in names:
            raise TokprobError(f"Every deployment in {path} needs a unique name "
                               f"(got {name!r}).")
        names.add(name)
        if entry.get("flow") not in FLOWS:
            raise TokprobError(f"Deployment {name!r}: flow must be one of {', '.join(FLOWS)} "
                               f"(got {entry.get('flow')!r}).")
        if ("cron" in entry) == ("interval" in entry):
            raise TokprobError(f"Deployment {name!r}: give exactly one of cron = \"…\" or "
                               "interval = seconds.")
        if "interval" in entry and not (isinstance(entry["interval"], int | float)
                                        and entry["interval"] > 0):
            raise TokprobError(f"Deployment {name!r}: interval must be a positive number of "
                               f"seconds (got {entry['interval']!r}).")
    return deployments


def serve_deployments(deployments: list[dict[str, Any]], data_dir: str) -> None:
    """Serve the deployments until interrupted."""
    from prefect import serve

    from flows.dynamics import dynamics
    from flows.encoding import encoding
    from flows.paper import paper
    from flows.pruning import pruning
    from flows.steering import steering

    flows = {"encoding": encoding, "steering": steering, "pruning": pruning,
             "dynamics": dynamics, "paper": paper}
    served = []
    for entry in deployments:
        schedule = {"cron": entry["cron"]} if "cron" in entry else {
            "interval": entry["interval"]}
        parameters = {"data_dir": data_dir} | entry.get("parameters", {})
        served.append(flows[entry["flow"]].to_deployment(
            name=entry["name"], parameters=parameters, **schedule))
    serve(*served)
