"""Resolve, load and take apart a causal LM: its output embeddings E, bias and tying.

A model spec (tokprob.specs.ModelSpec) resolves to a local folder that transformers can
load: a hub snapshot (pinned to the commit the revision points at), a local folder, or a
GGUF file dequantized once and cached as safetensors. The output head is then read off
the loaded model: E = `get_output_embeddings().weight` (raw weights, never centred or
folded), the bias if any, and whether E is the input embedding matrix (tied).

    source = resolve_model(ModelSpec.parse("smollm2-135m-instruct"), Workspace.from_env())
    model = load_model(source.path)
    head = output_head(model)
    logits = head_logits(final_hidden_states(model, input_ids), head)
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from tokprob import assets
from tokprob.errors import TokprobError
from tokprob.hashing import sha256_file, sha256_files
from tokprob.retry import network_error, with_retries
from tokprob.specs import BUILTIN_DATASET_NAMES, BUILTIN_MODEL_NAMES, ModelSpec
from tokprob.workspace import Workspace

log = logging.getLogger("tokprob")

SOURCE_MARKER = "tokprob-source.json"
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes tokprob runs a model in (`auto`: the one it was saved in)."""


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


@dataclass(frozen=True)
class OutputHead:
    """The LM head: logits = hidden @ weight.T + bias."""

    weight: torch.Tensor
    """E: (vocab, d)."""
    bias: torch.Tensor | None
    """b: (vocab,), or None."""
    tied: bool
    """Whether E is the input embedding matrix itself."""

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]


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


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM for inference (eval mode, no gradients needed). dtype `auto` is
    the model's own (see model_dtype). A model too large for the free memory of one GPU
    is spread over every GPU (and the CPU if need be) with device_map="auto"."""
    from transformers import AutoModelForCausalLM

    torch_dtype = TORCH_DTYPES[resolve_dtype(path, dtype)]
    target = resolve_device(device)
    spread = target.type == "cuda" and needs_device_map(
        weights_bytes(path, torch_dtype), torch.cuda.mem_get_info(target)[0])
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, **({"device_map": "auto"} if spread else {}))
    except (ValueError, OSError, KeyError) as error:
        raise TokprobError(
            f"transformers cannot load a causal LM from {path} ({error}). tokprob needs a "
            "model with a language-modelling head (AutoModelForCausalLM)."
        ) from None
    except pickle.UnpicklingError:
        raise TokprobError(
            f"The weights in {path} (a pickled .bin checkpoint) hold Python objects besides "
            "tensors, which torch refuses to load (weights_only: unpickling them could run "
            "code). Use a safetensors copy of the model, or convert it where you trust "
            "the file: from_pretrained(folder).save_pretrained(folder) writes "
            "model.safetensors."
        ) from None
    if spread:
        log.info("the model is larger than the free memory of %s: spread over the devices "
                 "by device_map='auto'", target)
        return model.eval()
    return model.to(target).eval()


def resolve_dtype(path: str | Path, dtype: str) -> str:
    """The dtype `--dtype` asks for: `auto` is the model's own."""
    return model_dtype(path) if dtype == "auto" else dtype


def model_dtype(path: str | Path) -> str:
    """The dtype a model was saved in, from its config (`dtype`, or `torch_dtype` in older
    configs); float32 when the config names none or one tokprob does not run."""
    config_file = Path(path) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    text_config = config.get("text_config") or {}
    named = (config.get("dtype") or config.get("torch_dtype") or text_config.get("dtype")
             or text_config.get("torch_dtype"))
    return named if named in TORCH_DTYPES else "float32"


DEVICE_FILL = 0.85
"""Share of a GPU's free memory the weights may take and still leave room for the
activations and logits of a batch."""


def needs_device_map(weight_bytes: int, free_bytes: int) -> bool:
    """Whether weights of this size must be spread over several devices."""
    return weight_bytes > DEVICE_FILL * free_bytes


def weights_bytes(path: str | Path, dtype: torch.dtype) -> int:
    """Bytes the model's weights take in `dtype`: the saved weight files' size scaled from
    the dtype they were saved in."""
    files = [p for pattern in ("*.safetensors", "*.bin") for p in Path(path).glob(pattern)]
    saved = TORCH_DTYPES[model_dtype(path)].itemsize
    return sum(f.stat().st_size for f in files) * dtype.itemsize // saved


def model_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's config.json, checked before anything loads it: JSON, and an
    architecture (model_type) that this version of transformers knows."""
    import transformers
    from transformers import CONFIG_MAPPING

    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f"line {error.lineno}: {error.msg}" if isinstance(
            error, json.JSONDecodeError) else "it is not UTF-8 text"
        raise TokprobError(
            f"The model configuration {path} is not valid JSON ({where}). It should be "
            "the config.json that save_pretrained writes: restore it, or get the model "
            "again."
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in CONFIG_MAPPING:
        raise TokprobError(
            f"The model configuration {path} names the architecture "
            f"model_type={model_type!r}, which transformers {transformers.__version__} "
            "does not know. Upgrade transformers (pip install -U transformers) if the "
            "architecture is newer, or fix model_type in config.json."
        )
    return config


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
"""Where configurations of the various architectures give the context length."""


def check_window_fits(config: dict[str, Any], window: int, model: str) -> None:
    """Refuse windows longer than the model's context (positions past it do not exist)."""
    context = next((config[name] for name in CONTEXT_FIELDS
                    if isinstance(config.get(name), int)), None)
    if context is not None and window > context:
        raise TokprobError(
            f"--window {window} is longer than the context of the model {model} "
            f"({context} tokens, {next(n for n in CONTEXT_FIELDS if n in config)} in its "
            f"config.json). Use --window {context} or less."
        )


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    model_config(path)  # the tokenizer reads config.json too, and blames itself
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(path)


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


def resolve_device(device: str) -> torch.device:
    """`auto` means CUDA when available, else Apple's MPS when available, else CPU; an
    unavailable CUDA or MPS is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available()
                            else "mps" if torch.backends.mps.is_available() else "cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise TokprobError("--device mps asks for Apple's Metal GPU (MPS), which this "
                           "machine lacks; use --device cpu or auto.")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise TokprobError(f"Unknown --device {device!r}; use cpu, cuda, cuda:N or auto.") \
            from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TokprobError(f"--device {device} asks for CUDA, which this machine lacks; "
                           "use --device cpu.")
    return resolved


def output_head(model) -> OutputHead:
    """E, its bias and whether it is tied to the input embeddings."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TokprobError(
            f"{type(model).__name__} has no linear output embedding (LM head); tokprob "
            "analyses causal LMs whose logits are hidden @ E.T (+ b)."
        )
    inputs = model.get_input_embeddings()
    tied = inputs is not None and inputs.weight.data_ptr() == head.weight.data_ptr()
    bias = getattr(head, "bias", None)
    return OutputHead(weight=head.weight.detach(),
                      bias=None if bias is None else bias.detach(), tied=tied)


def float32_head(head: OutputHead) -> OutputHead:
    """The head upcast to float32, for float32 hidden states (a bfloat16 model's edits
    evaluated as the saved weights compute them)."""
    return OutputHead(weight=head.weight.float(),
                      bias=None if head.bias is None else head.bias.float(), tied=head.tied)


def untie_output_embeddings(model) -> None:
    """Give the LM head its own copy of E, so that editing it leaves the input embeddings
    alone (steering and pruning change only the output side, paper §3 and §4)."""
    if not output_head(model).tied:
        return
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False


def final_hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states after the final norm: (batch, positions, d)."""
    return model.base_model(input_ids=input_ids).last_hidden_state


def head_logits(hidden: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """float32 logits hidden @ E.T + b, in the model's dtype until the upcast."""
    # A model spread over devices (device_map) may end its last layer on another one.
    logits = hidden.to(head.weight.device) @ head.weight.T
    if head.bias is not None:
        logits = logits + head.bias
    return logits.float()


def check_head(model, head: OutputHead, vocab_size: int) -> None:
    """Fail unless logits rebuilt from final hidden states and E equal the model's.

    tokprob's stages rely on logits = h @ E.T + b; a model that scales or caps its logits
    after the head would make every stage silently wrong.
    """
    device = head.weight.device
    probe = torch.arange(min(8, vocab_size), device=device).unsqueeze(0)
    with torch.inference_mode():
        expected = model(input_ids=probe).logits.float()
        rebuilt = head_logits(final_hidden_states(model, probe), head)
    if not torch.isfinite(expected).all():
        raise TokprobError(
            "The model's logits contain NaN or infinity on a short probe input. The weights "
            "are likely damaged, or the dtype overflows (try --dtype float32)."
        )
    tolerance = 1e-3 if head.weight.dtype == torch.float32 else 5e-2
    scale = expected.abs().max().clamp_min(1.0)
    if (expected - rebuilt).abs().max() > tolerance * scale:
        raise TokprobError(
            f"{type(model).__name__} does not compute its logits as final hidden states @ "
            "E.T (+ bias): it transforms them after the head (scaling or soft-capping). "
            "tokprob's analysis assumes a plain linear LM head."
        )


class quiet_transformers:
    """Silence transformers' progress bars and advisory warnings while loading."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
