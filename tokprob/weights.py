"""Read a model's output head straight from its saved weights, without building the model.

E (and the bias, where the head has one) is a single tensor of the checkpoint: reading
it costs the size of E, where loading the model costs the whole model. Which tensor it
is comes from the architecture itself: a skeleton of the model is built on the meta
device (no memory) and asked for `get_output_embeddings()`; when the config ties the
output embeddings to the input ones, the checkpoint may hold E only under the input
embedding's name, so that tensor is read.

    head = read_output_head(folder)   # None: no safetensors, load the model instead

The same knowledge decides what a hub download fetches: `files_to_load` picks, from a
repository's file list, what loading the model reads.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tokprob.head import OutputHead
from tokprob.models import quiet_transformers

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class HeadTensors:
    """Where the output head lives among the model's parameters."""

    architecture: str
    """The causal LM class, e.g. GPT2LMHeadModel."""
    weight: str
    """Parameter name that holds E (the input embeddings' when tied)."""
    bias: str | None
    tied: bool


def meta_skeleton(folder: str | Path):
    """The model built from its config on the meta device: every module and parameter
    name, no memory for the weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)


def head_tensors(skeleton) -> HeadTensors | None:
    """The parameter names of E and its bias; None when the model has no linear output
    head (loading it says why)."""
    head = skeleton.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        return None
    tied = bool(getattr(skeleton.config.get_text_config(), "tie_word_embeddings", False))
    source = skeleton.get_input_embeddings() if tied else head
    names = {id(module): name for name, module in skeleton.named_modules(remove_duplicate=False)}
    return HeadTensors(
        architecture=type(skeleton).__name__,
        weight=f"{names[id(source)]}.weight",
        bias=f"{names[id(head)]}.bias" if getattr(head, "bias", None) is not None else None,
        tied=tied,
    )


def safetensors_files(folder: str | Path) -> dict[str, Path]:
    """Tensor name → the safetensors file holding it (sharded or single); empty when the
    folder has no safetensors weights."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SAFETENSORS_FILE
    if not single.is_file():
        return {}
    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def parameter_names(skeleton, stored: list[str]) -> dict[str, str]:
    """Parameter name → the checkpoint tensor loading fills it from, renamed as
    transformers renames on loading (legacy names such as GPT-NeoX's `embed_out`, a
    checkpoint of the base model without its prefix). Tensors that loading converts
    (merges, splits) rather than renames are left out: they are not read as stored."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # transformers 4 renames nothing but the base model's prefix
        return _prefixed_names(skeleton, stored)
    transforms = get_model_conversion_mapping(skeleton)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta = skeleton.state_dict()
    names = {}
    for key in stored:
        name, converted = rename_source_key(key, renamings, converters,
                                            skeleton.base_model_prefix, meta)
        if converted is None:
            names[name] = key
    return names


def _prefixed_names(skeleton, stored: list[str]) -> dict[str, str]:
    meta = skeleton.state_dict()
    prefix = skeleton.base_model_prefix
    return {(key if key in meta or f"{prefix}.{key}" not in meta else f"{prefix}.{key}"): key
            for key in stored}


def read_output_head(folder: str | Path) -> tuple[OutputHead, str] | None:
    """E and the bias as float32 tensors read from the safetensors files, and the
    architecture's name; None when the weights are not (all) there as safetensors."""
    files = safetensors_files(folder)
    skeleton = meta_skeleton(folder)
    where = head_tensors(skeleton)
    if where is None or not files:
        return None
    stored = parameter_names(skeleton, list(files))
    wanted = [where.weight] + ([where.bias] if where.bias else [])
    if any(name not in stored for name in wanted):
        return None
    weight = _read_tensor(files[stored[where.weight]], stored[where.weight])
    bias = None if where.bias is None else _read_tensor(files[stored[where.bias]],
                                                          stored[where.bias])
    return OutputHead(weight=weight, bias=bias, tied=where.tied), where.architecture


def _read_tensor(file: Path, name: str) -> torch.Tensor:
    """One tensor, upcast to float32 (a float32 tensor is returned as read, not copied)."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        return handle.get_tensor(name).float()


CONFIG_AND_TOKENIZER = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
)
"""What transformers reads besides the weights (the model's own folder, not sub-folders)."""


def files_to_load(repo_files: list[str]) -> list[str]:
    """The files of a model repository that loading it reads: config, tokenizer, and the
    safetensors weights, or the PyTorch `.bin` weights where there are no safetensors.
    Other formats (TensorFlow, Flax, ONNX, GGUF, sub-folders) are left out."""
    top = [name for name in repo_files if "/" not in name]

    def matching(*patterns: str) -> list[str]:
        return [name for name in top if any(fnmatch.fnmatch(name, p) for p in patterns)]

    # Sharded or single model weights; a repository may add a consolidated copy.
    weights = (matching("model*.safetensors", SAFETENSORS_INDEX) or matching("*.safetensors")
               or matching("pytorch_model*.bin", "pytorch_model.bin.index.json"))
    return sorted(set(matching(*CONFIG_AND_TOKENIZER) + weights))


def has_files_to_load(folder: Path) -> bool:
    """Whether a model folder holds its config and every weight file loading reads (each
    shard its index names)."""
    present = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    wanted = files_to_load(present)
    weights = [name for name in wanted if name.endswith((".safetensors", ".bin"))]
    for index in (SAFETENSORS_INDEX, "pytorch_model.bin.index.json"):
        if index in wanted:
            shards = json.loads((folder / index).read_text())["weight_map"].values()
            weights += [shard for shard in shards if shard not in present]
    return "config.json" in present and bool(weights) and all(
        (folder / name).is_file() for name in weights)
