"""Against a real Prefect server started on loopback by the test (`tokprob server`): flow
runs, their task runs and artifacts read back through the Prefect API, a served
deployment triggered by its schedule, and the UI's flow-run page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

TINY_RUN = ["--window", "16", "--heldout-fraction", "0.2", "--max-tokens", "160"]
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`tokprob server` on a free loopback port, with its own data folder."""
    data = tmp_path_factory.mktemp("served") / "data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "server", "--port", str(port), "--data-dir",
         str(data)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                break
        except OSError:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not answer in 120 s"
            time.sleep(0.5)
    yield {"api": api, "ui": f"http://127.0.0.1:{port}", "data": data, "env": env}
    # SIGTERM, as `kill` or a service manager sends it: the server itself must stop too.
    process.terminate()
    process.wait(timeout=60)
    assert not _answers(f"{api}/health"), "the Prefect server outlived `tokprob server`"
    assert not (data / "prefect" / "tokprob-server.json").exists()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _tokprob(server, *args, timeout=600):
    """The CLI with no PREFECT_* settings at all: it must find the server by itself."""
    return subprocess.run([sys.executable, "-m", "cli.main", *args, "--data-dir",
                           str(server["data"])], env=server["env"], capture_output=True,
                          text=True, timeout=timeout)


def _client(server):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(server["api"])


def _flow_runs(client, flow_name: str, deployment_id=None):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterName,
    )

    deployments = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])) \
        if deployment_id else None
    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                 deployment_filter=deployments)


def _task_states(client, flow_run_id, timeout: float = 60.0) -> dict[str, str]:
    """Final states of a flow run's task runs. Task-run states reach the server as events,
    so they may trail the flow run's own state for a moment: wait until none is running."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[flow_run_id])))
        states = {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}
        if not set(states.values()) & {"Pending", "Running", "Scheduled"} \
                or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_runs_against_the_server_and_reads_back_states_and_artifacts(server, tiny_models,
                                                                      tiny_text_dir):
    arguments = ["run", "encoding", "--model", str(tiny_models["gpt_neox"]), "--dataset",
                 str(tiny_text_dir), *TINY_RUN, "--json"]
    for _ in range(2):
        done = _tokprob(server, *arguments)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Starting temporary server" not in done.stderr  # it used the running one
    with _client(server) as client:
        runs = sorted(_flow_runs(client, "encoding"), key=lambda run: run.start_time)
        assert len(runs) == 2 and all(run.state.is_completed() for run in runs)
        first, second = (_task_states(client, run.id) for run in runs)
        stages = ["corpus", "windows", "embeddings", "probabilities", "regression",
                  "sparsity", "pca", "figures"]
        assert all(first[stage] == "Completed" for stage in stages)
        assert all(second[stage] == "Cached" for stage in stages)
        artifacts = client.read_artifacts()
        keys = {artifact.key for artifact in artifacts}
        corpus = tiny_text_dir.name.lower()
        assert {f"regression-gpt-neox-{corpus}", f"encoding-gpt-neox-{corpus}",
                "report-encoding-gpt-neox"} <= keys
        links = [a for a in artifacts if a.key == "report-encoding-gpt-neox"]
        # The link opens over http from the UI's page; the report and its figures load.
        assert links and all("http://127.0.0.1:" in a.data for a in links)
        url = re.search(r"http://[^)\s]+\.html", links[-1].data).group(0)
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        content = [a for a in artifacts if a.key == "report-encoding-gpt-neox-content"]
        assert content and "tokprob report" in content[-1].data
        # Stages that load a model share one slot: two runs never load models at once.
        limit = client.read_concurrency_limit_by_tag("tokprob-model")
        assert limit.concurrency_limit == 1
        tasks = client.read_task_runs()
        tagged = {run.name.rsplit("-", 1)[0] for run in tasks if "tokprob-model" in run.tags}
        assert {"probabilities", "embeddings"} <= tagged and "regression" not in tagged
    server["encoding_run"] = runs[-1]


def _tiny_deployment(folder: Path, name: str, model: Path, text_dir: Path,
                     interval: int) -> Path:
    """A prefect.yaml with one encoding deployment of a tiny model on an interval (its
    work pool is there because `prefect deploy` wants one; `tokprob serve` ignores it)."""
    config = folder / "prefect.yaml"
    config.write_text(f"""
deployments:
  - name: {name}
    entrypoint: flows/encoding.py:encoding
    parameters:
      model: "{model}"
      corpus: {{dataset: "{text_dir}"}}
      detection:
        window_config: {{window: 16, heldout_fraction: 0.2}}
        probability_config: {{max_tokens: 160}}
    schedules:
      - interval: {interval}
    work_pool: {{name: unused-by-serve}}
""")
    return config


def test_a_served_deployment_runs_on_its_schedule_from_cache(server, tiny_models,
                                                            tiny_text_dir, tmp_path):
    config = _tiny_deployment(tmp_path, "every-few-seconds", tiny_models["llama"],
                              tiny_text_dir, interval=8)
    served = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(config),
                               "--data-dir", str(server["data"])], env=server["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with _client(server) as client:
            deadline = time.monotonic() + 300
            while True:
                deployment = next((d for d in client.read_deployments()
                                   if d.name == "every-few-seconds"), None)
                runs = _flow_runs(client, "encoding", deployment.id) if deployment else []
                done = sorted((r for r in runs if r.state.is_completed()),
                              key=lambda run: run.start_time)
                # Runs 8 s apart may overlap (then each stage is computed by one of them
                # and the other waits for it); a run that starts after another has ended
                # must take every stage from the cache.
                later = next((b for a in done for b in done if b.start_time > a.end_time),
                             None)
                if later is not None:
                    break
                assert served.poll() is None, served.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "no two consecutive scheduled runs in 300 s"
                time.sleep(2)
            assert all(run.auto_scheduled for run in done)
            states = _task_states(client, later.id)
            stages = ["corpus", "windows", "embeddings", "probabilities", "regression",
                      "sparsity", "pca", "figures"]
            assert {stage: states[stage] for stage in stages} == dict.fromkeys(stages, "Cached")
            every_run = [_task_states(client, run.id) for run in done]
            for stage in stages:  # overlapping or not, no stage was computed twice
                assert sum(run[stage] == "Completed" for run in every_run) <= 1, stage
    finally:
        _stop(served)


ENCODING_STAGES = ["corpus", "windows", "embeddings", "probabilities", "regression",
                   "sparsity", "pca", "figures"]


def test_tokprob_serve_without_a_server_runs_its_schedules_on_a_temporary_one(
        tmp_path, tiny_models, tiny_text_dir):
    """With no Prefect server to use, `tokprob serve` starts its own, with the scheduler
    that an API-only temporary server leaves out, and serves on it rather than on an
    ephemeral server of Prefect's (whose settings Prefect read before the command chose)."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    config = _tiny_deployment(tmp_path, "often", tiny_models["gpt2"], tiny_text_dir,
                              interval=30)
    log = tmp_path / "serve.log"
    with log.open("w") as output:  # a file: a pipe nobody reads would fill and block it
        served = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(config),
                                   "--data-dir", str(data)], env=env, cwd=ROOT,
                                  stdout=output, stderr=subprocess.STDOUT)
    servers = tmp_path / "prefect" / "temporary-servers"
    try:
        deadline = time.monotonic() + 300
        while not list((data / "runs").glob("*-encoding-*.json")):
            assert served.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no scheduled run finished in 300 s"
            time.sleep(2)
        run = json.loads(sorted((data / "runs").glob("*.json"))[0].read_text())
        [server] = [json.loads(path.read_text()) for path in servers.glob("*.json")]
        url = f"{server['api_url']}/flow_runs/{run['flow_run_id']}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            flow_run = json.loads(answer.read())
        assert flow_run["auto_scheduled"] is True
        assert flow_run["state"]["type"] == "COMPLETED"
    finally:
        _stop(served)
    assert "serving on a temporary one" in log.read_text()
    assert not list(servers.glob("*.json")), "the temporary server outlived the command"


def _prefect(*args, cwd, env, timeout=300):
    """The `prefect` command, as a user types it."""
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def _stop(process: subprocess.Popen, must_stop_in_time: bool = True) -> None:
    """SIGTERM, then SIGKILL after a minute: no process outlives its test to load the
    server for the next ones. A command of tokprob's own that takes longer fails its
    test; Prefect's worker, whose shutdown is not tokprob's, is only killed."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        if must_stop_in_time:
            raise


def _finished(client, flow_run_id, worker, timeout=300):
    deadline = time.monotonic() + timeout
    while not (run := client.read_flow_run(flow_run_id)).state.is_final():
        assert worker.poll() is None, worker.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"the flow run is still {run.state.name}"
        time.sleep(1)
    return run


def _model_limit(client, timeout=60):
    """The concurrency limit of the stages that load a model, once it is set."""
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.read_concurrency_limit_by_tag("tokprob-model")
        except ObjectNotFound:
            assert time.monotonic() < deadline, "no concurrency limit on tokprob-model"
            time.sleep(0.5)


def test_prefect_deploy_and_a_process_worker_run_the_shipped_deployments(
        server, tiny_models, tiny_text_dir, tmp_path):
    """prefect.yaml the way a Prefect user takes it: a process work pool, `prefect deploy
    --all` from the checkout (a copy here), a worker started elsewhere; a run triggered
    through the API completes, and a second one takes every stage from the cache."""
    checkout = tmp_path / "checkout"
    for part in ("flows", "tasks", "tokprob"):
        shutil.copytree(ROOT / part, checkout / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("prefect.yaml", "pyproject.toml"):
        shutil.copy(ROOT / part, checkout / part)
    env = server["env"] | {"PREFECT_API_URL": server["api"],
                           "PREFECT_HOME": str(tmp_path / "prefect-home"),
                           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with _client(server) as client:  # `tokprob server` sets the limit; prefect.yaml too
        client.delete_concurrency_limit_by_tag(_model_limit(client).tag)
    _prefect("work-pool", "create", "--type", "process", "tokprob", cwd=checkout, env=env)
    _prefect("--no-prompt", "deploy", "--all", cwd=checkout, env=env)
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                               "tokprob"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    data = tmp_path / "data"
    parameters = {"model": str(tiny_models["gpt2"]), "corpus": {"dataset": str(tiny_text_dir)},
                  "detection": {"window_config": {"window": 16, "heldout_fraction": 0.2},
                                "probability_config": {"max_tokens": 160}},
                  "data_dir": str(data)}
    try:
        with _client(server) as client:
            deployments = {d.name: d for d in client.read_deployments()
                           if d.work_pool_name == "tokprob"}
            assert set(deployments) == {"nightly-encoding", "nightly-steering",
                                        "nightly-pruning", "weekly-paper"}
            encoding = deployments["nightly-encoding"]
            assert [(s.schedule.cron, s.active) for s in encoding.schedules] \
                == [("0 2 * * *", True)]
            assert encoding.tags == ["tokprob"]
            assert encoding.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                            {"directory": str(checkout.resolve())}}]
            assert _model_limit(client, timeout=0).concurrency_limit == 1
            runs = []
            for _ in range(2):
                run = client.create_flow_run_from_deployment(encoding.id,
                                                             parameters=parameters)
                runs.append(_finished(client, run.id, worker))
            assert all(run.state.is_completed() for run in runs), \
                [run.state.message for run in runs]
            first, second = (_task_states(client, run.id) for run in runs)
            assert {stage: first[stage] for stage in ENCODING_STAGES} \
                == dict.fromkeys(ENCODING_STAGES, "Completed")
            assert {stage: second[stage] for stage in ENCODING_STAGES} \
                == dict.fromkeys(ENCODING_STAGES, "Cached")
            assert (data / "artifacts" / "regression").is_dir()  # the run's data folder
    finally:
        _stop(worker, must_stop_in_time=False)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_ui_shows_the_flow_run(server):
    run = server.get("encoding_run")
    assert run is not None, "runs after test_runs_against_the_server_…"
    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "ui-flow-run.png"
    page = f"{server['ui']}/runs/flow-run/{run.id}"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
               "--virtual-time-budget=20000", f"--user-data-dir={shot.parent / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True,
                         timeout=180)
    assert run.name in dom.stdout, dom.stderr[-2000:]
    subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True,
                   timeout=180, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
