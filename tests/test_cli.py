"""The command line: its JSON contract, listings, re-runs, and errors (exit code 2)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, slow_run

from cli.main import main

TINY_RUN = ["--window", "16", "--heldout-fraction", "0.2", "--max-tokens", "160"]


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-tokens", "-5"], "--max-tokens"),
        (["--window", "0"], "--window"),
        (["--heldout-fraction", "1.5"], "--heldout-fraction"),
        (["--batch-size", "0"], "--batch-size"),
        (["--model", "./no/such/model"], "No model file or folder"),
        (["--dataset", "./no/such/corpus.txt"], "No dataset file or folder"),
        (["--model", "weird spec!"], "Cannot read the model spec"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_code_2(capsys, tmp_path, arguments, message):
    code, out, err = _run(capsys, "run", "encoding", "--data-dir", str(tmp_path), *arguments)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "encoding", "--device", "tpu"], "--device"),
        (["steer", "--token", " the", "--ratio", "0", "--out", "{tmp}/out"],
         "positive finite"),
        (["steer", "--token", " the", "--token", " a", "--ratio", "2", "--out", "{tmp}/out"],
         "one --ratio per --token (2 tokens, 1 ratios)"),
        (["steer", "--token", " the", "--ratio", "2", "--out", "{tmp}/file"], "is a file"),
        (["prune", "--fraction", "1.5", "--out", "{tmp}/out"], "[0, 1)"),
        (["prune", "--fraction", "0.1", "--out", "{tmp}/full"], "not empty"),
        (["run", "dynamics", "--checkpoints", "{tmp}/full"], "at least two checkpoints"),
        (["run", "dynamics", "--checkpoints",
          "EleutherAI/pythia-70m@step0,EleutherAI/pythia-70m@step1000,EleutherAI/pythia-70m"],
         "The checkpoint EleutherAI/pythia-70m states no training step while the others do"),
        (["run", "dynamics", "--checkpoints",
          "EleutherAI/pythia-70m@step0,EleutherAI/pythia-70m,EleutherAI/pythia-70m@step1000"],
         "The checkpoint EleutherAI/pythia-70m states no training step while the others do"),
        (["artifacts", "--stage", "nosuch"], "invalid choice: 'nosuch'"),
        (["rerun", "steering", "--checkpoints", "a,b", "--no-alpha"],
         "The stage steering belongs to the steering flow, which takes no --alpha, "
         "--checkpoints; leave them out."),
        (["rerun", "pca", "--ood-dataset", "x.txt"], "takes no --ood-dataset; leave it out"),
        (["run", "steering", "--ratios", "2,abc"], "comma-separated float"),
        (["run", "encoding", "--model", "{tmp}/garbage"], "is not valid JSON (line 1"),
        (["run", "encoding", "--model", "{tmp}/unknown-type"],
         "model_type='nosucharch', which transformers"),
        (["run", "encoding", "--model", "{tmp}/short-context", "--window", "128"],
         "--window 128 is longer than the context of the model"),
        (["serve", "{tmp}/bad-cron.yaml"], "cron '61 * * *' is not a cron schedule"),
        (["serve", "{tmp}/typo.yaml"], "entrypoint must be one of flows/encoding.py:encoding, "
                                       "flows/steering.py:steering"),
        (["serve", "{tmp}/empty.yaml"], "declares no deployments"),
        (["serve", "{tmp}/no-such.yaml"], "Cannot read the deployments file"),
        (["report", "latest"], "Cannot write to the data folder"),
    ],
)
def test_mistakes_are_caught_before_any_work_in_one_paragraph(capsys, tmp_path, monkeypatch,
                                                              arguments, message):
    def prefect_started(*_):
        raise AssertionError("the mistake was found only after Prefect was set up")

    monkeypatch.setattr("cli.commands.prepare_environment", prefect_started)
    (tmp_path / "file").write_text("a model folder was expected here")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    for name, config in [("garbage", "{model_type: gpt2"),
                         ("unknown-type", '{"model_type": "nosucharch"}'),
                         ("short-context", '{"model_type": "gpt2", "n_positions": 64}')]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
    deployment = "deployments:\n  - name: nightly\n    entrypoint: {}\n    schedules: [{}]\n"
    (tmp_path / "bad-cron.yaml").write_text(
        deployment.format("flows/encoding.py:encoding", '{cron: "61 * * *"}'))
    (tmp_path / "typo.yaml").write_text(
        deployment.format("flows/encodings.py:encoding", "{interval: 60}"))
    (tmp_path / "empty.yaml").write_text("name: tokprob\ndeployments: []\n")
    if arguments[0] == "report":  # root writes anywhere: make the folder refuse writes
        def refuse(*_, **__):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("tokprob.workspace.tempfile.NamedTemporaryFile", refuse)
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    parser_check = arguments[0] == "artifacts" or "2,abc" in arguments
    with pytest.raises(SystemExit) if parser_check else contextlib.nullcontext() as raised:
        code, out, err = _run(capsys, *arguments, "--data-dir", str(tmp_path / "data"))
    if raised is not None:  # argparse's own checks exit through the parser
        code, (out, err) = raised.value.code, capsys.readouterr()
    assert code == 2
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err and "usage:" not in err and out == ""
    assert len(err.strip().split("\n\n")) == 1  # one paragraph


def test_a_token_that_is_not_one_token_is_refused_before_any_stage(capsys, tmp_path,
                                                                     monkeypatch, tiny_models):
    def prefect_started(*_):
        raise AssertionError("the token was checked only after Prefect was set up")

    monkeypatch.setattr("cli.commands.prepare_environment", prefect_started)
    code, out, err = _run(capsys, "steer", "--model", str(tiny_models["gpt2"]), "--token",
                          " capital of", "--ratio", "2", "--out", str(tmp_path / "out"),
                          "--data-dir", str(tmp_path / "data"))
    assert (code, out) == (2, "")
    assert "' capital of' is not one token" in " ".join(err.split()), err


def test_a_deployment_parameter_the_flow_lacks_is_refused_when_serving_starts(monkeypatch):
    from cli.serve import Deployment, serve_deployments
    from tokprob.errors import TokprobError

    def served(*_):
        raise AssertionError("served a deployment whose runs would all fail")

    monkeypatch.setattr("prefect.serve", served)
    cases = [({"modell": "x"}, "the encoding flow has no parameter modell; its parameters "
                               "are model, corpus, detection"),
             ({"corpus": {"datasett": "x"}}, "corpus has no field datasett; its fields are "
                                            "dataset, split, text_column"),
             ({"detection": {"probability_config": {"max_tokenz": 5}}},
              "detection.probability_config has no field max_tokenz; its fields are max_tokens"),
             ({"detection": {"probability_config": {"max_tokens": "many"}}},
              "max_tokens: Input should be")]
    for parameters, message in cases:
        deployment = Deployment(name="nightly", flow="encoding", parameters=parameters,
                                schedules=[], tags=[])
        with pytest.raises(TokprobError) as raised:
            serve_deployments([deployment], "/tmp/data")
        assert message in str(raised.value)


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ("{name: a, entrypoint: flows/paper.py:paper}\n  - {name: a, entrypoint: "
         "flows/paper.py:paper}", "needs a unique name (got 'a')"),
        ("{name: a, entrypoint: flows/paper.py:paper, triggers: []}",
         "`tokprob serve` does not read triggers"),
        ("{name: a, entrypoint: flows/paper.py:paper, schedules: [{cron: '0 3 * * *', "
         "interval: 60}]}", "exactly one of cron, interval (seconds) or rrule"),
        ("{name: a, entrypoint: flows/paper.py:paper, schedules: [{interval: -5}]}",
         "interval must be a positive number of seconds (got -5)"),
        ("{name: a, entrypoint: flows/paper.py:paper, schedules: [{cron: '0 3 * * *', "
         "timezone: Mars/Olympus}]}", 'Invalid timezone: "Mars/Olympus"'),
        ("{name: a, entrypoint: flows/paper.py:paper, schedules: [{cron: '0 3 * * *', "
         "anchor_date: '2026-01-01'}]}", "An anchor date can only be provided with an interval"),
        ("{name: a, entrypoint: flows/paper.py:paper, parameters: [models]}",
         "parameters must be a mapping"),
    ],
)
def test_a_deployment_tokprob_serve_cannot_serve_is_refused(tmp_path, deployment, message):
    from cli.serve import read_deployments
    from tokprob.errors import TokprobError

    path = tmp_path / "prefect.yaml"
    path.write_text(f"deployments:\n  - {deployment}\n")
    with pytest.raises(TokprobError) as raised:
        read_deployments(path)
    assert message in str(raised.value)


def test_the_shipped_prefect_yaml_names_each_flow_and_tokprob_serve_serves_it(
        capsys, tmp_path, monkeypatch):
    """Every step of prefect.yaml imports; every deployment's entrypoint, loaded as
    `prefect deploy` loads it, is the flow `tokprob serve` maps it to; its parameters fit
    the flow; and `tokprob serve` hands each to Prefect with its schedule, tags and
    parameters."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    root = Path(__file__).resolve().parent.parent
    document = yaml.safe_load((root / "prefect.yaml").read_text())
    for step in document["build"] + document["pull"]:  # what `prefect deploy` will call
        assert callable(import_object(next(iter(step))))
    shipped = document["deployments"]
    monkeypatch.chdir(root)  # entrypoints are relative to the checkout
    for entry in shipped:
        flow = load_flow_from_entrypoint(entry["entrypoint"], use_placeholder_flow=False)
        assert flow.name == entry["entrypoint"].rsplit(":", 1)[1], entry["name"]
    served = []
    monkeypatch.setattr("prefect.serve", lambda *deployments: served.extend(deployments))
    monkeypatch.setattr("cli.commands.prepare_environment", lambda workspace, **_: None)
    code, _, err = _run(capsys, "serve", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert [d.name for d in served] == [entry["name"] for entry in shipped]
    for deployment, entry in zip(served, shipped, strict=True):
        assert deployment.flow_name == entry["entrypoint"].rsplit(":", 1)[1]
        assert [s.schedule.cron for s in deployment.schedules] \
            == [s["cron"] for s in entry["schedules"]]
        assert deployment.tags == entry["tags"]
        assert deployment.parameters == entry["parameters"] | {"data_dir": str(tmp_path)}


@pytest.mark.prefect
def test_json_contract(capsys, prefect_api, tiny_models, tiny_text_dir, tmp_path):
    code, out, _ = _run(capsys, "run", "encoding", "--model", str(tiny_models["gpt2"]),
                        "--dataset", str(tiny_text_dir), "--data-dir", str(tmp_path),
                        *TINY_RUN, "--json")
    assert code == 0
    result = json.loads(out)  # exactly one JSON object on stdout
    for field in ("r2", "adj_r2", "n_tokens", "vocab_size", "hidden_size", "tied"):
        assert field in result
    assert result["tied"] is True and result["n_tokens"] == 160
    assert 0.0 <= result["adj_r2"] <= result["r2"] <= 1.0
    for stage in ("probabilities", "embeddings", "regression"):
        assert Path(result["artifacts"][stage]).suffix == ".parquet"
        assert Path(result["artifacts"][stage]).is_file()

    code, out, _ = _run(capsys, "artifacts", "--data-dir", str(tmp_path), "--json")
    listed = json.loads(out)
    assert {row["stage"] for row in listed} >= {"corpus", "windows", "embeddings",
                                               "probabilities", "regression", "sparsity",
                                               "pca", "figures"}
    assert all(row["size"] > 0 and row["created"] for row in listed)
    windows_row = next(row for row in listed if row["stage"] == "windows")
    assert windows_row["parameters"]["config"]["window"] == 16
    # What each artifact is about: the model (the corpus stage has none) and the corpus
    # (the embeddings stage has none).
    assert {row["dataset"] for row in listed if row["stage"] != "embeddings"} \
        == {tiny_text_dir.name}
    assert {row["model"] for row in listed if row["stage"] != "corpus"} == {"gpt2"}

    code, out, _ = _run(capsys, "artifacts", "--data-dir", str(tmp_path), "--stage", "pca")
    assert code == 0 and out.count("\npca") == 1

    code, out, _ = _run(capsys, "rerun", "pca", "--model", str(tiny_models["gpt2"]),
                        "--dataset", str(tiny_text_dir), "--data-dir", str(tmp_path),
                        *TINY_RUN, "--json")
    stages = json.loads(out)["stages"]
    assert {s for s, state in stages.items() if state == "computed"} == {"pca", "figures"}


@pytest.mark.prefect
def test_human_summary(capsys, prefect_api, tiny_models, tiny_text_dir, tmp_path):
    code, out, _ = _run(capsys, "run", "encoding", "--model", str(tiny_models["llama"]),
                        "--dataset", str(tiny_text_dir), "--data-dir", str(tmp_path),
                        *TINY_RUN)
    assert code == 0
    assert "adjusted R²" in out and "pca_scatter.png" in out


@pytest.mark.prefect
def test_errors_found_inside_the_flow_exit_with_code_2(capsys, prefect_api, tiny_models,
                                                       tiny_text_dir, tmp_path):
    model, corpus = str(tiny_models["gpt2"]), str(tiny_text_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n\n  ")
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    cases = [
        (["--dataset", str(empty), "--model", model], "holds no text"),
        (["--dataset", str(short), "--model", model], "fewer than one window"),
        (["--dataset", corpus, "--model", model, "--window", "16", "--max-tokens", "8"],
         "less than one window"),
        (["--dataset", corpus, "--model", "nobody/no-such-model"], "Hugging Face cache"),
        (["--dataset", str(tmp_path / "empty.jsonl"), "--model", model], "0 bytes"),
    ]
    (tmp_path / "empty.jsonl").touch()
    for arguments, message in cases:
        code, out, err = _run(capsys, "run", "encoding", "--data-dir", str(tmp_path / "d"),
                              *arguments)
        assert (code, out) == (2, ""), arguments
        assert message in " ".join(err.split()), (arguments, err)


def test_nan_model_from_the_shell_exits_2_without_traceback(tmp_path, tiny_text_dir):
    """The real console entry point in its own process, ephemeral Prefect server and all."""
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model("gpt_neox", tmp_path / "nan-model")
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_output_embeddings().weight[7, :] = float("nan")
    model.save_pretrained(folder)
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "encoding", "--model", str(folder),
         "--dataset", str(tiny_text_dir), "--data-dir", str(tmp_path / "data"), *TINY_RUN],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "NaN" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_run_on_its_own_temporary_server_ends_without_losing_its_last_log_lines(
        tmp_path, tiny_models, tiny_text_dir):
    """The temporary server is stopped only once Prefect has sent the run's last log
    lines to it: stopped first, the command ended with 'Error logging to API'."""
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "encoding", "--model",
         str(tiny_models["gpt_neox"]), "--dataset", str(tiny_text_dir), "--data-dir",
         str(tmp_path / "data"), *TINY_RUN],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Finished in state Completed" in done.stderr
    assert "Error logging to API" not in done.stderr, done.stderr[-2000:]


def test_killed_run_leaves_no_partial_artifact_and_resumes(tmp_path, prefect_api):
    """kill -9 in the middle of the probabilities stage, then run again (against a
    running server, as a service would, so the kill leaves no ephemeral server behind)."""
    import signal
    import time

    from tokprob.store import ArtifactStore
    from tokprob.workspace import Workspace

    command, env, data = slow_run(tmp_path)
    env["PREFECT_API_URL"] = prefect_api
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    in_progress = data / "artifacts" / "probabilities"
    deadline = time.monotonic() + 300
    while not list(in_progress.glob(".tmp-*")):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()

    store = ArtifactStore(Workspace.from_env(data).artifacts)
    assert [m.stage for m in store.manifests() if m.stage == "probabilities"] == []
    for manifest in store.manifests():  # whatever finished is whole
        assert store.verify(manifest.stage, manifest.key) is not None

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads(done.stdout)["stages"]
    assert stages["corpus"] == stages["windows"] == "cached"
    assert stages["probabilities"] == "computed"
    assert not list(in_progress.glob(".tmp-*"))  # the killed run's leftovers are cleaned


def test_simultaneous_runs_compute_each_stage_once(tmp_path):
    """Two runs started together on the same inputs: one computes, the other waits for
    each stage's lock and then takes the cached result."""
    command, env, _ = slow_run(tmp_path)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    second = subprocess.Popen(command, env=env | {"PREFECT_HOME": str(tmp_path / "p2")},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = []
    for process in (first, second):
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-2000:]
        results.append(json.loads(out)["stages"])
    for stage in results[0]:
        states = sorted(result[stage] for result in results)
        assert states == ["cached", "computed"], (stage, states)
    assert results[0]["probabilities"] != results[1]["probabilities"]


def test_error_paragraphs_never_break_inside_a_quoted_token():
    from cli.main import paragraph

    message = ("tokprob: error: ' Paris is' is not one token: the model's tokenizer makes 2 "
               "of it (' Paris', ' is'). Steer one token at a time, or give its integer id.")
    for width in range(30, 90, 7):
        wrapped = paragraph(message, width)
        assert " ".join(wrapped.split()) == " ".join(message.split())
        assert "(' Paris'," in wrapped.replace("\n", " ") and "' is')" in wrapped
        assert "\u00a0" not in wrapped


def test_error_paragraphs_never_break_an_option_at_its_hyphens():
    from cli.main import paragraph

    message = "tokprob: error: the pruning flow takes no --ood-dataset or --heldout-tokens."
    for width in range(20, 80, 3):
        lines = paragraph(message, width).splitlines()
        assert all(not line.endswith("-") for line in lines), lines
        assert {"--ood-dataset", "--heldout-tokens."} <= {w for line in lines
                                                          for w in line.split()}


def test_python_dash_m_tokprob_is_the_tokprob_command(tmp_path):
    command = [sys.executable, "-m", "tokprob", "run", "encoding", "--window", "0",
               "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--window" in done.stderr and "Traceback" not in done.stderr
    usage = subprocess.run([sys.executable, "-m", "tokprob", "--help"], capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 0 and "run" in usage.stdout and "steer" in usage.stdout


def test_run_killed_during_alpha_resumes_from_its_checkpoint(tmp_path, prefect_api):
    """kill -9 once α has saved a checkpoint; the rerun starts from it and ends with the
    α of an uninterrupted computation over the same windows."""
    import signal
    import time

    import numpy as np
    import pyarrow.parquet as pq

    from tasks.catalog import read_windows
    from tasks.probabilities import CHECKPOINT_FILE
    from tokprob.head import output_head
    from tokprob.models import load_model
    from tokprob.probabilities import averaged_probabilities, prefix_grid
    from tokprob.store import ArtifactRef, ArtifactStore
    from tokprob.windows import DETECT
    from tokprob.workspace import Workspace

    command, env, data = slow_run(tmp_path)
    tokens = 24000
    command[command.index("--max-tokens") + 1] = str(tokens)
    command += ["--checkpoint-seconds", "0"]
    env["PREFECT_API_URL"] = prefect_api
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    stage_dir = data / "artifacts" / "probabilities"
    deadline = time.monotonic() + 300
    while not list(stage_dir.glob(f".partial-*/{CHECKPOINT_FILE}")):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not [m for m in ArtifactStore(Workspace.from_env(data).artifacts).manifests()
                if m.stage == "probabilities"], "α finished before the kill"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming α from its checkpoint at window" in done.stderr
    assert not list(stage_dir.glob(".partial-*"))  # removed once the artifact is stored
    artifacts = json.loads(done.stdout)["artifacts"]
    alpha = pq.read_table(artifacts["probabilities"]).column("alpha").to_numpy()

    model = load_model(command[command.index("--model") + 1])
    folder = Path(artifacts["windows"]).parent
    windows = read_windows(ArtifactRef(stage="windows", key=folder.name, path=str(folder)))
    windows = windows.take(DETECT, tokens)
    uninterrupted = averaged_probabilities(model, output_head(model), windows, batch_size=8,
                                           prefixes=prefix_grid(len(windows)))
    np.testing.assert_allclose(alpha, uninterrupted.alpha, rtol=0, atol=1e-12)


def test_prune_accepts_the_pruning_sweeps_options_without_listing_them(capsys):
    from cli.main import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--help"])
    usage = capsys.readouterr().out
    assert "--saliency" in usage and "--fraction " in usage
    for option in ("--fractions", "--random-seeds", "--eval-tokens", "--new-tokens"):
        assert option not in usage
    # A `run pruning` command line reused with `prune`: its sweep options are accepted.
    args = parser.parse_args(["prune", "--fraction", "0.3", "--out", "x", "--fractions",
                              "0,0.1", "--eval-tokens", "256", "--prompts", "2"])
    assert (args.fractions, args.eval_tokens, args.prompts) == ((0.0, 0.1), 256, 2)
    # `steer` refuses the steering sweep's own options instead.
    with pytest.raises(SystemExit):
        parser.parse_args(["steer", "--token", "a", "--ratio", "2", "--out", "x",
                           "--percentiles", "50"])
    assert "unrecognized arguments: --percentiles" in " ".join(capsys.readouterr().err.split())
