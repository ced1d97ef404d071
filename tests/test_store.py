"""The content-addressed artifact store: atomic writes, verified reads, damage detection."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tokprob import hashing, store
from tokprob.errors import TokprobError
from tokprob.store import MANIFEST, ArtifactStore

PARAMS = {"window": 16, "seed": 0}
INPUTS = {"corpus": {"fingerprint": "files:abc"}}


def _write(artifacts: ArtifactStore, key: str = "k1", values=(1.0, 2.0, 3.0), stage="alpha",
           params=PARAMS):
    with artifacts.write(stage, key, params, INPUTS, "v1") as out:
        out.write_table("table.parquet", pd.DataFrame({"x": list(values)}))
        out.path("notes.txt").write_text("hello")
        out.summary.update(rows=len(values), mean=sum(values) / len(values))
    return artifacts.verify(stage, key)


def _content_hash(folder: Path, names: list[str]) -> str:
    """The manifest's content hash, recomputed from the bytes: sha256 of the canonical JSON
    of {file name: sha256 of the file}."""
    entries = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


@pytest.fixture
def artifacts(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_write_then_verify_returns_the_manifest(artifacts):
    manifest = _write(artifacts)
    assert manifest is not None
    folder = artifacts.directory("alpha", "k1")
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "notes.txt", "table.parquet"]
    assert (manifest.stage, manifest.key, manifest.code_version) == ("alpha", "k1", "v1")
    assert manifest.params == PARAMS and manifest.inputs == INPUTS
    assert manifest.summary == {"rows": 3, "mean": 2.0}
    table = manifest.files["table.parquet"]
    assert table.rows == 3 and manifest.files["notes.txt"].rows is None
    assert table.size == (folder / "table.parquet").stat().st_size
    assert table.sha256 == hashlib.sha256((folder / "table.parquet").read_bytes()).hexdigest()
    assert manifest.content_sha256 == _content_hash(folder, ["notes.txt", "table.parquet"])
    assert pq.read_table(folder / "table.parquet").column("x").to_pylist() == [1.0, 2.0, 3.0]
    assert artifacts.manifest(artifacts.ref("alpha", "k1")) == manifest
    assert artifacts.ref("alpha", "k1").file("notes.txt").read_text() == "hello"


def test_numpy_values_in_the_summary_become_json(artifacts):
    import numpy as np

    with artifacts.write("alpha", "np", PARAMS, INPUTS, "v1") as out:
        out.path("a.txt").write_text("a")
        out.summary.update(r2=np.float64(0.5), ks=np.arange(3), n=np.int64(7))
    assert artifacts.verify("alpha", "np").summary == {"r2": 0.5, "ks": [0, 1, 2], "n": 7}


def test_content_hash_follows_content_not_creation_time_or_params(artifacts, monkeypatch):
    first = _write(artifacts, key="a")

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(store, "dt", SimpleNamespace(datetime=Later, timezone=dt.timezone,
                                                     UTC=dt.UTC))
    same = _write(artifacts, key="b", params={"other": 1})
    changed = _write(artifacts, key="c", values=(1.0, 2.0, 3.5))
    assert same.created.startswith("2031-01-02T03:04:05") and same.created != first.created
    assert same.content_sha256 == first.content_sha256
    assert changed.content_sha256 != first.content_sha256


def _damage_truncate(folder: Path) -> None:
    path = folder / "table.parquet"
    path.write_bytes(path.read_bytes()[:-10])


def _damage_flip_byte(folder: Path) -> None:
    path = folder / "table.parquet"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    # Damage comes later than the write, so the file's mtime moves even where the file
    # system's clock is coarse (the hash memo trusts an unchanged size and mtime).
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))


def _damage_delete(folder: Path) -> None:
    (folder / "notes.txt").unlink()


def _damage_manifest(folder: Path) -> None:
    text = (folder / MANIFEST).read_text()
    (folder / MANIFEST).write_text(text[: len(text) // 2])


def _damage_manifest_fields(folder: Path) -> None:
    (folder / MANIFEST).write_text(json.dumps({"stage": "alpha"}))


def _damage_remove_manifest(folder: Path) -> None:
    (folder / MANIFEST).unlink()


DAMAGE = [_damage_truncate, _damage_flip_byte, _damage_delete, _damage_manifest,
          _damage_manifest_fields, _damage_remove_manifest]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.removeprefix("_damage_"))
def test_a_damaged_artifact_counts_as_missing(artifacts, damage):
    assert _write(artifacts) is not None
    damage(artifacts.directory("alpha", "k1"))
    assert artifacts.verify("alpha", "k1") is None
    with pytest.raises(TokprobError, match=r"alpha artifact at .*k1 is missing or damaged"):
        artifacts.manifest(artifacts.ref("alpha", "k1"))


def test_a_byte_flip_that_keeps_size_and_mtime_is_caught_by_a_new_process(artifacts):
    """Bit rot changes neither size nor mtime; a fresh process (empty hash memo) sees it."""
    _write(artifacts)
    path = artifacts.directory("alpha", "k1") / "table.parquet"
    before = path.stat()
    _damage_flip_byte(path.parent)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    hashing._file_memo.clear()  # what a new process starts with
    assert artifacts.verify("alpha", "k1") is None


def test_a_missing_artifact_is_an_error_naming_it(artifacts):
    assert artifacts.verify("alpha", "nothing") is None
    with pytest.raises(TokprobError, match=r"alpha artifact .* missing or damaged"):
        artifacts.manifest(artifacts.ref("alpha", "nothing"))


def test_an_exception_inside_write_leaves_nothing(artifacts):
    with pytest.raises(RuntimeError, match="boom"), \
            artifacts.write("alpha", "k1", PARAMS, INPUTS, "v1") as out:
        out.path("half.txt").write_text("half")
        raise RuntimeError("boom")
    stage_dir = artifacts.root / "alpha"
    assert list(stage_dir.iterdir()) == []
    assert artifacts.verify("alpha", "k1") is None
    assert artifacts.manifests() == []


def test_a_keyboard_interrupt_inside_write_leaves_nothing(artifacts):
    with pytest.raises(KeyboardInterrupt), \
            artifacts.write("alpha", "k1", PARAMS, INPUTS, "v1") as out:
        out.path("half.txt").write_text("half")
        raise KeyboardInterrupt
    assert list((artifacts.root / "alpha").iterdir()) == []


def test_a_new_write_replaces_a_damaged_artifact(artifacts):
    _write(artifacts)
    folder = artifacts.directory("alpha", "k1")
    _damage_flip_byte(folder)
    (folder / "stray.txt").write_text("left from the damaged copy")
    assert artifacts.verify("alpha", "k1") is None
    manifest = _write(artifacts, values=(4.0, 5.0))
    assert manifest is not None and manifest.files["table.parquet"].rows == 2
    assert not (folder / "stray.txt").exists()
    assert pq.read_table(folder / "table.parquet").column("x").to_pylist() == [4.0, 5.0]
    assert sorted(p.name for p in (artifacts.root / "alpha").iterdir()) == ["k1"]


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    pid = int(child.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


@pytest.mark.parametrize("host", ["vm", "node-7-rack-2"])
def test_leftovers_of_dead_processes_on_this_host_are_removed(artifacts, monkeypatch, host):
    monkeypatch.setattr(store.socket, "gethostname", lambda: host)
    stage_dir = artifacts.root / "alpha"
    dead = stage_dir / f".tmp-k9-{host}-{_dead_pid()}-deadbeef"
    live = stage_dir / f".tmp-k9-{host}-{os.getpid()}-0badf00d"
    other_host = stage_dir / f".tmp-k9-elsewhere-{_dead_pid()}-12345678"
    trash = stage_dir / ".trash-k1-abcdef12"
    for folder in (dead, live, other_host, trash):
        folder.mkdir(parents=True)
        (folder / "part.txt").write_text("partial")
    assert _write(artifacts) is not None
    assert not dead.exists() and not trash.exists()
    assert live.exists() and other_host.exists()
    assert sorted(p.name for p in stage_dir.iterdir()) == sorted(
        [live.name, other_host.name, "k1"])


def test_manifests_lists_complete_artifacts_only(artifacts):
    _write(artifacts, key="a")
    _write(artifacts, key="b", stage="beta")
    _write(artifacts, key="c")
    _damage_manifest(artifacts.directory("alpha", "c"))  # unreadable: skipped
    (artifacts.root / "alpha" / ".tmp-x-vm-1-aaaa").mkdir()  # not an artifact
    listed = sorted((m.stage, m.key) for m in artifacts.manifests())
    assert listed == [("alpha", "a"), ("beta", "b")]


def test_manifests_of_an_empty_store(tmp_path):
    assert ArtifactStore(tmp_path / "none").manifests() == []


def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from tokprob.errors import TokprobError
    from tokprob.store import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(TokprobError, match="is full"), \
            store.write("alpha", "k1", {}, {}, "v") as out:
        out.path("a.bin").write_bytes(b"x")
        no_space()
    assert store.verify("alpha", "k1") is None
    assert not list((tmp_path / "artifacts" / "alpha").iterdir())


def test_unwritable_data_folder_is_a_clear_error(tmp_path):
    from tokprob.errors import TokprobError
    from tokprob.workspace import Workspace

    blocker = tmp_path / "a-file"  # a file where a folder should be: fails even for root
    blocker.write_text("")
    with pytest.raises(TokprobError, match="Cannot write to the data folder"):
        Workspace.from_env(blocker / "data").ensure_writable()
    Workspace.from_env(tmp_path / "fine").ensure_writable()
    assert (tmp_path / "fine").is_dir()


def test_progress_of_an_unfinished_artifact_outlives_a_failure_and_goes_once_published(
        artifacts):
    with pytest.raises(RuntimeError), artifacts.write("alpha", "k1", PARAMS, INPUTS, "v1") as out:
        out.partial_path("sums.npz").write_text("progress")
        raise RuntimeError("killed")
    kept = artifacts.partial("alpha", "k1") / "sums.npz"
    assert kept.read_text() == "progress"
    with artifacts.write("alpha", "k1", PARAMS, INPUTS, "v1") as out:
        assert out.partial_path("sums.npz").read_text() == "progress"
        out.write_table("table.parquet", pd.DataFrame({"x": [1.0]}))
    assert not artifacts.partial("alpha", "k1").exists()
    assert artifacts.verify("alpha", "k1") is not None


def test_a_forced_stage_starts_over_without_the_interrupted_runs_progress(workspace,
                                                                         monkeypatch):
    from tasks._stage import STAGES, register, run_stage

    # Recorded so that the registration is undone after the test: no stray stage.
    monkeypatch.setitem(STAGES, "progress-demo", STAGES.get("progress-demo"))
    register("progress-demo", "tasks.embeddings")
    seen = []

    def interrupted(out):
        out.partial_path("sums.npz").write_text("progress")
        raise RuntimeError("killed")

    def compute(out):
        seen.append(out.partial.exists())
        out.write_table("table.parquet", pd.DataFrame({"x": [1.0]}))

    with pytest.raises(RuntimeError):
        run_stage("progress-demo", workspace, {"value": 1}, interrupted)
    run_stage("progress-demo", workspace, {"value": 1}, compute, force=True)
    assert seen == [False]
