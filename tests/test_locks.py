"""Stage locks (SERIALIZABLE isolation): named after their process, released when it
dies, and held while Prefect is still writing them."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tasks._stage import LiveHolderLockManager
from tokprob.processes import start_time


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
    from flows.cli import main

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
