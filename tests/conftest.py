"""Shared fixtures: a tiny BPE tokenizer and tiny random-weight models built from configs.

Nothing here is downloaded: the tokenizer is trained on a few sentences, the models are
real architectures (GPT-2 tied, GPT-NeoX untied, Llama untied, Phi with an output bias)
with random weights. Tests that need the real default model are marked `integration`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings at import: keep every test session's Prefect state private
# and quiet, before anything imports prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tokprob-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    "The cat sat on the mat and looked at the moon.",
    "A language model predicts the next token from the tokens before it.",
    "Output embeddings map hidden states to logits over the vocabulary.",
    "Frequent tokens get high probability; rare tokens get low probability.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "In 1969 the first humans walked on the Moon during the Apollo program.",
    "Rivers flow into the sea, and the sea gives back rain to the hills.",
    "Numbers like 3, 14, 159 and 2653 appear in many kinds of text.",
]
VOCAB_ROWS = 320
"""Output rows of the tiny models: more than the tokenizer's ~300, as in padded vocabularies."""


def tiny_corpus(documents: int = 60) -> list[str]:
    """Deterministic documents made of the sentences above."""
    return [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1 + i % 4))
            for i in range(documents)]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")


def tiny_config(architecture: str):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, PhiConfig

    common = {"vocab_size": VOCAB_ROWS, "bos_token_id": 0, "eos_token_id": 0}
    if architecture == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    if architecture == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=256,
                             tie_word_embeddings=False, **common)
    if architecture == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, tie_word_embeddings=False, **common)
    if architecture == "phi":
        return PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256, **common)
    raise ValueError(architecture)


ARCHITECTURES = ["gpt2", "gpt_neox", "llama", "phi"]
"""tied; untied without bias; untied (Llama); untied with an output bias (Phi)."""


def save_tiny_model(architecture: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture))
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def save_bfloat16_model(architecture: str, folder: Path) -> Path:
    """A tiny model saved in bfloat16 (weights and config), as large models are."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture)).to(torch.bfloat16)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def assert_saved_in_bfloat16(folder: Path) -> None:
    """Every floating tensor of a saved model, and its config, in bfloat16."""
    import json

    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        names = handle.keys()
        dtypes = {handle.get_slice(name).get_dtype() for name in names}
    assert dtypes == {"BF16"}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny model folder per architecture."""
    root = tmp_path_factory.mktemp("models")
    return {arch: save_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """A folder of .txt documents."""
    folder = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(tiny_corpus()):
        (folder / f"doc{i:03d}.txt").write_text(text)
    return folder


@pytest.fixture
def workspace(tmp_path):
    from tokprob.workspace import Workspace

    return Workspace.from_env(tmp_path / "data")


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server (its own SQLite database) for every test that runs
    flows in this process: starting it takes ~20 s, so the whole session shares it, and
    tests that read runs or artifacts back select their own flow run. Yields the API
    URL, for command-line processes that should use it instead of starting their own."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def last_flow_run_id(data_dir: Path) -> str:
    """The id of the latest flow run recorded in a data folder (`data/runs`)."""
    from tasks.runs import run_records
    from tokprob.workspace import Workspace

    records = run_records(Workspace.from_env(data_dir))
    assert records, f"no flow run is recorded in {data_dir}"
    return records[-1]["flow_run_id"]


def slow_run(tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    """A model big enough that α takes seconds, a corpus, and the command that runs them."""
    import json
    import sys

    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path / "slow-model"
    config = LlamaConfig(vocab_size=320, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4,
                         max_position_embeddings=256, bos_token_id=0, eos_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in tiny_corpus(3000)))
    data = tmp_path / "data"
    command = [sys.executable, "-m", "cli.main", "run", "encoding", "--model", str(folder),
               "--dataset", str(corpus), "--data-dir", str(data), "--window", "64",
               "--max-tokens", "60000", "--json"]
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return command, env, data
