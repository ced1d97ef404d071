"""The flows' deployments, declared once in `prefect.yaml` the Prefect way:

    deployments:
      - name: nightly-encoding
        entrypoint: flows/encoding.py:encoding   # or steering, pruning, dynamics, paper
        parameters:
          model: smollm2-135m-instruct
          corpus: {dataset: wiki-leads}
          detection: {probability_config: {max_tokens: 65536}}
        schedules:
          - cron: "0 2 * * *"                    # or: interval: 3600 (seconds)
        tags: [tokprob]
        work_pool: {name: tokprob}

`prefect deploy --all` registers them for the workers of a process work pool;
`tokprob serve` reads the same file and serves them itself (`prefect.serve`: this process
runs their scheduled runs and the ad-hoc ones started from the UI or `prefect deployment
run`), so it has no use for their work pool nor for the file's build and pull steps.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from cli.environment import configure_logging
from flows.parameters import check_mapping
from flows.stages import FLOWS
from tokprob.errors import TokprobError

ENTRYPOINTS = {f"flows/{name}.py:{name}": name for name in FLOWS}
"""The entrypoint of each flow, relative to the checkout (where prefect.yaml lies)."""

SERVED_FIELDS = {"name", "entrypoint", "parameters", "schedules", "tags", "description",
                 "version"}
WORKER_FIELDS = {"work_pool", "flow_name", "build", "push", "pull"}
"""Fields of a deployment that only `prefect deploy` and its workers use."""
SCHEDULE_FIELDS = {"cron", "interval", "rrule", "timezone", "anchor_date", "active"}


@dataclasses.dataclass(frozen=True)
class Deployment:
    """A deployment of prefect.yaml as `tokprob serve` serves it."""

    name: str
    flow: str
    parameters: dict[str, Any]
    schedules: list[Any]
    """Prefect's `DeploymentScheduleCreate` objects."""
    tags: list[str]
    description: str | None = None
    version: str | None = None


def read_deployments(path: Path) -> list[Deployment]:
    """The deployments of a prefect.yaml, checked: a unique name, a tokprob flow's
    entrypoint, parameters as a mapping, schedules Prefect can read."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TokprobError(f"Cannot read the deployments file {path}: {error}") from None
    entries = document.get("deployments") if isinstance(document, dict) else None
    if not entries or not isinstance(entries, list):
        raise TokprobError(f"{path} declares no deployments (a `deployments:` list, as "
                           "prefect.yaml has it); see `tokprob serve --help`.")
    deployments: list[Deployment] = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not name or name in {deployment.name for deployment in deployments}:
            raise TokprobError(f"Every deployment in {path} needs a unique name "
                               f"(got {name!r}).")
        if unknown := sorted(set(entry) - SERVED_FIELDS - WORKER_FIELDS):
            raise TokprobError(f"Deployment {name!r}: `tokprob serve` does not read "
                               f"{', '.join(unknown)}; deploy it with `prefect deploy` "
                               "instead, or remove them.")
        if entry.get("entrypoint") not in ENTRYPOINTS:
            raise TokprobError(f"Deployment {name!r}: entrypoint must be one of "
                               f"{', '.join(ENTRYPOINTS)} (got {entry.get('entrypoint')!r}).")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise TokprobError(f"Deployment {name!r}: parameters must be a mapping of "
                               f"parameter names to values (got {parameters!r}).")
        deployments.append(Deployment(
            name=name, flow=ENTRYPOINTS[entry["entrypoint"]], parameters=parameters,
            schedules=[_schedule(name, schedule) for schedule in entry.get("schedules") or []],
            tags=entry.get("tags") or [], description=entry.get("description"),
            version=entry.get("version")))
    return deployments


def _schedule(name: str, schedule: Any) -> Any:
    """One entry of `schedules:` as Prefect reads it: cron, interval (seconds) or rrule,
    with an optional timezone, interval anchor, and `active`."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import construct_schedule
    from pydantic import ValidationError

    if not isinstance(schedule, dict) or set(schedule) - SCHEDULE_FIELDS:
        raise TokprobError(f"Deployment {name!r}: each schedule is a mapping of "
                           f"{', '.join(sorted(SCHEDULE_FIELDS))} (got {schedule!r}).")
    timing = {key: value for key, value in schedule.items() if key != "active"}
    if len(timing.keys() & {"cron", "interval", "rrule"}) != 1:
        raise TokprobError(f"Deployment {name!r}: give each schedule exactly one of cron, "
                           f"interval (seconds) or rrule (got {schedule!r}).")
    if "interval" in timing and not (isinstance(timing["interval"], int | float)
                                     and timing["interval"] > 0):
        raise TokprobError(f"Deployment {name!r}: interval must be a positive number of "
                           f"seconds (got {timing['interval']!r}).")
    if "cron" in timing:
        _check_cron(name, timing["cron"])
    try:
        made = construct_schedule(**timing)
    except ValueError as error:  # a timezone, an rrule, an anchor_date
        reasons = "; ".join(problem["msg"] for problem in error.errors()) \
            if isinstance(error, ValidationError) else str(error)
        raise TokprobError(f"Deployment {name!r}: the schedule {schedule!r} cannot be "
                           f"read: {reasons}.") from None
    return DeploymentScheduleCreate(schedule=made, active=schedule.get("active", True))


def _check_cron(name: str, cron: Any) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:  # pydantic's ValidationError
        raise TokprobError(
            f"Deployment {name!r}: cron {cron!r} is not a cron schedule; give five fields, "
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
    try:
        for key, value in parameters.items():
            check_mapping(key, hints.get(key), value)
    except TokprobError as error:
        raise TokprobError(f"Deployment {name!r}: {error}") from None
    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as error:
        raise TokprobError(f"Deployment {name!r}: {' '.join(str(error).split())}") from None


def serve_deployments(deployments: list[Deployment], data_dir: str) -> None:
    """Serve the deployments until interrupted."""
    from prefect import serve

    served = []
    for deployment in deployments:
        flow = FLOWS[deployment.flow].load()
        parameters = {"data_dir": data_dir} | deployment.parameters
        check_parameters(flow, deployment.name, parameters)
        served.append(flow.to_deployment(
            name=deployment.name, parameters=parameters, schedules=deployment.schedules,
            tags=deployment.tags, description=deployment.description,
            version=deployment.version))
    configure_logging()  # Prefect has set up its log handlers once a flow is loaded
    serve(*served)


def limit_model_loading(api_url: str | None = None) -> None:
    """A concurrency limit of 1 on the stages that load a model (their tag), so that two
    runs never hold two models in one machine's memory at once. A build step of
    prefect.yaml, so that `prefect deploy` sets it on the server it deploys to (the
    profile's); `tokprob server` sets it on its own (`api_url`)."""
    from prefect.client.orchestration import SyncPrefectClient, get_client

    from tasks._stage import MODEL_TAG

    with SyncPrefectClient(api_url) if api_url else get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=MODEL_TAG, concurrency_limit=1)
