"""Loading a causal LM and its tokenizer: dtype, device (and device_map for a model larger
than one device), and checks of config.json and the context length before anything loads.
Where a model comes from is tokprob.model_sources; its output head, tokprob.head.

    model = load_model(source.path, dtype="auto", device="auto")
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from tokprob.errors import TokprobError

log = logging.getLogger("tokprob")

log = logging.getLogger("tokprob")


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes tokprob runs a model in (`auto`: the one it was saved in)."""


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
