"""What a flow run says about itself in the Prefect UI: its name, its tags, and the
server it runs on."""

from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Any

from tokprob.specs import short_name

log = logging.getLogger("tokprob")

SERVER_CHOICE = "TOKPROB_PREFECT_SERVER"
"""Environment variable naming the server chosen and why (set by the command line), for
the run's first log line."""


def run_subjects(parameters: dict[str, Any]) -> tuple[list[str], str]:
    """Short names of the models (or checkpoints) and of the dataset a flow run is about."""
    models = [parameters["model"]] if parameters.get("model") else []
    models += list(parameters.get("models") or []) + list(parameters.get("checkpoints") or [])
    corpus = parameters.get("corpus")
    # A Corpus when called from Python, its fields as a mapping when a deployment runs.
    dataset = (corpus.get("dataset") if isinstance(corpus, dict)
               else getattr(corpus, "dataset", None)) or ""
    return [short_name(str(m)) for m in models], short_name(str(dataset)) if dataset else ""


def run_name() -> str:
    """A flow run's name: its flow, model and dataset, and a short unique suffix
    (`encoding-smollm2-135m-instruct-wiki-leads-3f9a1c`), so the runs list says what each
    run is about. Used as the flows' `flow_run_name`."""
    from prefect.runtime import flow_run

    models, dataset = run_subjects(dict(flow_run.parameters or {}))
    about = [*models[:1], f"+{len(models) - 1}" if len(models) > 1 else "", dataset]
    name = "-".join(part for part in [flow_run.flow_name or "run", *about] if part)
    return f"{re.sub(r'[^A-Za-z0-9_.@+-]+', '-', name)[:80]}-{uuid.uuid4().hex[:6]}"


def run_tags(parameters: dict[str, Any]) -> list[str]:
    """`model:<name>` for each model and `dataset:<name>`: filters in the Prefect UI."""
    models, dataset = run_subjects(parameters)
    return sorted({f"model:{m}" for m in models} | ({f"dataset:{dataset}"} if dataset else set()))


def tag_run() -> None:
    """Tag the running flow run by model and dataset, however it was started, and say in
    its first log line which Prefect server it runs on and why."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    log.info("Prefect server: %s", os.environ.get(SERVER_CHOICE) or PREFECT_API_URL.value())
    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        wanted = sorted(set(current.tags) | set(run_tags(dict(flow_run.parameters or {}))))
        if wanted != sorted(current.tags):
            client.update_flow_run(flow_run.id, tags=wanted)
