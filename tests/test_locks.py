"""Stage locks (SERIALIZABLE isolation): named after their process, released when it
dies, and held while Prefect is still writing them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tasks._stage import LiveHolderLockManager


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
