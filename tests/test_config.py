"""Stage configurations: validation that names the flag, cache-key fields, field docs."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tokprob.config import (
    HiddenConfig,
    ProbabilityConfig,
    RegressionConfig,
    RunConfig,
    SparsityConfig,
    WindowConfig,
    field_docs,
    key_params,
)
from tokprob.errors import TokprobError

CONFIGS = [WindowConfig, RunConfig, ProbabilityConfig, HiddenConfig, RegressionConfig,
           SparsityConfig]


@pytest.mark.parametrize(("cls", "values", "flag", "expected"), [
    (WindowConfig, {"window": 0}, "--window", "at least 2"),
    (WindowConfig, {"window": 1}, "--window", "at least 2"),
    (WindowConfig, {"window": -5}, "--window", "at least 2"),
    (WindowConfig, {"heldout_fraction": 1.0}, "--heldout-fraction", r"in \[0, 1\)"),
    (WindowConfig, {"heldout_fraction": -0.1}, "--heldout-fraction", r"in \[0, 1\)"),
    (WindowConfig, {"heldout_fraction": math.nan}, "--heldout-fraction", r"in \[0, 1\)"),
    (RunConfig, {"dtype": "float64"}, "--dtype", "float32 or bfloat16 or float16"),
    (RunConfig, {"dtype": "fp16"}, "--dtype", "float32 or bfloat16 or float16"),
    (RunConfig, {"batch_size": 0}, "--batch-size", "positive"),
    (RunConfig, {"device": "tpu"}, "--device", "cpu, cuda, cuda:N, mps or auto"),
    (RunConfig, {"device": "cuda:"}, "--device", "cpu, cuda, cuda:N, mps or auto"),
    (RunConfig, {"checkpoint_seconds": -1.0}, "--checkpoint-seconds", "zero or a positive"),
    (ProbabilityConfig, {"max_tokens": -1}, "--max-tokens", "positive"),
    (ProbabilityConfig, {"max_tokens": 0}, "--max-tokens", "positive"),
    (HiddenConfig, {"heldout_tokens": 0}, "--heldout-tokens", "positive"),
    (RegressionConfig, {"target": "logit"}, "--target", "alpha or frequency"),
    (RegressionConfig, {"solver": "qr"}, "--solver", "normal or statsmodels"),
    (SparsityConfig, {"significance": 0.0}, "--significance", r"in \(0, 1\)"),
    (SparsityConfig, {"significance": 1.0}, "--significance", r"in \(0, 1\)"),
    (SparsityConfig, {"significance": 1.5}, "--significance", r"in \(0, 1\)"),
    (SparsityConfig, {"significance": math.inf}, "--significance", r"in \(0, 1\)"),
    (SparsityConfig, {"significance": math.nan}, "--significance", r"in \(0, 1\)"),
])
def test_invalid_values_name_the_flag(cls, values, flag, expected):
    ((_, value),) = values.items()
    with pytest.raises(TokprobError, match=rf"Invalid {flag}: expected .*{expected}.*, got "):
        cls(**values)
    with pytest.raises(TokprobError) as error:
        cls(**values)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(("cls", "values"), [
    (WindowConfig, {"window": 2, "heldout_fraction": 0.0}),
    (WindowConfig, {"heldout_fraction": 0.999}),
    (RunConfig, {"dtype": "bfloat16", "batch_size": 1, "device": "cuda:1"}),
    (ProbabilityConfig, {"max_tokens": 1}),
    (RegressionConfig, {"target": "frequency", "solver": "statsmodels"}),
    (SparsityConfig, {"significance": 1e-6}),
])
def test_boundary_values_are_accepted(cls, values):
    config = cls(**values)
    for name, value in values.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize("cls", CONFIGS)
def test_defaults_are_valid_and_frozen(cls):
    config = cls()
    first = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first, getattr(config, first))
    assert hash(config) == hash(cls())


def test_key_params_leave_out_execution_settings():
    fast = RunConfig(dtype="float16", batch_size=64, device="cpu")
    slow = RunConfig(dtype="float16", batch_size=1, device="mps", checkpoint_seconds=5.0)
    assert key_params(fast) == key_params(slow) == {"dtype": "float16"}
    assert key_params(RunConfig(dtype="float32")) != key_params(fast)


def test_key_params_keep_every_computation_field():
    config = WindowConfig(window=64, heldout_fraction=0.2, seed=3)
    assert key_params(config) == {"window": 64, "heldout_fraction": 0.2, "seed": 3}
    assert key_params(RegressionConfig()) == {"target": "alpha", "solver": "normal"}


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_is_documented(cls):
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    for text in docs.values():
        assert text and "\n" not in text and "  " not in text


def test_field_docs_are_the_docstrings_under_the_fields():
    docs = field_docs(WindowConfig)
    assert docs["seed"] == "Seed of the window shuffle and of the detecting/held-out split."
    assert docs["window"].startswith("Tokens per window. Documents are packed back to back")
    assert docs["window"].endswith("(padding would change the logits).")


def test_field_docs_of_a_new_dataclass():
    @dataclasses.dataclass
    class Example:
        """Not a field doc."""

        documented: int = 1
        """The first
        field."""

        undocumented: int = 2
        after: str = "x"
        """Belongs to `after`."""

        def method(self) -> None:
            """Not a field doc either."""

    assert field_docs(Example) == {"documented": "The first field.",
                                   "after": "Belongs to `after`."}
