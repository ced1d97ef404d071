"""Models: resolving specs to folders, loading, and taking the LM head apart."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    VOCAB_ROWS,
    build_tokenizer,
    save_bfloat16_model,
    save_tiny_model,
)

from tokprob.errors import TokprobError
from tokprob.head import check_head, final_hidden_states, head_logits, output_head
from tokprob.model_sources import resolve_model
from tokprob.models import (
    load_model,
    load_tokenizer,
    model_dtype,
    needs_device_map,
    resolve_device,
    weights_bytes,
)
from tokprob.specs import ModelSpec

EXPECTED = {  # architecture: (tied, has bias)
    "gpt2": (True, False),
    "gpt_neox": (False, False),
    "llama": (False, False),
    "phi": (False, True),
}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_head_rebuilds_the_models_logits(tiny_models, architecture):
    model = load_model(tiny_models[architecture])
    head = output_head(model)
    assert (head.tied, head.bias is not None) == EXPECTED[architecture]
    assert head.weight.shape == (VOCAB_ROWS, 32)
    ids = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        rebuilt = head_logits(final_hidden_states(model, ids), head)
    torch.testing.assert_close(rebuilt, expected, rtol=1e-5, atol=1e-5)
    check_head(model, head, head.vocab_size)


def test_tied_head_is_the_input_matrix(tiny_models):
    model = load_model(tiny_models["gpt2"])
    assert output_head(model).weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_dtype_option_loads_bfloat16(tiny_models):
    model = load_model(tiny_models["llama"], dtype="bfloat16")
    head = output_head(model)
    assert head.weight.dtype == torch.bfloat16
    logits = head_logits(final_hidden_states(model, torch.tensor([[1, 2, 3]])), head)
    assert logits.dtype == torch.float32  # upcast before any softmax


def test_check_head_rejects_logits_transformed_after_the_head(tiny_models):
    model = load_model(tiny_models["llama"])
    head = output_head(model)
    original = model.forward

    def scaled_forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5  # like logit scaling in some architectures
        return out

    model.forward = scaled_forward
    with pytest.raises(TokprobError, match="plain linear LM head"):
        check_head(model, head, head.vocab_size)


def test_check_head_rejects_nan_weights(tmp_path):
    folder = save_tiny_model("gpt_neox", tmp_path / "broken")
    model = load_model(folder)
    with torch.no_grad():
        model.get_output_embeddings().weight[5, :] = float("nan")
    with pytest.raises(TokprobError, match="NaN"):
        check_head(model, output_head(model), VOCAB_ROWS)


def test_local_folder_fingerprint_follows_content(tmp_path, workspace):
    folder = save_tiny_model("gpt2", tmp_path / "m")
    first = resolve_model(ModelSpec.parse(str(folder)), workspace)
    again = resolve_model(ModelSpec.parse(str(folder)), workspace)
    assert first.fingerprint == again.fingerprint
    assert first.path == str(folder.resolve())
    save_tiny_model("gpt2", folder, seed=1)  # same files, other weights
    changed = resolve_model(ModelSpec.parse(str(folder)), workspace)
    assert changed.fingerprint != first.fingerprint


def _fake_hub_cache(root, repo_id, snapshots):
    """A Hugging Face hub cache as snapshot_download leaves it: refs name commits."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    for ref, (commit, source) in snapshots.items():
        (repo / "refs" / ref).write_text(commit)
        shutil.copytree(source, repo / "snapshots" / commit)
    return root


def test_hub_ids_and_revisions_resolve_from_the_local_cache(tmp_path, monkeypatch, workspace):
    main_commit, step_commit = "a" * 40, "b" * 40
    main_model = save_tiny_model("gpt_neox", tmp_path / "main", seed=0)
    step_model = save_tiny_model("gpt_neox", tmp_path / "step", seed=1)
    cache = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-neox",
                            {"main": (main_commit, main_model), "step1000": (step_commit,
                                                                             step_model)})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    latest = resolve_model(ModelSpec.parse("someorg/tiny-neox"), workspace)
    step = resolve_model(ModelSpec.parse("someorg/tiny-neox@step1000"), workspace)
    assert latest.fingerprint == f"hub:someorg/tiny-neox@{main_commit}"
    assert step.fingerprint == f"hub:someorg/tiny-neox@{step_commit}"
    assert step.display_name == "tiny-neox@step1000"
    # The revision picks the weights: the two snapshots load different heads.
    assert not torch.equal(output_head(load_model(latest.path)).weight,
                           output_head(load_model(step.path)).weight)


def test_unknown_hub_model_offline_is_a_clear_error(tmp_path, monkeypatch, workspace):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(TokprobError, match="not in the local Hugging Face cache") as error:
        resolve_model(ModelSpec.parse("nobody/no-such-model@step1"), workspace)
    assert "step1" in str(error.value)
    assert "built-in models are smollm2-135m-instruct" in str(error.value)


def test_folder_that_is_not_a_causal_lm_is_a_clear_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "not-a-real-architecture"}')
    with pytest.raises(TokprobError, match="cannot load a causal LM"):
        load_model(folder)


class TrainingNote:
    """An object an old training script pickled beside the weights."""


def test_a_bin_checkpoint_that_torch_refuses_to_unpickle_is_a_clear_error(tmp_path):
    import collections

    from safetensors.torch import load_file

    folder = save_tiny_model("gpt2", tmp_path / "pickled")
    weights = collections.OrderedDict(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    weights["note"] = TrainingNote()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(TokprobError, match=r"hold Python objects besides tensors, which "
                                           r"torch refuses to load"):
        load_model(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [('{"model_type": "gpt2",', r"config\.json is not valid JSON \(line 1: Expecting"),
     ('{"model_type": "nosucharch"}', r"model_type='nosucharch', which transformers .* does "
                                      r"not know"),
     ('{"vocab_size": 10}', r"model_type=None")],
)
def test_a_bad_config_json_is_named_before_the_tokenizer_is_blamed(tmp_path, config, message):
    folder = save_tiny_model("gpt2", tmp_path / "model")
    (folder / "config.json").write_text(config)
    with pytest.raises(TokprobError, match=message):
        load_tokenizer(folder)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    expected = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    if not torch.backends.mps.is_available():
        with pytest.raises(TokprobError, match="MPS"):
            resolve_device("mps")
    with pytest.raises(TokprobError, match="--device"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(TokprobError, match="CUDA"):
            resolve_device("cuda")


def test_tokenizer_round_trip(tiny_models):
    tokenizer = load_tokenizer(tiny_models["gpt2"])
    reference = build_tokenizer()
    text = "The capital of France"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]


def test_auto_dtype_is_the_saved_models(tiny_models, tmp_path):
    folder = save_bfloat16_model("llama", tmp_path / "bf16")
    assert model_dtype(folder) == "bfloat16"
    assert load_model(folder, dtype="auto").dtype == torch.bfloat16
    assert load_model(folder, dtype="float32").dtype == torch.float32
    assert model_dtype(tiny_models["llama"]) == "float32"
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text('{"model_type": "llama"}')
    assert model_dtype(tmp_path / "bare") == "float32"


def test_device_map_only_for_weights_beyond_one_device(tmp_path):
    assert not needs_device_map(weight_bytes=8 << 30, free_bytes=80 << 30)
    assert needs_device_map(weight_bytes=75 << 30, free_bytes=80 << 30)
    folder = save_bfloat16_model("llama", tmp_path / "bf16")
    on_disk = (folder / "model.safetensors").stat().st_size
    assert weights_bytes(folder, torch.bfloat16) == on_disk
    assert weights_bytes(folder, torch.float32) == 2 * on_disk
