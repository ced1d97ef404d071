"""The process environment of tokprob's commands: Prefect settings, the server to use,
and logging (all before or just after Prefect is imported)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flows.labels import SERVER_CHOICE
from tokprob.errors import TokprobError
from tokprob.processes import is_running, start_time, this_process
from tokprob.workspace import Workspace


def prepare_environment(workspace: Workspace, temporary_server: bool = True,
                        scheduling: bool = False) -> None:
    """Settings that must be in place before Prefect is imported, and the Prefect server
    to run against, in this order:

    1. PREFECT_API_URL in the environment;
    2. the API URL of the active profile in the user's own Prefect home (made by
       `prefect config set PREFECT_API_URL=…` or `prefect cloud login`): their server or
       Prefect Cloud, with the profile's other settings (an API key);
    3. a server started by `tokprob server` for this data folder, while it answers;
    4. (with `temporary_server`) a temporary one for this command, stopped when it ends;
       with `scheduling` (`tokprob serve`) it also runs Prefect's services, the scheduler
       among them, which an API-only server leaves out.

    Without 1 or 2, Prefect's home is the data folder's (`data/prefect`) unless
    PREFECT_HOME is exported. The choice is kept in TOKPROB_PREFECT_SERVER for the run's
    first log line.
    """
    profile = None if "PREFECT_API_URL" in os.environ else user_profile_api()
    if profile is None:
        os.environ.setdefault("PREFECT_HOME", str(workspace.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tokprob")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "PREFECT_API_URL" in os.environ:
        _chose(os.environ["PREFECT_API_URL"], "PREFECT_API_URL in the environment")
    elif profile is not None:
        name, url = profile
        _chose(url, f"the active profile {name!r} of {profiles_path()}")
    elif not _api_set_in_process():
        _choose_server(temporary_server, scheduling)


def _choose_server(temporary_server: bool, scheduling: bool) -> None:
    """Steps 3 and 4 of prepare_environment."""
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    stop_leftover_servers(home)
    if url := running_server(home):
        os.environ["PREFECT_API_URL"] = url
        _chose(url, "the `tokprob server` of this data folder")
        if reports := _record(home).get("reports_url"):
            os.environ[REPORTS_URL] = reports
    elif temporary_server:
        os.environ["PREFECT_API_URL"] = start_temporary_server(home, scheduling)
        _chose(os.environ["PREFECT_API_URL"], "a temporary server for this command (no "
               "PREFECT_API_URL, no profile naming a server, no `tokprob server` running)")


def settings_follow_environment() -> None:
    """Prefect reads its settings from the environment once, when first imported. A
    command that imports it before prepare_environment (`tokprob serve` checks schedules
    with Prefect's own parser, so that a mistake stops it before any work) calls this
    after: else it would run without the server chosen there, on an ephemeral one of
    Prefect's that never starts scheduled runs, under ~/.prefect. Not done for every
    caller: it replaces Prefect's process-wide settings."""
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _chose(url: str, why: str) -> None:
    os.environ[SERVER_CHOICE] = f"{url} ({why})"


def profiles_path() -> Path:
    """The user's Prefect profiles file: PREFECT_PROFILES_PATH, else profiles.toml in
    their exported PREFECT_HOME or in ~/.prefect, where Prefect itself looks."""
    if explicit := os.environ.get("PREFECT_PROFILES_PATH"):
        return Path(explicit).expanduser()
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    return Path(home).expanduser() / "profiles.toml"


def user_profile_api() -> tuple[str, str] | None:
    """(name, API URL) of the user's active Prefect profile, when it names a server."""
    import tomllib

    path = profiles_path()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    settings = profiles.get("profiles", {}).get(name, {})
    url = settings.get("PREFECT_API_URL") if isinstance(settings, dict) else None
    return (name, str(url)) if url else None


def _api_set_in_process() -> bool:
    """Whether Prefect, already imported by the caller (a test, a notebook), has an API
    to talk to through its settings rather than the environment."""
    if "prefect.settings" not in sys.modules:
        return False
    from prefect.settings import get_current_settings

    return get_current_settings().api.url is not None


SERVER_RECORD = "tokprob-server.json"
TEMPORARY_SERVERS = "temporary-servers"
"""Folder of the Prefect home with one record per running temporary server, named after
the command that started it, so that a later command can stop one whose command was
killed."""


def running_server(prefect_home: Path) -> str | None:
    """The API address of the `tokprob server` of this Prefect home, if it answers."""
    url = _record(prefect_home).get("api_url")
    return url if url and _answers(url) else None


REPORTS_URL = "TOKPROB_REPORTS_URL"
"""Environment variable with the base URL `tokprob server` serves reports from."""


def _record(prefect_home: Path) -> dict[str, Any]:
    """The `tokprob server` record of this Prefect home; empty when there is none."""
    try:
        record = json.loads((prefect_home / SERVER_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _answers(api_url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


_started: dict[str, Any] = {}
"""The temporary server this process started: its process and record."""


def start_temporary_server(prefect_home: Path, scheduling: bool = False) -> str:
    """A Prefect server (API only, no UI) for this command, on a free loopback port;
    with `scheduling`, also with Prefect's services (the scheduler, late runs, …), which
    its ephemeral mode leaves out to start faster.

    It runs in a process group of its own, so that Ctrl-C in the terminal reaches this
    command alone: the command stops the flow first and then the server, which must
    answer until the flow has recorded how it ended.
    """
    check_database(prefect_home)
    folder = prefect_home / TEMPORARY_SERVERS
    folder.mkdir(exist_ok=True)
    log_path = folder / f"{os.getpid()}.log"
    timeout = float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    for _attempt in range(3):  # another program may take the free port first
        port = _free_port()
        with log_path.open("wb") as server_log:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
                 str(port), "--log-level", "error", "--lifespan", "on"],
                env=os.environ | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_FINAL": "1"}
                | ({} if scheduling else {"PREFECT__SERVER_EPHEMERAL": "1"}),
                stdin=subprocess.DEVNULL, stdout=server_log, stderr=server_log,
                start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        record = folder / f"{os.getpid()}.json"
        record.write_text(json.dumps({
            "api_url": url, "owner": this_process(),
            "server": {"host": socket.gethostname(), "pid": process.pid,
                       "started": start_time(process.pid)}}))
        _started.update(process=process, record=record, log=log_path)
        atexit.register(stop_temporary_server)
        if wait_until_up(process, url, timeout):
            return url
        said = log_path.read_text(errors="replace").strip().splitlines()
        stop_temporary_server()
        if "address already in use" not in " ".join(said).lower():
            break
    raise TokprobError(
        f"The temporary Prefect server did not start within {timeout:.0f} s; its last "
        f"words: {' '.join(said[-3:]) or 'none'}. Check that {prefect_home} is writable, "
        "or start `tokprob server` in another terminal and run again.")


def wait_until_up(process: subprocess.Popen, url: str, timeout: float) -> bool:
    """Whether the server `process` answers at `url` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(url):
            return True
        time.sleep(0.1)
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_temporary_server() -> bool:
    """Whether this command runs against a temporary server it started."""
    return bool(_started)


def stop_temporary_server() -> None:
    """Stop the temporary server this process started, if any (idempotent)."""
    if not _started:
        return
    _send_pending_logs()
    stop_group(_started["process"].pid)
    _started["process"].wait()
    _started["record"].unlink(missing_ok=True)
    _started["log"].unlink(missing_ok=True)
    _started.clear()


LOG_DRAIN_SECONDS = 2.0
"""How long the command waits at its end for Prefect to send its queued log lines."""


def _send_pending_logs() -> None:
    """Prefect sends log lines to the API from a background worker: the last ones of a
    run are still queued when the flow returns. They go out while the server is up;
    stopped first, the command would end with 'Error logging to API'."""
    handlers = sys.modules.get("prefect.logging.handlers")
    if handlers is not None:
        handlers.APILogWorker.drain_all(timeout=LOG_DRAIN_SECONDS)


def stop_group(pid: int, grace: float = 5.0, first: int = signal.SIGTERM) -> None:
    """`first` (SIGTERM) to a server's process group; SIGKILL for what is left after
    `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, first)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A killed child of this process stays a zombie until waited for: that is not alive.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pgid, os.WNOHANG) != (0, 0):
            return False
    return True


def stop_leftover_servers(prefect_home: Path) -> list[str]:
    """Stop the temporary servers of this Prefect home whose command was killed (kill -9
    leaves them running); the API addresses of those stopped."""
    stopped = []
    for record in sorted((prefect_home / TEMPORARY_SERVERS).glob("*.json")):
        try:
            entry = json.loads(record.read_text())
            owner, server = entry["owner"], entry["server"]
        except (OSError, ValueError, KeyError):
            record.unlink(missing_ok=True)
            continue
        if is_running(**owner):
            continue  # a command that is still running: its server is in use
        if is_running(**server):
            stop_group(server["pid"])
            stopped.append(entry["api_url"])
            print(f"tokprob: stopped a temporary Prefect server left running by a killed "
                  f"command ({entry['api_url']})", file=sys.stderr)
        record.unlink(missing_ok=True)
        record.with_suffix(".log").unlink(missing_ok=True)
    return stopped


DATABASE = "prefect.db"


def check_database(prefect_home: Path) -> None:
    """A Prefect database that SQLite cannot read is moved aside, with a warning: it only
    records runs, the artifacts do not depend on it, and Prefect starts a new one."""
    database = prefect_home / DATABASE
    if not database.is_file() or database.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        aside = database.with_name(f"{DATABASE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        database.replace(aside)
        for journal in ("-wal", "-shm", "-journal"):
            database.with_name(DATABASE + journal).unlink(missing_ok=True)
        print(f"tokprob: warning: the Prefect database {database} is damaged ({error}); "
              f"moved it to {aside.name} and starting a new one. The artifacts are not "
              "affected; the run history before now is in the moved file.", file=sys.stderr)


class _DropExpectedTracebacks(logging.Filter):
    """Prefect logs a failed task with its traceback; for a TokprobError the message alone
    says everything, and the command prints it once more at the end. Ctrl-C on `tokprob
    serve` cancels the tasks of Prefect's runner, and asyncio logs each cancelled callback
    as an error with a traceback, though cancelling them is what was asked: dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name == "asyncio" and isinstance(error, asyncio.CancelledError):
            return False
        if isinstance(error, TokprobError):
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


