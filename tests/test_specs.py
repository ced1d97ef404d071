"""Model and dataset specs as the user types them on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokprob.errors import TokprobError
from tokprob.specs import DatasetSpec, ModelSpec, local_files


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """Run from an empty folder: a relative spec such as `gpt2` must not meet a file."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("text", ["smollm2-135m-instruct", "SmolLM2-135M-Instruct",
                                  "  smollm2-135m-instruct \n"])
def test_builtin_model_name_is_case_insensitive(text):
    assert ModelSpec.parse(text) == ModelSpec("builtin", "smollm2-135m-instruct")


@pytest.mark.parametrize(("text", "location", "revision"), [
    ("gpt2", "gpt2", None),
    ("EleutherAI/pythia-70m", "EleutherAI/pythia-70m", None),
    ("EleutherAI/pythia-70m@step1000", "EleutherAI/pythia-70m", "step1000"),
    ("org/model.v2@refs/pr/3", "org/model.v2", "refs/pr/3"),
    ("gpt2@" + "a" * 40, "gpt2", "a" * 40),
])
def test_hub_model_ids_with_and_without_revision(text, location, revision):
    spec = ModelSpec.parse(text)
    assert spec == ModelSpec("hub", location, revision)
    assert str(spec) == text
    assert ModelSpec.parse(str(spec)) == spec


def test_local_model_folder_with_config(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = ModelSpec.parse(str(folder))
    assert spec == ModelSpec("local", str(folder.resolve()))
    assert str(spec) == str(folder.resolve())


def test_relative_and_home_paths_resolve(tmp_path, monkeypatch):
    folder = Path.cwd() / "sub" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert ModelSpec.parse("./sub/model").location == str(folder.resolve())
    monkeypatch.setenv("HOME", str(Path.cwd() / "sub"))
    assert ModelSpec.parse("~/model").location == str(folder.resolve())


def test_gguf_file_and_folder_with_one_gguf(tmp_path):
    gguf = tmp_path / "weights" / "tiny.Q8_0.GGUF"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert ModelSpec.parse(str(gguf)) == ModelSpec("gguf", str(gguf.resolve()))
    assert ModelSpec.parse(str(gguf.parent)) == ModelSpec("gguf", str(gguf.resolve()))


def test_a_folder_with_config_wins_over_its_gguf(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "config.json").write_text("{}")
    assert ModelSpec.parse(str(tmp_path)).kind == "local"


@pytest.mark.parametrize(("text", "words"), [
    ("", "model spec is empty"),
    ("   ", "model spec is empty"),
    ("./missing-model", "No model file or folder"),
    ("/nowhere/at/all", "No model file or folder"),
    ("missing.gguf", "No model file or folder"),
    ("a/b/c", "No model file or folder"),
    ("not a model!", "Cannot read the model spec 'not a model!'"),
    ("org/model@", "Cannot read the model spec"),
    ("@main", "Cannot read the model spec"),
])
def test_model_spec_errors(text, words):
    with pytest.raises(TokprobError, match=words) as error:
        ModelSpec.parse(text)
    assert "hub id" in str(error.value)  # every one lists the accepted forms


def test_a_non_gguf_model_file_is_an_error(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(TokprobError, match=r"model\.safetensors is not a \.gguf file"):
        ModelSpec.parse(str(weights))


def test_a_folder_without_config_is_an_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TokprobError, match=r"holds no config\.json\. A model folder"):
        ModelSpec.parse(str(tmp_path))


def test_a_folder_with_several_ggufs_asks_for_one(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(TokprobError, match=r"no config\.json and 2 \.gguf files; name one"):
        ModelSpec.parse(str(tmp_path))


# ---------------------------------------------------------------- datasets


@pytest.mark.parametrize(("text", "name"), [("wiki-leads", "wiki-leads"),
                                            ("Shakespeare", "shakespeare")])
def test_builtin_datasets(text, name):
    spec = DatasetSpec.parse(text)
    assert (spec.kind, spec.location) == ("builtin", name)
    assert str(spec) == name


def test_a_dataset_file(tmp_path):
    file = tmp_path / "a.jsonl"
    file.write_text('{"body": "x"}\n')
    spec = DatasetSpec.parse(str(file), text_column="body")
    assert (spec.kind, spec.location, spec.text_column) == ("local", str(file.resolve()), "body")
    assert local_files(spec) == [file.resolve()]


def test_a_dataset_folder_collects_text_files_recursively(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.TXT").write_text("a")
    (tmp_path / "README.md").write_text("not a corpus file")
    spec = DatasetSpec.parse(str(tmp_path))
    assert spec.kind == "local" and spec.location == str(tmp_path.resolve())
    assert local_files(spec) == [(tmp_path / "b.txt").resolve(),
                                 (tmp_path / "sub" / "a.TXT").resolve()]


def test_a_dataset_glob_picks_one_format_from_a_mixed_folder(tmp_path):
    for name in ("a.txt", "b.txt", "c.json"):
        (tmp_path / name).write_text("[]" if name.endswith(".json") else name)
    spec = DatasetSpec.parse(str(tmp_path / "*.txt"))
    assert spec.location == str(tmp_path / "*.txt")
    assert [p.name for p in local_files(spec)] == ["a.txt", "b.txt"]


def test_mixed_formats_are_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.parquet").write_bytes(b"PAR1")
    with pytest.raises(TokprobError, match=r"mixes parquet and text files"):
        DatasetSpec.parse(str(tmp_path))


def test_json_and_jsonl_are_one_format(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "b.jsonl").write_text("")
    assert len(local_files(DatasetSpec.parse(str(tmp_path)))) == 2


@pytest.mark.parametrize("make", ["empty_folder", "no_text_files", "glob_without_match"])
def test_a_folder_or_glob_without_text_files_is_an_error(tmp_path, make):
    target = tmp_path / "data"
    target.mkdir()
    if make == "no_text_files":
        (target / "notes.md").write_text("x")
    text = str(target / "*.jsonl") if make == "glob_without_match" else str(target)
    with pytest.raises(TokprobError, match=r"No \.txt, \.json, \.jsonl or \.parquet files at"):
        DatasetSpec.parse(text)


@pytest.mark.parametrize("text", ["./missing", "missing.jsonl", "/no/such/corpus", "a/b/c"])
def test_a_missing_dataset_path_is_an_error(text):
    with pytest.raises(TokprobError, match=r"No dataset file or folder at .*hub dataset"):
        DatasetSpec.parse(text)


@pytest.mark.parametrize(("text", "words"), [
    ("", "dataset spec is empty"),
    ("some data set", "Cannot read the dataset spec 'some data set'"),
    ("org/name:", "Cannot read the dataset spec"),
])
def test_dataset_spec_errors(text, words):
    with pytest.raises(TokprobError, match=words):
        DatasetSpec.parse(text)


@pytest.mark.parametrize(("text", "location", "config", "revision"), [
    ("wikitext", "wikitext", None, None),
    ("Salesforce/wikitext:wikitext-2-raw-v1", "Salesforce/wikitext", "wikitext-2-raw-v1", None),
    ("Salesforce/wikitext:wikitext-2-raw-v1@b08601e", "Salesforce/wikitext",
     "wikitext-2-raw-v1", "b08601e"),
    ("someorg/tiny@main", "someorg/tiny", None, "main"),
    ("someorg/tiny:default@refs/convert/parquet", "someorg/tiny", "default",
     "refs/convert/parquet"),
])
def test_hub_datasets_with_config_revision_split_and_column(text, location, config, revision):
    spec = DatasetSpec.parse(text, split="validation", text_column="content")
    assert spec == DatasetSpec("hub", location, config, revision, "validation", "content")
    assert str(spec) == text
    assert DatasetSpec.parse(str(spec), "validation", "content") == spec


def test_hub_dataset_defaults():
    spec = DatasetSpec.parse("someorg/tiny")
    assert (spec.split, spec.text_column) == ("train", "text")


@pytest.mark.parametrize(("spec", "short"), [
    ("EleutherAI/pythia-70m@step1000", "pythia-70m@step1000"),
    ("EleutherAI/pythia-70m", "pythia-70m"),
    ("/models/tiny.Q4_1.gguf", "tiny.Q4_1"),
    ("/data/corpus/", "corpus"),
    ("/data/docs.jsonl.gz", "docs"),
    ("wikitext:wikitext-2-raw-v1@main", "wikitext@main"),
    ("wiki-leads", "wiki-leads"),
])
def test_short_names_of_specs(spec, short):
    from tokprob.specs import short_name

    assert short_name(spec) == short


def test_run_tags_name_every_model_and_the_dataset():
    from flows.labels import run_tags
    from tokprob.config import Corpus

    # Called from Python the corpus is a Corpus; run from a deployment, a mapping.
    assert run_tags({"model": "EleutherAI/pythia-70m@step1000",
                     "corpus": Corpus(dataset="wiki-leads")}) == [
        "dataset:wiki-leads", "model:pythia-70m@step1000"]
    assert run_tags({"models": ["a/b", "/m/c.gguf"], "corpus": {"dataset": "x.txt"}}) == [
        "dataset:x", "model:b", "model:c"]
    assert run_tags({"model": "a/b"}) == ["model:b"]
