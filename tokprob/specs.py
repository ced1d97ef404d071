"""What the user names on the command line: a model spec and a dataset spec.

Model spec: a built-in name (`smollm2-135m-instruct`), a hub id with optional revision
(`EleutherAI/pythia-70m@step1000`), a local folder with `config.json`, or a `.gguf` file.
Dataset spec: a built-in name (`wiki-leads`, `shakespeare`), local `.txt`, `.json`,
`.jsonl` or `.parquet` files (a file, a folder or a glob), or a hub dataset
`name[:config][@revision]` with its split and text column given separately.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tokprob.errors import TokprobError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_DATASET = "wiki-leads"
BUILTIN_MODEL_NAMES = (DEFAULT_MODEL,)
BUILTIN_DATASET_NAMES = ("wiki-leads", "shakespeare")
TEXT_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
COMPRESSED_SUFFIXES = (".gz", ".zst")

_HUB_ID = r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?"
_MODEL_HUB = re.compile(rf"(?P<id>{_HUB_ID})(?:@(?P<rev>[\w./-]+))?")
_DATASET_HUB = re.compile(rf"(?P<id>{_HUB_ID})(?::(?P<config>[\w.-]+))?(?:@(?P<rev>[\w./-]+))?")


@dataclass(frozen=True)
class ModelSpec:
    """A model the user asked for, before anything is loaded."""

    kind: Literal["builtin", "hub", "local", "gguf"]
    location: str
    """Built-in name, hub repository id, or absolute path."""
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = text.strip()
        if not text:
            raise TokprobError("The model spec is empty. " + _MODEL_FORMS)
        if text.lower() in BUILTIN_MODEL_NAMES:
            return cls("builtin", text.lower())
        path = Path(text).expanduser()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise TokprobError(
                    f"Model file {path} is not a .gguf file. Pass a .gguf file or a folder "
                    "holding config.json and the weights (as written by save_pretrained)."
                )
            return cls("gguf", str(path.resolve()))
        if path.is_dir():
            return cls._from_folder(path.resolve())
        if _looks_like_path(text):
            raise TokprobError(f"No model file or folder at {path}. " + _MODEL_FORMS)
        match = _MODEL_HUB.fullmatch(text)
        if not match:
            raise TokprobError(f"Cannot read the model spec {text!r}. " + _MODEL_FORMS)
        return cls("hub", match["id"], match["rev"])

    @classmethod
    def _from_folder(cls, folder: Path) -> ModelSpec:
        if (folder / "config.json").is_file():
            return cls("local", str(folder))
        ggufs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
        if len(ggufs) == 1:
            return cls("gguf", str(ggufs[0]))
        raise TokprobError(
            f"Folder {folder} holds no config.json"
            + (f" and {len(ggufs)} .gguf files; name one of them." if ggufs else ".")
            + " A model folder is what save_pretrained writes."
        )

    def __str__(self) -> str:
        return self.location + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class DatasetSpec:
    """A corpus the user asked for, before anything is read."""

    kind: Literal["builtin", "local", "hub"]
    location: str
    """Built-in name, absolute path or glob, or hub dataset id."""
    config: str | None = None
    revision: str | None = None
    split: str = "train"
    """Split of a hub dataset."""
    text_column: str = "text"
    """Column holding the text (JSON, JSON Lines, Parquet and hub datasets)."""

    @classmethod
    def parse(cls, text: str, split: str = "train", text_column: str = "text") -> DatasetSpec:
        text = text.strip()
        if not text:
            raise TokprobError("The dataset spec is empty. " + _DATASET_FORMS)
        if text.lower() in BUILTIN_DATASET_NAMES:
            return cls("builtin", text.lower())
        path = Path(text).expanduser()
        if path.exists() or glob.has_magic(text):
            local = cls("local", str(path.resolve()) if path.exists() else str(path))
            local_files(local)  # fail now on a folder or glob with no text files
            return replace(local, text_column=text_column)
        if _looks_like_path(text):
            raise TokprobError(f"No dataset file or folder at {path}. " + _DATASET_FORMS)
        match = _DATASET_HUB.fullmatch(text)
        if not match:
            raise TokprobError(f"Cannot read the dataset spec {text!r}. " + _DATASET_FORMS)
        return cls("hub", match["id"], match["config"], match["rev"], split, text_column)

    def __str__(self) -> str:
        text = self.location
        if self.config:
            text += f":{self.config}"
        if self.revision:
            text += f"@{self.revision}"
        return text


def local_files(spec: DatasetSpec) -> list[Path]:
    """The text files a local dataset spec names, sorted; an error if there are none."""
    path = Path(spec.location)
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        candidates = sorted(Path(p) for p in glob.glob(spec.location, recursive=True))
    files = [p.resolve() for p in candidates if _text_suffix(p) in TEXT_SUFFIXES]
    if not files:
        raise TokprobError(
            f"No .txt, .json, .jsonl or .parquet files at {spec.location} (plain, .gz or "
            ".zst). Point --dataset at such a file, a folder holding them, or a glob."
        )
    formats = {file_format(p) for p in files}
    if len(formats) > 1:
        raise TokprobError(
            f"{spec.location} mixes {' and '.join(sorted(formats))} files; point --dataset "
            "at one kind (a glob such as folder/*.txt)."
        )
    return files


def file_format(path: Path) -> Literal["text", "json", "parquet"]:
    """How a file of this suffix holds documents (the name of the datasets loader)."""
    suffix = _text_suffix(path)
    if suffix == ".txt":
        return "text"
    return "parquet" if suffix == ".parquet" else "json"


def _text_suffix(path: Path) -> str:
    """The suffix that says the format, under a .gz or .zst compression suffix."""
    suffixes = [x.lower() for x in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        return suffixes[0] if len(suffixes) == 2 else ""
    return suffixes[-1] if suffixes else ""


def _looks_like_path(text: str) -> bool:
    # A hub id holds one slash; its revision may hold more (refs/pr/3, refs/convert/parquet).
    return (
        text.startswith(("/", "./", "../", "~"))
        or text.lower().endswith((".gguf", *TEXT_SUFFIXES, *COMPRESSED_SUFFIXES))
        or text.split("@", 1)[0].count("/") > 1
    )


_MODEL_FORMS = (
    "A model is a built-in name (smollm2-135m-instruct), a Hugging Face hub id with an "
    "optional revision (EleutherAI/pythia-70m@step1000), a local folder written by "
    "save_pretrained, or a .gguf file."
)
_DATASET_FORMS = (
    "A dataset is a built-in name (wiki-leads, shakespeare), local .txt/.json/.jsonl/"
    ".parquet files, also compressed as .gz or .zst (a file, a folder or a glob), or a "
    "hub dataset name[:config][@revision] "
    "with --split and --text-column."
)


_FILE_SUFFIXES = (".gguf", ".txt", ".json", ".jsonl", ".parquet", ".gz", ".zst")


def short_name(spec: str) -> str:
    """A short label for a model or dataset spec, read from the text alone (no file or
    hub is touched): `EleutherAI/pythia-70m@step1000` → `pythia-70m@step1000`,
    `/models/tiny.gguf` → `tiny`, `wiki-leads` → `wiki-leads`."""
    base, _, revision = spec.strip().rstrip("/").partition("@")
    name = base.rstrip("/").split("/")[-1].split(":")[0]
    while name.lower().endswith(_FILE_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    return (name or base) + (f"@{revision}" if revision else "")
