"""Infrastructure, not analysis: a content-addressed artifact store with atomic writes
and verified reads.

Each stage output lives in `artifacts/<stage>/<key>/`, where the key hashes the stage's
parameters, the content of its inputs and the version of its code. The folder holds
Parquet (and PNG) files plus `manifest.json`, which records every file's sha256. A
folder is built under a temporary name and renamed into place only once complete, so a
killed run leaves either nothing or a whole artifact; a damaged file fails its hash
check and the artifact counts as missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from tokprob.errors import TokprobError
from tokprob.hashing import sha256_file, sha256_json

log = logging.getLogger("tokprob")

MANIFEST = "manifest.json"
STORE_FORMAT = 1


class ArtifactRef(BaseModel):
    """A small, hashable pointer to a stored artifact, passed between stages."""

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str
    path: str
    """The artifact's folder."""

    def file(self, name: str) -> Path:
        return Path(self.path) / name


class FileEntry(BaseModel):
    sha256: str
    size: int
    rows: int | None = None


class Manifest(BaseModel):
    """What an artifact folder holds and how it was made."""

    format: int = STORE_FORMAT
    stage: str
    key: str
    created: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    """Input name -> the identity it had (upstream stage, key and content hash, or a
    source fingerprint)."""
    code_version: str
    files: dict[str, FileEntry]
    content_sha256: str
    """Hash of all file hashes: what downstream keys depend on."""
    summary: dict[str, Any] = {}
    """Key numbers of the stage, for listings and reports."""


class ArtifactWriter:
    """Collects the files of one artifact in a temporary folder."""

    def __init__(self, directory: Path, key: str, partial: Path) -> None:
        self.directory = directory
        self.key = key
        self.partial = partial
        """A folder for the stage's own progress (checkpoints), kept where a killed run
        leaves it and deleted once the artifact is published."""
        self.summary: dict[str, Any] = {}

    def partial_path(self, name: str) -> Path:
        """Where to keep progress that survives an interruption of this artifact's
        stage (the folder is created)."""
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial / name

    def path(self, name: str) -> Path:
        """Where to write a file of this artifact (inside the temporary folder); `name` may
        hold sub-folders, which are created."""
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_table(self, name: str, table: pa.Table | pd.DataFrame) -> Path:
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        target = self.path(name)
        pq.write_table(table, target)
        return target


class ArtifactStore:
    """The artifacts below one workspace root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial(self, stage: str, key: str) -> Path:
        """The progress kept for an unfinished artifact (see ArtifactWriter.partial)."""
        return self.root / stage / f".partial-{key}"

    def ref(self, stage: str, key: str) -> ArtifactRef:
        return ArtifactRef(stage=stage, key=key, path=str(self.directory(stage, key)))

    def verify(self, stage: str, key: str) -> Manifest | None:
        """The artifact's manifest if every file is present and matches its hash, else None."""
        directory = self.directory(stage, key)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_text())
        except ValueError:
            log.warning("artifact %s/%s has an unreadable manifest; recomputing it", stage, key)
            return None
        for name, entry in manifest.files.items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != entry.size:
                log.warning("artifact %s/%s: %s is missing or truncated; recomputing",
                            stage, key, name)
                return None
            if sha256_file(path) != entry.sha256:
                log.warning("artifact %s/%s: %s fails its hash check; recomputing",
                            stage, key, name)
                return None
        return manifest

    def manifest(self, ref: ArtifactRef) -> Manifest:
        """The verified manifest of an artifact a stage depends on."""
        manifest = self.verify(ref.stage, ref.key)
        if manifest is None:
            raise TokprobError(
                f"The {ref.stage} artifact at {ref.path} is missing or damaged. Run the flow "
                f"again: the damaged stage is detected and recomputed."
            )
        return manifest

    @contextlib.contextmanager
    def write(
        self,
        stage: str,
        key: str,
        params: dict[str, Any],
        inputs: dict[str, Any],
        code_version: str,
    ) -> Iterator[ArtifactWriter]:
        """Build an artifact in a temporary folder; publish it atomically on success."""
        stage_dir = self.root / stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_temporaries(stage_dir)
        temporary = stage_dir / f".tmp-{key}-{_owner_tag()}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        writer = ArtifactWriter(temporary, key, self.partial(stage, key))
        try:
            yield writer
            manifest = _seal(temporary, stage, key, params, inputs, code_version, writer.summary)
            _publish(temporary, self.directory(stage, key))
            shutil.rmtree(writer.partial, ignore_errors=True)
        except OSError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TokprobError(
                    f"The disk holding {self.root} is full: the {stage} artifact could not be "
                    "written (nothing half-written was kept). Free some space, or move the "
                    "store with --data-dir or TOKPROB_DATA, and run again: finished stages "
                    "are reused."
                ) from None
            raise
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        log.debug("stored %s/%s (%s)", stage, key, manifest.content_sha256[:12])

    def manifests(self) -> list[Manifest]:
        """Every complete artifact in the store (unverified: for listings)."""
        found = []
        for manifest_path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            with contextlib.suppress(ValueError, OSError):
                found.append(Manifest.model_validate_json(manifest_path.read_text()))
        return found


def _seal(
    directory: Path,
    stage: str,
    key: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    code_version: str,
    summary: dict[str, Any],
) -> Manifest:
    files = {}
    # Sub-folders count too: a stage may store whole model folders (checkpoints).
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rows = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else None
        name = path.relative_to(directory).as_posix()
        files[name] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size, rows=rows)
    manifest = Manifest(
        stage=stage,
        key=key,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        params=params,
        inputs=inputs,
        code_version=code_version,
        files=files,
        content_sha256=sha256_json({name: entry.sha256 for name, entry in files.items()}),
        summary=json.loads(json.dumps(summary, default=_json_default)),
    )
    manifest_path = directory / MANIFEST
    with manifest_path.open("w") as handle:
        handle.write(manifest.model_dump_json(indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    return manifest


def _publish(temporary: Path, final: Path) -> None:
    """Rename the finished folder into place, replacing a damaged or older copy."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        temporary.rename(final)
    except OSError:
        # Another process published the same key in between: its copy is equivalent.
        shutil.rmtree(temporary, ignore_errors=True)


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_abandoned_temporaries(stage_dir: Path) -> None:
    """Delete temporary folders left by killed processes of this host."""
    host = socket.gethostname()
    for leftover in stage_dir.glob(".tmp-*"):
        parts = leftover.name.split("-")
        # .tmp-<key>-<host...>-<pid>-<nonce>: the host may itself contain dashes.
        if len(parts) < 5 or "-".join(parts[2:-2]) != host or not parts[-2].isdigit():
            continue
        if not _pid_alive(int(parts[-2])):
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in stage_dir.glob(".trash-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    # tolist, not item: it turns numpy scalars and arrays of any size into JSON values.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
