"""The CUDA paths: α on a GPU, a model spread by device_map, `--device cuda` end to end.
Skipped where no GPU exists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokprob import models
from tokprob.head import output_head
from tokprob.models import load_model
from tokprob.probabilities import averaged_probabilities

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _windows():
    return np.random.default_rng(0).integers(0, 300, size=(6, 24), dtype=np.int32)


def _alpha(model):
    return averaged_probabilities(model, output_head(model), _windows(), batch_size=2).alpha


@pytest.mark.parametrize("architecture", ["gpt2", "phi"])
def test_alpha_on_cuda_equals_alpha_on_cpu(tiny_models, architecture):
    on_gpu = load_model(tiny_models[architecture], device="cuda")
    assert output_head(on_gpu).weight.device.type == "cuda"
    np.testing.assert_allclose(_alpha(on_gpu), _alpha(load_model(tiny_models[architecture])),
                               rtol=1e-4, atol=1e-9)


def test_model_spread_by_device_map_gives_the_same_alpha(tiny_models, monkeypatch):
    monkeypatch.setattr(models, "needs_device_map", lambda weight_bytes, free_bytes: True)
    spread = load_model(tiny_models["llama"], device="cuda")
    assert getattr(spread, "hf_device_map", None)
    np.testing.assert_allclose(_alpha(spread), _alpha(load_model(tiny_models["llama"])),
                               rtol=1e-4, atol=1e-9)


def test_encoding_runs_with_device_cuda(prefect_api, tiny_models, tiny_text_dir, tmp_path,
                                        capsys):
    from cli.main import main

    code = main(["run", "encoding", "--model", str(tiny_models["gpt2"]), "--dataset",
                 str(tiny_text_dir), "--data-dir", str(tmp_path), "--window", "16",
                 "--max-tokens", "160", "--device", "cuda", "--dtype", "auto", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["stages"]["probabilities"] == "computed"
