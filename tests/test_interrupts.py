"""Stopping a command: Ctrl-C and SIGTERM end it within seconds with exit status 130,
keep its finished stages and leave no process of its data folder; after kill -9, the
next command stops the temporary Prefect server the killed one left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import slow_run

from cli.environment import TEMPORARY_SERVERS, prepare_environment, stop_temporary_server
from tokprob.processes import start_time
from tokprob.store import ArtifactStore
from tokprob.workspace import Workspace


def processes_of(folder: Path) -> list[str]:
    """The command lines of the processes whose arguments or environment name a folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            text = command + (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or another user's
        if str(folder).encode() in text:
            found.append(command.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _start_and_wait_for_alpha(tmp_path):
    """The real command in its own session (as a terminal runs it), once α is being
    computed: the corpus and windows stages are finished by then."""
    command, env, data = slow_run(tmp_path)
    env.pop("PREFECT_HOME", None)  # the data folder's own, where its servers are recorded
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((data / "artifacts" / "probabilities").glob(".tmp-*")):
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process, data


@pytest.mark.prefect
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_stops_within_seconds_and_leaves_nothing_running(tmp_path, how):
    process, data = _start_and_wait_for_alpha(tmp_path)
    sent = time.monotonic()
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # the terminal signals the whole group
    else:
        process.terminate()  # kill, a service manager: the command alone
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 10
    assert "interrupted; finished stages are kept" in err
    assert err.count("Traceback") == 0
    assert processes_of(data) == []
    kept = {m.stage for m in ArtifactStore(Workspace.from_env(data).artifacts).manifests()}
    assert {"corpus", "windows"} <= kept


@pytest.mark.prefect
def test_after_kill_9_the_next_command_stops_the_leftover_server(tmp_path):
    process, data = _start_and_wait_for_alpha(tmp_path)
    process.kill()
    process.communicate()
    assert any("uvicorn" in command for command in processes_of(data))  # orphaned
    done = subprocess.run([sys.executable, "-m", "cli.main", "doctor", "--data-dir",
                           str(data)], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PREFECT_HOME"})
    assert done.returncode == 0, done.stderr
    assert "1 temporary Prefect server(s) left by killed commands, stopped" in done.stdout
    assert processes_of(data) == []


def test_a_run_stops_the_server_a_killed_run_of_its_data_folder_left(tmp_path, monkeypatch):
    """Recorded as `tokprob run` records its temporary server; the owner is dead."""
    home = tmp_path / "data" / "prefect"
    (home / TEMPORARY_SERVERS).mkdir(parents=True)
    leftover = subprocess.Popen(["sleep", "60"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = socket.gethostname()
    (home / TEMPORARY_SERVERS / f"{dead.pid}.json").write_text(json.dumps({
        "api_url": "http://127.0.0.1:9/api",
        "owner": {"host": here, "pid": dead.pid, "started": "1"},
        "server": {"host": here, "pid": leftover.pid, "started": start_time(leftover.pid)}}))
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "")  # restored (unset) after the test
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr("cli.environment._api_set_in_process", lambda: False)
    monkeypatch.setattr("cli.environment.start_temporary_server", lambda home, scheduling: "unused")
    try:
        prepare_environment(Workspace.from_env(tmp_path / "data"))
        leftover.wait(timeout=10)  # stopped (and reaped: it is this test's child)
        assert list((home / TEMPORARY_SERVERS).iterdir()) == []
    finally:
        leftover.kill()
        stop_temporary_server()


SWALLOWS_INTERRUPTS = """
import argparse, sys, time
import cli.main as cli

def swallow(args):  # as library code that turns KeyboardInterrupt into something else
    print("ready", flush=True)
    while True:
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            pass

parser = argparse.ArgumentParser()
parser.set_defaults(handler=swallow)
cli.build_parser = lambda: parser
cli.run()
"""


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_command_whose_interrupt_is_swallowed_still_exits_within_seconds(signal_number):
    process = subprocess.Popen([sys.executable, "-c", SWALLOWS_INTERRUPTS],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    sent = time.monotonic()
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert time.monotonic() - sent < 10
    assert err.count("interrupted; finished stages are kept") == 1
