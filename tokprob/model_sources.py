"""Where a model comes from: a model spec (tokprob.specs.ModelSpec) resolved to a local
folder that transformers can load, and fingerprinted for cache keys. A hub snapshot
(pinned to the commit the revision points at), a local folder, or a GGUF file dequantized
once and cached as safetensors.

    source = resolve_model(ModelSpec.parse("smollm2-135m-instruct"), Workspace.from_env())
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from tokprob import assets
from tokprob.errors import TokprobError
from tokprob.hashing import sha256_file, sha256_files
from tokprob.model_export import readable_by_others
from tokprob.models import quiet_transformers
from tokprob.retry import network_error, with_retries
from tokprob.specs import BUILTIN_DATASET_NAMES, BUILTIN_MODEL_NAMES, ModelSpec
from tokprob.workspace import Workspace

log = logging.getLogger("tokprob")

SOURCE_MARKER = "tokprob-source.json"


class ModelSource(BaseModel):
    """A resolved model: where to load it from and what it is, for cache keys."""

    model_config = ConfigDict(frozen=True)

    spec: str
    """What the user asked for."""
    path: str
    """Local folder with config.json, weights and tokenizer."""
    fingerprint: str
    """Identity of the weights: hub id and commit, or a content hash."""
    display_name: str


def resolve_model(spec: ModelSpec, workspace: Workspace) -> ModelSource:
    """Make the model loadable from a local folder and fingerprint it."""
    if spec.kind == "builtin":
        gguf = assets.builtin_model_file(spec.location, workspace.downloads)
        folder, fingerprint = materialize_gguf(gguf, workspace.models)
        display = assets.BUILTIN_MODELS[spec.location].display_name
        return ModelSource(spec=str(spec), path=str(folder), fingerprint=fingerprint,
                           display_name=display)
    if spec.kind == "gguf":
        folder, fingerprint = materialize_gguf(Path(spec.location), workspace.models)
        return ModelSource(spec=str(spec), path=str(folder), fingerprint=fingerprint,
                           display_name=Path(spec.location).stem)
    if spec.kind == "local":
        folder = Path(spec.location)
        return ModelSource(spec=str(spec), path=str(folder),
                           fingerprint="local:" + folder_fingerprint(folder),
                           display_name=folder.name)
    folder, commit = hub_snapshot(spec.location, spec.revision, repo_type="model")
    return ModelSource(spec=str(spec), path=str(folder),
                       fingerprint=f"hub:{spec.location}@{commit}",
                       display_name=spec.location.split("/")[-1]
                       + (f"@{spec.revision}" if spec.revision else ""))


def hub_snapshot(repo_id: str, revision: str | None, repo_type: str) -> tuple[Path, str]:
    """A local snapshot of a hub repository and the commit it is at.

    The local cache is tried first, so a revision fetched earlier works offline.
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kind = "dataset" if repo_type == "dataset" else "model"
    try:
        folder = _cached_snapshot(repo_id, revision, repo_type)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        try:
            folder = with_retries(lambda: _download(repo_id, revision, repo_type),
                                  network_error, f"downloading {repo_id}")
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
            builtin = BUILTIN_MODEL_NAMES if kind == "model" else BUILTIN_DATASET_NAMES
            raise TokprobError(
                f"Cannot get the {kind} {repo_id!r}"
                + (f" at revision {revision!r}" if revision else "")
                + f": it is not in the local Hugging Face cache, and {_hub_failure(error)}. "
                f"The built-in {kind}s are {', '.join(builtin)}. If it is a local {kind}, "
                "pass its path (it does not exist here); if it is on the hub, check the name "
                "and revision, or download it where the hub is reachable and pass the folder."
            ) from None
    folder_path = Path(folder)
    return folder_path, folder_path.name


def _cached_snapshot(repo_id: str, revision: str | None, repo_type: str) -> str:
    """The cached snapshot of the revision. A model fetched by `_download` holds only the
    files loading reads, which the cache calls incomplete: it is complete for tokprob."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    from tokprob.weights import has_files_to_load

    try:
        return snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                                 local_files_only=True)
    except IncompleteSnapshotError as error:
        if repo_type == "model" and has_files_to_load(Path(error.snapshot_path)):
            return error.snapshot_path
        raise


def _download(repo_id: str, revision: str | None, repo_type: str) -> str:
    """Fetch a repository at the revision: for a model only the files loading reads
    (tokprob.weights.files_to_load), for a dataset all of it."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from tokprob.weights import files_to_load

    try:
        info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type)
    except HfHubHTTPError:
        raise
    except Exception as error:  # the transport's own errors (no connection, offline mode)
        raise LocalEntryNotFoundError(str(error)) from error
    wanted = None
    if repo_type == "model":
        wanted = files_to_load([file.rfilename for file in info.siblings or []])
    # By the revision's name, not its commit: the cache then records which commit the
    # name points at, and finds it offline next time.
    return snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                             allow_patterns=wanted)


def folder_fingerprint(folder: Path) -> str:
    """Content hash of a model folder (every file but hidden ones)."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sha256_files(files, root=folder)[:24]


def materialize_gguf(gguf: Path, models_dir: Path) -> tuple[Path, str]:
    """Dequantize a GGUF model once and cache it as a safetensors folder.

    Returns the folder and the fingerprint (the GGUF file's hash). Later loads take a
    fraction of a second instead of dequantizing again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, __version__

    digest = sha256_file(gguf)
    # transformers does the dequantization, so its version is part of what the weights are.
    fingerprint = f"gguf:{digest[:24]}:transformers-{__version__}"
    folder = models_dir / f"{gguf.stem}-{digest[:12]}-transformers-{__version__}"
    marker = folder / SOURCE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest:
        return folder, fingerprint

    log.info("dequantizing %s once (cached as safetensors in %s)", gguf.name, folder)
    models_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=models_dir, prefix=".gguf-"))
    try:
        with quiet_transformers():
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            except (ValueError, OSError, KeyError) as error:
                raise TokprobError(
                    f"transformers cannot read {gguf} as a GGUF causal LM ({error}). "
                    "Check that the file is complete and its architecture is one transformers "
                    "supports for GGUF."
                ) from None
            # Saving as plain safetensors needs the GGUF quantizer gone: the weights are
            # already dequantized in memory.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
        (scratch / SOURCE_MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
        readable_by_others(scratch)
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder, fingerprint


def _hub_failure(error: Exception) -> str:
    """Why the hub did not provide a repository, in a few words."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(error, LocalEntryNotFoundError):
        return f"the hub cannot be reached from here ({root})"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    return f"the hub answered: {first_line.rstrip('.')}"
