"""Content hashes for files, folders and JSON-able values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22
# (path, size, mtime_ns) -> sha256: a file is hashed once per process unless it changes.
_file_memo: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, remembered for the process while size and mtime hold."""
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key in _file_memo:
        return _file_memo[memo_key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    _file_memo[memo_key] = digest.hexdigest()
    return _file_memo[memo_key]


def forget_file(path: Path) -> None:
    """Drop a file from the memo (after it was rewritten in place)."""
    resolved = str(path.resolve())
    for memo_key in [k for k in _file_memo if k[0] == resolved]:
        del _file_memo[memo_key]


def sha256_json(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_files(paths: list[Path], root: Path | None = None) -> str:
    """One hash over several files: their names (relative to root) and contents."""
    entries = []
    for path in sorted(paths):
        name = str(path.relative_to(root)) if root else path.name
        entries.append([name, sha256_file(path)])
    return sha256_json(entries)
