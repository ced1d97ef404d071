"""The Prefect side of a command: a damaged database, and a second `tokprob server` on a
port already in use."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from cli.environment import (
    check_database,
    prepare_environment,
    running_server,
    stop_temporary_server,
)
from tokprob.workspace import Workspace


def test_a_damaged_database_is_moved_aside_with_one_paragraph(tmp_path, capsys):
    database = tmp_path / "prefect.db"
    database.write_bytes(b"this is not a database\n" * 200)
    started = time.monotonic()
    check_database(tmp_path)
    assert time.monotonic() - started < 2
    assert not database.exists()
    (aside,) = tmp_path.glob("prefect.db.damaged-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    err = capsys.readouterr().err
    assert "is damaged" in err and aside.name in err and "artifacts are not affected" in err
    assert err.count("\n") == 1  # one paragraph, one line


def test_a_sound_database_is_left_alone(tmp_path, capsys):
    with sqlite3.connect(tmp_path / "prefect.db") as db:
        db.execute("create table runs (id integer)")
    check_database(tmp_path)
    assert (tmp_path / "prefect.db").exists() and capsys.readouterr().err == ""


@pytest.mark.prefect
def test_a_command_with_a_damaged_database_carries_on_with_a_new_one(tmp_path, monkeypatch):
    home = tmp_path / "data" / "prefect"
    home.mkdir(parents=True)
    (home / "prefect.db").write_bytes(b"garbage" * 1000)
    monkeypatch.delenv("PREFECT_HOME")
    monkeypatch.setenv("PREFECT_API_URL", "")  # restored (unset) after the test
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr("cli.environment._api_set_in_process", lambda: False)
    try:
        prepare_environment(Workspace.from_env(tmp_path / "data"))
        import urllib.request

        with urllib.request.urlopen(f"{os.environ['PREFECT_API_URL']}/health") as answer:
            assert answer.status == 200
    finally:
        stop_temporary_server()
    with sqlite3.connect(home / "prefect.db") as db:  # the new database Prefect made
        assert db.execute("select count(*) from sqlite_master").fetchone()[0] > 0
    assert len(list(home.glob("prefect.db.damaged-*"))) == 1


def test_a_second_server_on_a_port_in_use_refuses_before_its_banner(tmp_path):
    data = tmp_path / "data"
    record = data / "prefect" / "tokprob-server.json"
    record.parent.mkdir(parents=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The record of the server already running on that port, as it wrote it.
        written = json.dumps({"api_url": f"http://127.0.0.1:{port}/api", "pid": 1})
        record.write_text(written)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        done = subprocess.run([sys.executable, "-m", "cli.main", "server", "--port",
                               str(port), "--data-dir", str(data)], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # no banner
    assert f"Cannot listen on 127.0.0.1:{port}" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert record.read_text() == written


def test_a_server_record_that_is_not_json_is_ignored(tmp_path):
    (tmp_path / "tokprob-server.json").write_text("{")
    assert running_server(tmp_path) is None


def test_a_temporary_server_that_does_not_start_is_one_paragraph(tmp_path, monkeypatch):
    from cli.environment import TEMPORARY_SERVERS, start_temporary_server
    from tokprob.errors import TokprobError

    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
    monkeypatch.setattr("cli.environment.sys.executable", "false")  # exits at once
    started = time.monotonic()
    with pytest.raises(TokprobError, match="did not start within 20 s"):
        start_temporary_server(tmp_path)
    assert time.monotonic() - started < 10  # not the whole timeout: the process is gone
    assert list((tmp_path / TEMPORARY_SERVERS).iterdir()) == []


def _without_prefect(environ: dict[str, str], home) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if not k.startswith("PREFECT_")}
    return env | {"HOME": str(home)}


def _profile(home, url: str, active: str = "mine") -> None:
    (home / ".prefect").mkdir(parents=True)
    (home / ".prefect" / "profiles.toml").write_text(
        f'active = "{active}"\n\n[profiles.{active}]\nPREFECT_API_URL = "{url}"\n\n'
        '[profiles.other]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n')


def test_the_user_profile_server_comes_after_the_environment(tmp_path, monkeypatch):
    from cli import environment

    _profile(tmp_path, "http://127.0.0.1:4242/api")
    for name in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(environment, "_api_set_in_process", lambda: False)
    assert environment.user_profile_api() == ("mine", "http://127.0.0.1:4242/api")
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert environment.user_profile_api() == ("other", "http://127.0.0.1:9/api")
    monkeypatch.delenv("PREFECT_PROFILE")
    workspace = Workspace.from_env(tmp_path / "data")
    prepare_environment(workspace)
    # The user's own Prefect home stays in charge: their profile, their API key.
    assert "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ
    assert "active profile 'mine'" in os.environ[environment.SERVER_CHOICE]
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:5151/api")
    prepare_environment(workspace)
    assert os.environ[environment.SERVER_CHOICE].startswith("http://127.0.0.1:5151/api")


@pytest.mark.prefect
def test_a_run_lands_on_the_server_the_user_profile_names(prefect_api, tiny_models,
                                                          tiny_text_dir, tmp_path):
    from conftest import last_flow_run_id
    from prefect.client.orchestration import get_client

    home = tmp_path / "home"
    _profile(home, prefect_api)
    data = tmp_path / "data"
    command = [sys.executable, "-m", "cli.main", "run", "encoding", "--model",
               str(tiny_models["gpt2"]), "--dataset", str(tiny_text_dir), "--data-dir",
               str(data), "--window", "16", "--heldout-fraction", "0.2", "--max-tokens",
               "160", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=_without_prefect(dict(os.environ), home))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Prefect server: {prefect_api} (the active profile 'mine'" in done.stderr
    assert not (data / "prefect").exists()  # no temporary server, no database of its own
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(last_flow_run_id(data))
    assert flow_run.state.is_completed() and flow_run.name.startswith("encoding-gpt2-")


def test_the_console_drops_asyncios_tracebacks_of_cancelled_callbacks_only():
    """What Ctrl-C on `tokprob serve` cancels is not an error; any other failure in an
    asyncio callback still reaches the console, and so does a TokprobError's message."""
    import asyncio
    import io
    import logging

    from cli.environment import configure_logging
    from tokprob.errors import TokprobError

    console = io.StringIO()
    handler = logging.StreamHandler(console)
    logging.getLogger().addHandler(handler)
    try:
        configure_logging()
        log = logging.getLogger("asyncio")
        for error in (asyncio.CancelledError(), ValueError("a real failure")):
            try:
                raise error
            except BaseException:
                log.error("Exception in callback after %s", type(error).__name__,
                          exc_info=True)
        logging.getLogger("prefect").error("task failed", exc_info=(
            TokprobError, TokprobError("bad input"), None))
    finally:
        logging.getLogger().removeHandler(handler)
    said = console.getvalue()
    assert "CancelledError" not in said
    assert "Exception in callback after ValueError" in said
    assert "ValueError: a real failure" in said  # its traceback is kept
    assert "task failed" in said
    assert "Traceback" not in said.split("ValueError: a real failure")[1]  # not for TokprobError
