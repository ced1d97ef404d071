"""Reading the output head straight from saved weights, against loading the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, build_tokenizer, tiny_config

from tasks._io import read_embeddings, write_embeddings
from tokprob.models import load_model, output_head
from tokprob.store import ArtifactRef
from tokprob.weights import SAFETENSORS_INDEX, read_output_head


def assert_same_head(folder) -> None:
    read = read_output_head(folder)
    assert read is not None
    head, architecture = read
    model = load_model(folder)
    loaded = output_head(model)
    assert architecture == type(model).__name__
    assert head.tied == loaded.tied
    assert head.weight.dtype == torch.float32
    torch.testing.assert_close(head.weight, loaded.weight, rtol=0, atol=0)
    assert (head.bias is None) == (loaded.bias is None)
    if loaded.bias is not None:
        torch.testing.assert_close(head.bias, loaded.bias, rtol=0, atol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_head_read_from_safetensors_equals_the_loaded_models(tiny_models, architecture):
    assert_same_head(tiny_models[architecture])


@pytest.mark.parametrize("architecture", ["gpt2", "phi"])
def test_head_read_from_sharded_safetensors(tmp_path, architecture):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    build_tokenizer().save_pretrained(tmp_path)
    shards = set(json.loads((tmp_path / SAFETENSORS_INDEX).read_text())["weight_map"].values())
    assert len(shards) > 2
    assert_same_head(tmp_path)


def test_base_model_checkpoint_names_without_prefix(tmp_path):
    """The original GPT-2 checkpoint names its tensors `wte.weight`, not
    `transformer.wte.weight`."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({name.removeprefix("transformer."): tensor for name, tensor in tensors.items()},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    head, _ = read_output_head(tmp_path)
    torch.testing.assert_close(head.weight, model.transformer.wte.weight.detach())


def test_bfloat16_weights_are_read_as_float32(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama")).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    head, _ = read_output_head(tmp_path)
    assert head.weight.dtype == torch.float32
    torch.testing.assert_close(head.weight, model.lm_head.weight.detach().float(), rtol=0, atol=0)


def test_bin_only_folder_is_not_read(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert read_output_head(tmp_path) is None


def test_embeddings_written_in_row_groups_read_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks._io.EMBEDDING_ROWS_PER_GROUP", 7)
    matrix = np.random.default_rng(0).standard_normal((30, 5)).astype(np.float32)
    write_embeddings(tmp_path / "embeddings.parquet", matrix)
    read = read_embeddings(ArtifactRef(stage="embeddings", key="k", path=str(tmp_path)))
    np.testing.assert_array_equal(read, matrix)


def test_embeddings_stage_loads_a_bin_only_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from tasks.embeddings import head_of
    from tokprob.models import ModelSource

    model = AutoModelForCausalLM.from_config(tiny_config("phi"))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    head, architecture = head_of(ModelSource(spec="x", path=str(tmp_path), fingerprint="x",
                                             display_name="x"))
    assert architecture == "PhiForCausalLM"
    torch.testing.assert_close(head.weight, model.lm_head.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(head.bias, model.lm_head.bias.detach(), rtol=0, atol=0)
