"""The process environment of tokprob's commands: Prefect settings, the server to use,
and logging (all before or just after Prefect is imported)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokprob.errors import TokprobError
from tokprob.workspace import Workspace


def prepare_environment(workspace: Workspace) -> None:
    """Settings that must be in place before Prefect is imported.

    Without PREFECT_API_URL, a server started by `tokprob server` for this workspace is
    used when it answers; otherwise each command starts a temporary one.
    """
    os.environ.setdefault("PREFECT_HOME", str(workspace.prefect_home))
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tokprob")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "PREFECT_API_URL" not in os.environ and (url := running_server(home)):
        os.environ["PREFECT_API_URL"] = url


SERVER_RECORD = "tokprob-server.json"


def running_server(prefect_home: Path) -> str | None:
    """The API address of the `tokprob server` of this Prefect home, if it answers."""
    import urllib.request

    record = prefect_home / SERVER_RECORD
    if not record.is_file():
        return None
    url = json.loads(record.read_text())["api_url"]
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return url if answer.status == 200 else None
    except OSError:
        return None


class _DropExpectedTracebacks(logging.Filter):
    """Prefect logs a failed task with its traceback; for a TokprobError the message alone
    says everything, and the command prints it once more at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TokprobError):
            record.exc_info = None
            record.exc_text = None
        return True


class _OnceOnTheConsole(logging.Filter):
    """A TokprobError is reported by the task, the task's final state, the flow and the
    flow's final state: the run log in the UI keeps all four, the terminal none, since
    the command ends by printing the error once, as one paragraph."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "TokprobError" not in record.getMessage()


def configure_logging() -> None:
    """tokprob's own progress lines at INFO (Prefect forwards them to the run's log);
    TokprobErrors without tracebacks, and on the terminal only once. Called once the
    flow module is imported: Prefect has set up its log handlers by then."""
    logging.getLogger("tokprob").setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in
               ("prefect", "prefect.task_runs", "prefect.flow_runs")] + [logging.getLogger()]
    for handler in {handler for logger in loggers for handler in logger.handlers}:
        handler.addFilter(_DropExpectedTracebacks())
        if isinstance(handler, logging.StreamHandler):  # the console, not the API log
            handler.addFilter(_OnceOnTheConsole())


