"""Writing a derived model (steered, pruned, pre-trained): a new folder, complete under its
name or absent, readable as the user's umask asks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tokprob.errors import TokprobError
from tokprob.models import quiet_transformers


def new_model_folder(out: str | Path) -> Path:
    """The absolute folder to write a derived model to; an error if it holds anything."""
    target = Path(out).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise TokprobError(f"--out {target} is a file; give the path of a new or empty "
                           "folder to write the model to.")
    if target.exists() and any(target.iterdir()):
        raise TokprobError(f"{target} exists and is not empty; choose another --out "
                           "(tokprob never overwrites a folder).")
    return target


def save_model_folder(model, tokenizer, target: Path, record_name: str,
                      record: dict) -> None:
    """save_pretrained the model and tokenizer plus a JSON record, all or nothing: the
    folder appears complete under its name, or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        with quiet_transformers():
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
        (scratch / record_name).write_text(json.dumps(record, indent=2))
        readable_by_others(scratch)
        if target.exists():
            target.rmdir()
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def readable_by_others(folder: Path) -> None:
    """Give a finished folder the permissions the user's umask asks for: mkdtemp makes it
    private (0700), and transformers writes the weights through a private temporary file."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
