"""Stage locks (SERIALIZABLE isolation): named after their process, released when it
dies, and held while Prefect is still writing them. Each member of Prefect's
`FileSystemLockManager` that the lock manager overrides or relies on is checked against
the installed Prefect, so that an upgrade that changes one fails here."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from inspect import isfunction, signature
from pathlib import Path

import pytest
from prefect.locking.filesystem import FileSystemLockManager

from tasks.locks import LiveHolderLockManager
from tokprob.processes import start_time

OVERRIDDEN = ("acquire_lock", "_get_lock_info", "is_locked", "wait_for_lock")


def _parameters(method) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults: what a caller relies on (annotations are spelled
    differently across Python versions)."""
    return [(p.name, p.kind, p.default) for p in signature(method).parameters.values()]


def test_the_overridden_members_are_the_ones_checked_here():
    overridden = {name for name, member in vars(LiveHolderLockManager).items()
                  if isfunction(member) and not name.startswith("__")
                  and hasattr(FileSystemLockManager, name)}
    assert overridden == set(OVERRIDDEN)


@pytest.mark.parametrize("member", OVERRIDDEN)
def test_each_override_keeps_the_signature_prefect_calls_it_with(member):
    assert callable(getattr(FileSystemLockManager, member, None)), (
        f"Prefect's FileSystemLockManager no longer has {member}")
    assert _parameters(getattr(LiveHolderLockManager, member)) == _parameters(
        getattr(FileSystemLockManager, member))


def test_the_private_members_relied_on_are_still_there(tmp_path):
    """The lock file's path by key, and the cache of lock infos that a taken-over lock
    is dropped from."""
    assert [name for name, _, _ in _parameters(FileSystemLockManager._lock_path_for_key)
            ] == ["self", "key"]
    locks = FileSystemLockManager(tmp_path)
    assert locks._lock_path_for_key("stage-key") == tmp_path / "stage-key.lock"
    assert locks._locks == {}
    assert locks.lock_files_directory == tmp_path
    locks.acquire_lock("stage-key", holder="run-a")
    assert locks._locks["stage-key"]["holder"] == "run-a"


def test_prefect_reads_an_empty_lock_file_as_an_error_the_override_turns_into_held(tmp_path):
    """Why `_get_lock_info` is overridden: Prefect creates a lock file, then writes it."""
    Path(tmp_path / "stage-key.lock").touch()
    with pytest.raises(ValueError):
        FileSystemLockManager(tmp_path)._get_lock_info("stage-key", use_cache=False)
    info = LiveHolderLockManager(tmp_path)._get_lock_info("stage-key", use_cache=False)
    assert info["holder"] is None and info["abandoned"] is False
    assert LiveHolderLockManager(tmp_path)._get_lock_info("other-key") is None


def test_a_lock_names_its_host_and_process(tmp_path):
    locks = LiveHolderLockManager(tmp_path)
    assert locks.acquire_lock("stage-key", holder="run-a")
    info = json.loads(Path(locks._lock_path_for_key("stage-key")).read_text())
    assert (info["holder"], info["host"], info["pid"]) == ("run-a", socket.gethostname(),
                                                            os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage-key.lock"]
    assert LiveHolderLockManager(tmp_path).is_locked("stage-key")  # another process's view
    assert not LiveHolderLockManager(tmp_path).is_lock_holder("stage-key", "run-b")


def test_the_lock_of_a_dead_process_is_released(tmp_path):
    locks = LiveHolderLockManager(tmp_path)
    locks.acquire_lock("stage-key", holder="killed-run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    path = Path(locks._lock_path_for_key("stage-key"))
    path.write_text(json.dumps(json.loads(path.read_text()) | {"pid": int(dead.stdout)}))
    later = LiveHolderLockManager(tmp_path)
    assert not later.is_locked("stage-key")
    assert not path.exists()
    assert later.acquire_lock("stage-key", holder="next-run", acquire_timeout=1)


def test_a_lock_file_still_being_written_counts_as_held(tmp_path):
    locks = LiveHolderLockManager(tmp_path)
    Path(locks._lock_path_for_key("stage-key")).touch()  # created, not yet written
    assert locks.is_locked("stage-key")
    assert not locks.is_lock_holder("stage-key", "run-b")
    assert not locks.acquire_lock("stage-key", holder="run-b", acquire_timeout=0.3)


def _planted_lock(folder: Path, key: str, **info) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.lock"
    path.write_text(json.dumps({"holder": "some-run", "expiration": None} | info))
    return path


def test_a_lock_file_left_empty_is_released_after_the_grace_period(tmp_path):
    """What a full disk leaves: the file created, its writer dead before writing it."""
    path = tmp_path / "stage-key.lock"
    path.touch()
    stale = time.time() - 2 * LiveHolderLockManager.EMPTY_GRACE_SECONDS
    os.utime(path, (stale, stale))
    locks = LiveHolderLockManager(tmp_path)
    assert not locks.is_locked("stage-key")
    assert locks.acquire_lock("stage-key", holder="next-run", acquire_timeout=1)


def test_a_lock_whose_process_id_now_names_another_process_is_taken_over(tmp_path):
    """After a restart the id may belong to a live process that is no tokprob run: its
    start time tells them apart."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        assert start_time(other.pid) is not None
        _planted_lock(tmp_path, "reused", host=socket.gethostname(), pid=other.pid,
                      started="1")
        _planted_lock(tmp_path, "held", host=socket.gethostname(), pid=other.pid,
                      started=start_time(other.pid))
        locks = LiveHolderLockManager(tmp_path)
        assert not locks.is_locked("reused")
        assert locks.acquire_lock("reused", holder="next-run", acquire_timeout=1)
        assert locks.is_locked("held")
    finally:
        other.kill()
        other.wait()


def test_a_waiting_run_says_what_it_waits_for_and_on_whom(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(LiveHolderLockManager, "REPORT_EVERY_SECONDS", 0.3)
    LiveHolderLockManager(tmp_path).acquire_lock("stage-key", holder="first-run")
    with caplog.at_level(logging.INFO, logger="tokprob"):
        assert not LiveHolderLockManager(tmp_path).wait_for_lock("stage-key", timeout=1.0)
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) >= 3
    assert all(f"stage-key: waiting for another run to finish this stage (process "
               f"{os.getpid()} on {socket.gethostname()})" in w for w in waits)


def test_doctor_lists_locks_and_clears_only_the_stale_ones(tmp_path, capsys):
    from cli.main import main

    locks = tmp_path / "data" / "locks"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = _planted_lock(locks, "stale-key", host=socket.gethostname(), pid=int(dead.stdout))
    empty = locks / "empty-key.lock"
    empty.touch()
    os.utime(empty, (time.time() - 60, time.time() - 60))
    live = _planted_lock(locks, "live-key", host=socket.gethostname(), pid=os.getpid(),
                         started=start_time(os.getpid()))
    assert main(["doctor", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "3 stage lock(s)" in out and "2 stale, cleared; 1 held" in out
    assert f"live-key  process {os.getpid()} on {socket.gethostname()} (held)" in out
    assert not stale.exists() and not empty.exists() and live.exists()
