"""Infrastructure, not analysis: content hashes for files, folders and JSON-able values."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22
# (path, size, mtime_ns) -> sha256: a file is hashed once per process unless it changes.
_file_memo: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path, store: Path | None = None) -> str:
    """sha256 of a file's bytes, remembered for the process while size and mtime hold,
    and across processes in the JSON file `store` when one is given (a corpus of
    gigabytes is read once, not on every run)."""
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key in _file_memo:
        return _file_memo[memo_key]
    stored = _stored_hashes(store)
    if "|".join(map(str, memo_key)) in stored:
        _file_memo[memo_key] = stored["|".join(map(str, memo_key))]
        return _file_memo[memo_key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    _file_memo[memo_key] = digest.hexdigest()
    if store is not None:
        _store_hash(store, "|".join(map(str, memo_key)), _file_memo[memo_key])
    return _file_memo[memo_key]


def _stored_hashes(store: Path | None) -> dict[str, str]:
    try:
        return json.loads(store.read_text()) if store is not None else {}
    except (OSError, ValueError):  # absent, or torn by a crash: hash again
        return {}


def _store_hash(store: Path, memo_key: str, digest: str) -> None:
    """Add one hash to the store, written whole to a temporary file and renamed, so a
    concurrent reader sees the old or the new store, never half of one."""
    entries = _stored_hashes(store) | {memo_key: digest}
    store.parent.mkdir(parents=True, exist_ok=True)
    scratch = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    scratch.write_text(json.dumps(entries))
    os.replace(scratch, store)


def sha256_json(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_files(paths: list[Path], root: Path | None = None,
                 store: Path | None = None) -> str:
    """One hash over several files: their names (relative to root) and contents."""
    entries = []
    for path in sorted(paths):
        name = str(path.relative_to(root)) if root else path.name
        entries.append([name, sha256_file(path, store)])
    return sha256_json(entries)
