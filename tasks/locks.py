"""Stage locks that a killed process cannot leave behind (SERIALIZABLE isolation).

`LiveHolderLockManager` overrides members of Prefect's `FileSystemLockManager`, private
ones included (`_get_lock_info`, and it relies on `_lock_path_for_key` and `_locks`):
tests/test_locks.py checks each against the installed Prefect, so that an upgrade that
changes one fails there rather than in a run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from prefect.locking.filesystem import FileSystemLockManager

from tokprob.processes import is_running, this_process

log = logging.getLogger("tokprob")


class LiveHolderLockManager(FileSystemLockManager):
    """File locks that a killed process cannot leave behind.

    Under SERIALIZABLE isolation a second run of the same stage waits for the first and
    then reads its cached result, so two simultaneous runs compute each stage once. A
    plain file lock never expires, so a run killed while holding one would block every
    later run; these lock files also name the host, process and process start time of
    their holder, and a lock counts as released once that process is gone (or its id
    belongs to a later process), or when it was left empty (its writer died between
    creating and writing it, as on a full disk).
    """

    EMPTY_GRACE_SECONDS = 1.0
    """How long an empty lock file counts as being written rather than abandoned."""
    REPORT_EVERY_SECONDS = 30.0
    """How often a run waiting on a lock says so."""

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout)
        if acquired:
            path = Path(self._lock_path_for_key(key))
            info = json.loads(path.read_text())
            # Replaced, not rewritten in place: a reader never sees an empty lock file.
            scratch = path.with_name(f".{path.name}.{os.getpid()}")
            scratch.write_text(json.dumps(info | this_process()))
            scratch.replace(path)
        return acquired

    def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
        try:
            return super()._get_lock_info(key, use_cache=use_cache)
        except ValueError:
            # Prefect creates a lock file and then writes it: read in between, it is
            # empty and held all the same, unless it stayed empty past the grace period.
            path = Path(self._lock_path_for_key(key))
            return {"holder": None, "expiration": None, "path": path,
                    "abandoned": _older_than(path, self.EMPTY_GRACE_SECONDS)}

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        info = self._get_lock_info(key, use_cache=use_cache)
        if info is not None and is_stale(info):
            log.warning("%s: the run holding its lock has died; taking over", key)
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=use_cache)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait as Prefect does, saying every REPORT_EVERY_SECONDS what for and on whom."""
        waited, next_report = 0.0, 0.0
        while self.is_locked(key, use_cache=False):
            if timeout and waited >= timeout:
                return False
            if waited >= next_report:
                next_report += self.REPORT_EVERY_SECONDS
                log.info("%s: waiting for another run to finish this stage (%s); "
                         "`tokprob doctor` lists the locks", key,
                         describe_holder(self._get_lock_info(key, use_cache=False)))
            waited += 0.1
            time.sleep(0.1)
        return True

    def locks(self) -> list[dict[str, Any]]:
        """Every lock file below the folder: its key, holder and whether it is stale."""
        found = []
        for path in sorted(self.lock_files_directory.glob("*.lock")):
            info = self._get_lock_info(path.stem, use_cache=False)
            if info is not None:
                found.append({"key": path.stem, "holder": describe_holder(info),
                              "stale": is_stale(info), "path": str(path)})
        return found


def is_stale(info: dict[str, Any]) -> bool:
    """Whether a lock's holder is gone: a dead or replaced process, or an abandoned file."""
    return info.get("abandoned", False) or not is_running(
        info.get("host"), info.get("pid"), info.get("started"))


def describe_holder(info: dict[str, Any] | None) -> str:
    if info is None:
        return "released"
    if info.get("pid") is None:
        return "an empty lock file" if info.get("abandoned") else "a run starting up"
    return f"process {info['pid']} on {info.get('host')}"


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False
