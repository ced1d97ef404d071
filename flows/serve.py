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

import dataclasses
import tomllib
import typing
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
        if "cron" in entry:
            _check_cron(name, entry["cron"])
    return deployments


def _check_cron(name: str, cron: Any) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise TokprobError(
            f"Deployment {name!r}: cron = {cron!r} is not a cron schedule; give five fields, "
            "minute hour day-of-month month day-of-week, as in \"0 3 * * *\" (03:00 daily)."
        ) from None


def check_parameters(flow: Any, name: str, parameters: dict[str, Any]) -> None:
    """Refuse, when serving starts, parameters the flow does not take or cannot read:
    otherwise each scheduled run would fail when it fires."""
    from prefect.exceptions import ParameterTypeError

    known = list(flow.parameters.properties)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise TokprobError(f"Deployment {name!r}: the {flow.name} flow has no parameter "
                           f"{', '.join(unknown)}; its parameters are {', '.join(known)}.")
    hints = typing.get_type_hints(flow.fn)
    for key, value in parameters.items():
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            fields = [field.name for field in dataclasses.fields(hints[key])]
            if extra := sorted(set(value) - set(fields)):
                raise TokprobError(f"Deployment {name!r}: {key} has no field "
                                   f"{', '.join(extra)}; its fields are {', '.join(fields)}.")
    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as error:
        raise TokprobError(f"Deployment {name!r}: {' '.join(str(error).split())}") from None


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
        check_parameters(flows[entry["flow"]], entry["name"], parameters)
        served.append(flows[entry["flow"]].to_deployment(
            name=entry["name"], parameters=parameters, **schedule))
    serve(*served)
