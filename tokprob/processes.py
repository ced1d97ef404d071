"""Infrastructure, not analysis: whether a process named in a file (a lock, a server
record) is still the one that wrote it: its host, its id, and its start time, so that
a reused process id is not mistaken for the writer."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def start_time(pid: int) -> str | None:
    """When a process started, in clock ticks since boot (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after its end.
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> dict[str, str | int | None]:
    """What identifies the running process in a file other processes read."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": start_time(os.getpid())}


def is_running(host: str | None, pid: int | None, started: str | None = None) -> bool:
    """Whether the process a file names still runs. Another machine's process, or one
    not named yet, counts as running: only this host's processes can be checked."""
    if host != socket.gethostname() or pid is None:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    return started is None or start_time(int(pid)) in (None, started)
