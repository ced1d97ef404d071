"""Reading the output head straight from saved weights, against loading the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, build_tokenizer, tiny_config

from tasks.catalog import read_embeddings, write_embeddings
from tokprob.head import output_head
from tokprob.models import load_model
from tokprob.store import ArtifactRef
from tokprob.weights import SAFETENSORS_INDEX, files_to_load, read_output_head


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
    monkeypatch.setattr("tasks.catalog.EMBEDDING_ROWS_PER_GROUP", 7)
    matrix = np.random.default_rng(0).standard_normal((30, 5)).astype(np.float32)
    write_embeddings(tmp_path / "embeddings.parquet", matrix)
    read = read_embeddings(ArtifactRef(stage="embeddings", key="k", path=str(tmp_path)))
    np.testing.assert_array_equal(read, matrix)


def test_embeddings_stage_loads_a_bin_only_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from tasks.embeddings import head_of
    from tokprob.model_sources import ModelSource

    model = AutoModelForCausalLM.from_config(tiny_config("phi"))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    head, architecture = head_of(ModelSource(spec="x", path=str(tmp_path), fingerprint="x",
                                             display_name="x"))
    assert architecture == "PhiForCausalLM"
    torch.testing.assert_close(head.weight, model.lm_head.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(head.bias, model.lm_head.bias.detach(), rtol=0, atol=0)


GPT2_REPO = [  # the file list of openai-community/gpt2
    ".gitattributes", "64-8bits.tflite", "64-fp16.tflite", "64.tflite", "README.md",
    "config.json", "flax_model.msgpack", "generation_config.json", "merges.txt",
    "model.safetensors", "onnx/config.json", "onnx/decoder_model.onnx", "pytorch_model.bin",
    "rust_model.ot", "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.json",
]


def test_hub_download_takes_config_tokenizer_and_safetensors_only():
    assert files_to_load(GPT2_REPO) == [
        "config.json", "generation_config.json", "merges.txt", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json", "vocab.json"]


def test_hub_download_takes_every_shard_and_not_a_consolidated_copy():
    repo = ["config.json", "tokenizer.model", "tokenizer_config.json",
            "consolidated.safetensors", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
            "original/params.json"]
    assert files_to_load(repo) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json"]


def test_hub_download_takes_bin_weights_only_without_safetensors():
    repo = ["config.json", "tokenizer.json", "pytorch_model.bin", "training_args.bin",
            "tf_model.h5", "model.gguf"]
    assert files_to_load(repo) == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_hub_model_download_asks_for_those_files_at_the_revision(tmp_path, monkeypatch,
                                                                 workspace):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from tokprob.model_sources import resolve_model
    from tokprob.specs import ModelSpec

    calls = []

    def snapshot_download(repo_id, revision=None, repo_type=None, local_files_only=False,
                          allow_patterns=None):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        calls.append((repo_id, revision, repo_type, allow_patterns))
        folder = tmp_path / "snapshots" / ("c" * 40)
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    class Api:
        def repo_info(self, repo_id, revision=None, repo_type=None):
            assert (repo_id, revision, repo_type) == ("org/gpt2", "v1", "model")
            siblings = [type("Sibling", (), {"rfilename": name}) for name in GPT2_REPO]
            return type("Info", (), {"sha": "c" * 40, "siblings": siblings})

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    source = resolve_model(ModelSpec.parse("org/gpt2@v1"), workspace)
    assert source.fingerprint == f"hub:org/gpt2@{'c' * 40}"
    assert calls == [("org/gpt2", "v1", "model", files_to_load(GPT2_REPO))]


def test_a_snapshot_of_the_loading_files_counts_as_cached(tmp_path, monkeypatch, workspace):
    """The hub cache calls a snapshot fetched with only the loading files incomplete."""
    import huggingface_hub
    from huggingface_hub.errors import IncompleteSnapshotError
    from transformers import AutoModelForCausalLM

    from tokprob.model_sources import resolve_model
    from tokprob.specs import ModelSpec
    from tokprob.weights import has_files_to_load

    snapshot = tmp_path / "snapshots" / ("d" * 40)
    AutoModelForCausalLM.from_config(tiny_config("gpt2")).save_pretrained(
        snapshot, max_shard_size="20KB")
    build_tokenizer().save_pretrained(snapshot)
    assert has_files_to_load(snapshot)

    def snapshot_download(repo_id, revision=None, repo_type=None, local_files_only=False,
                          allow_patterns=None):
        assert local_files_only, "went online"
        raise IncompleteSnapshotError("pytorch_model.bin missing", snapshot_path=str(snapshot))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve_model(ModelSpec.parse("org/tiny"), workspace).path == str(snapshot)

    next(snapshot.glob("model-00002-*.safetensors")).unlink()  # an interrupted download
    assert not has_files_to_load(snapshot)
