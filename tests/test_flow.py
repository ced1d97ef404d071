"""The encoding flow through the Prefect engine: caching, forced re-runs, damaged
artifacts, interrupted runs, and the artifacts shown in the UI."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import VOCAB_ROWS, last_flow_run_id

from tokprob.config import (
    Corpus,
    Detection,
    HiddenConfig,
    ProbabilityConfig,
    RegressionConfig,
    WindowConfig,
)
from tokprob.store import ArtifactStore
from tokprob.workspace import Workspace

pytestmark = pytest.mark.prefect

UPSTREAM = ["corpus", "windows", "embeddings", "probabilities"]
DOWNSTREAM_OF_REGRESSION = ["regression", "sparsity", "pca", "figures"]


@pytest.fixture
def run(prefect_api, tiny_models, tiny_text_dir, tmp_path):
    from flows.encoding import encoding

    def run_encoding(data_dir=tmp_path / "data", model="gpt_neox", **overrides):
        small = {"window_config": WindowConfig(window=16, heldout_fraction=0.2),
                 "probability_config": ProbabilityConfig(max_tokens=160)}
        options = {"detection": Detection(**small | overrides.pop("detection", {}))} | overrides
        return encoding(model=str(tiny_models[model]), corpus=Corpus(dataset=str(tiny_text_dir)),
                        data_dir=str(data_dir), **options)

    return run_encoding


def _states(result, state):
    return sorted(stage for stage, s in result["stages"].items() if s == state)


def test_first_run_computes_then_everything_is_cached(run):
    first = run()
    assert set(first["stages"].values()) == {"computed"}
    second = run()
    assert set(second["stages"].values()) == {"cached"}
    for number in ("r2", "adj_r2", "f_stat", "n_tokens", "significant_dims"):
        assert second[number] == first[number]
    assert first["n_tokens"] == 160 and first["window"] == 16
    assert (first["vocab_size"], first["hidden_size"], first["tied"]) == (VOCAB_ROWS, 32, False)
    # Each run's report is named by its run, which names its flow once.
    report = Path(first["report"])
    assert report.is_file() and report.name.startswith("encoding-gpt_neox-")


def test_artifacts_follow_the_documented_schemas(run):
    result = run()
    probs = pq.read_table(result["artifacts"]["probabilities"])
    assert probs.column_names == ["token_id", "token", "alpha", "count"]
    assert probs.num_rows == VOCAB_ROWS
    assert sum(probs.column("count").to_pylist()) == 10 * 15  # 10 windows × 15 next tokens
    embeddings = pq.read_table(result["artifacts"]["embeddings"])
    assert embeddings.column_names == ["token_id"] + [f"d{j}" for j in range(32)]
    regression = pq.read_table(result["artifacts"]["regression"])
    assert regression.column_names == ["dim", "slope", "std_err", "t", "p"]
    assert regression.num_rows == 32
    for plot in result["plots"].values():
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_table_and_summary_of_a_run_has_what_the_catalog_lists(run):
    from typing import get_type_hints

    from tasks.catalog import CATALOG
    from tokprob.store import ArtifactRef, ArtifactStore

    result = run()
    for name, folder in result["artifact_dirs"].items():
        ref = ArtifactRef(stage=Path(folder).parent.name, key=Path(folder).name, path=folder)
        files = CATALOG[ref.stage]
        for table in files.tables:
            if table.path(ref).is_file() or table is files.main:
                assert len(table.read(ref)) > 0, (name, table.file)
        summary = ArtifactStore(Path(folder).parent.parent).manifest(ref).summary
        assert set(get_type_hints(files.summary)) <= set(summary), name


def test_changed_regression_parameter_reruns_only_regression_and_downstream(run):
    run()
    changed = run(detection={"regression_config": RegressionConfig(target="frequency")})
    assert _states(changed, "cached") == sorted(UPSTREAM)
    assert _states(changed, "computed") == sorted(DOWNSTREAM_OF_REGRESSION)
    assert changed["target"] == "frequency"


def test_refresh_forces_a_stage_and_what_depends_on_it(run):
    run()
    forced = run(refresh=["regression"])
    assert _states(forced, "cached") == sorted(UPSTREAM)
    assert _states(forced, "computed") == sorted(DOWNSTREAM_OF_REGRESSION)


def test_unknown_stage_to_refresh_is_an_error(run):
    from prefect.exceptions import ParameterTypeError

    # Refused by the flow's parameter schema, which lists the stages, before any stage.
    with pytest.raises(ParameterTypeError, match=r"refresh\.0: Input should be 'corpus'"):
        run(refresh=["regresion"])


def test_damaged_artifact_is_detected_and_recomputed(run, tmp_path):
    first = run()
    path = Path(first["artifacts"]["probabilities"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    repaired = run()
    assert repaired["stages"]["probabilities"] == "computed"
    # The recomputed α is bit-identical, so everything downstream keeps its key.
    assert repaired["stages"]["regression"] == "cached"
    store = ArtifactStore(Workspace.from_env(tmp_path / "data").artifacts)
    key = first["artifact_dirs"]["probabilities"].rsplit("/", 1)[-1]
    assert store.verify("probabilities", key) is not None


def test_stages_reused_from_the_store_count_as_cached_without_prefects_record(run, tmp_path):
    """Prefect's cache records gone (a new PREFECT_HOME, a deleted folder): every stage
    still comes from the store, and the summary says so."""
    import shutil

    from tokprob.summary import encoding_text

    first = run()
    shutil.rmtree(Workspace.from_env(tmp_path / "data").prefect_results)
    again = run()
    assert _states(again, "computed") == []
    assert again["artifact_dirs"] == first["artifact_dirs"]
    count = len(again["stages"])
    assert f"stages: {count} of {count} from cache" in encoding_text(again)


def test_max_tokens_beyond_the_corpus_is_said_with_the_tokens_it_holds(run, caplog,
                                                                        tmp_path):
    with caplog.at_level(logging.WARNING, logger="tokprob"):
        result = run(detection={"probability_config": ProbabilityConfig(max_tokens=10**6)})
    windows = ArtifactStore(Workspace.from_env(tmp_path / "data").artifacts).verify(
        "windows", result["artifact_dirs"]["windows"].rsplit("/", 1)[-1]).summary
    held = windows["detect_windows"] * windows["window"]
    assert result["n_tokens"] == held
    warnings = [r.getMessage() for r in caplog.records if "--max-tokens" in r.getMessage()]
    assert warnings == [f"--max-tokens 1000000 is more than the corpus holds: its detecting "
                        f"split has {held:,} tokens ({windows['detect_windows']} windows of "
                        "16); α averages over all of them"]


def test_locks_left_by_dead_or_replaced_processes_do_not_stop_a_run(run, tmp_path):
    """Every stage's lock left behind: empty (its writer died on a full disk) or naming a
    process id that now belongs to another process. The run takes them over."""
    import json
    import os
    import shutil
    import signal
    import socket
    import time

    run()
    workspace = Workspace.from_env(tmp_path / "data")
    keys = sorted(path.name for path in workspace.prefect_results.iterdir())
    shutil.rmtree(workspace.prefect_results)  # so that each stage takes its lock again
    (workspace.root / "locks").mkdir(exist_ok=True)
    for number, key in enumerate(keys):
        lock = workspace.root / "locks" / f"{key}.lock"
        if number % 2:
            lock.touch()
            os.utime(lock, (time.time() - 60, time.time() - 60))
        else:  # this live process, but not the one that started at tick 1
            lock.write_text(json.dumps({"holder": "gone", "expiration": None, "pid": os.getpid(),
                                        "host": socket.gethostname(), "started": "1"}))

    def stuck(*_):
        raise TimeoutError("the run still waits on a lock whose holder is gone")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(300)
    try:
        again = run()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert _states(again, "computed") == []
    assert not list((workspace.root / "locks").glob("*.lock"))


def test_deleted_artifact_is_recomputed(run):
    import shutil

    first = run()
    shutil.rmtree(first["artifact_dirs"]["pca"])
    again = run()
    assert again["stages"]["pca"] == "computed"
    assert again["pc1_r"] == pytest.approx(first["pc1_r"])


def test_interrupted_run_resumes_from_finished_stages(run, monkeypatch):
    import tokprob.pca

    def crash(*args, **kwargs):
        raise RuntimeError("killed while computing PCA")

    monkeypatch.setattr(tokprob.pca, "pca_from_gram", crash)
    monkeypatch.setattr("tasks.pca.pca_from_gram", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run()
    monkeypatch.undo()
    resumed = run()
    assert _states(resumed, "cached") == sorted([*UPSTREAM, "regression", "sparsity"])
    assert _states(resumed, "computed") == ["figures", "pca"]


def test_another_data_dir_does_not_reuse_this_ones_cache(run, tmp_path):
    run(data_dir=tmp_path / "one")
    other = run(data_dir=tmp_path / "two")
    assert set(other["stages"].values()) == {"computed"}
    assert other["artifacts"]["regression"].startswith(str(tmp_path / "two"))


def test_hidden_states_are_kept_on_request(run):
    result = run(keep_hidden=True, hidden_config=HiddenConfig(heldout_tokens=32))
    hidden = pq.read_table(result["artifacts"]["hidden"])
    assert hidden.num_rows == 32  # two held-out windows of 16
    assert hidden.column("hidden").type.list_size == 32


def test_hidden_states_of_the_detecting_split_are_a_stage_of_their_own(
        prefect_api, tiny_models, tiny_text_dir, tmp_path):
    from prefect import flow

    from flows.encoding import detect, keep_hidden_states
    from tasks.catalog import read_windows
    from tasks.runner import StageRunner
    from tokprob.config import RunConfig
    from tokprob.windows import DETECT, HELDOUT

    @flow
    def both_splits():
        workspace = Workspace.from_env(tmp_path / "data")
        stage = StageRunner(workspace, [], ["hidden"])
        config = HiddenConfig(heldout_tokens=48)
        found = detect(stage, workspace, str(tiny_models["gpt_neox"]),
                       Corpus(dataset=str(tiny_text_dir)),
                       Detection(window_config=WindowConfig(window=16, heldout_fraction=0.2),
                                 probability_config=ProbabilityConfig(max_tokens=160)),
                       config.heldout_tokens)
        held = keep_hidden_states(stage, workspace, found, RunConfig(), config)
        calibrate = keep_hidden_states(stage, workspace, found, RunConfig(), config, DETECT)
        return found, held, calibrate, stage.states

    found, held, calibrate, states = both_splits()
    assert held.key != calibrate.key and {"hidden", "hidden-detect"} <= set(states)
    packed = read_windows(found.windows)
    for ref, split in ((held, HELDOUT), (calibrate, DETECT)):
        table = pq.read_table(Path(ref.path) / "hidden.parquet")
        inputs = table.column("input_id").to_numpy().reshape(-1, 16)
        assert (inputs == packed.take(split, 48)).all()


def test_stages_publish_prefect_artifacts(run, tmp_path, tiny_text_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    result = run(model="llama")
    # <stage>-<model>-<dataset>, the corpus stage without a model.
    subject = f"{result['model'].lower()}-{tiny_text_dir.name.lower()}"
    keys = [f"{stage}-{subject}" for stage in ("regression", "sparsity", "pca", "encoding")]
    keys.append(f"corpus-{tiny_text_dir.name.lower()}")
    with get_client(sync_client=True) as client:  # this run's, not an earlier test's
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys),
            flow_run_id=ArtifactFilterFlowRunId(any_=[last_flow_run_id(tmp_path / "data")])))
    assert {artifact.key for artifact in found} == set(keys)
    summary = next(a for a in found if a.key == f"encoding-{subject}")
    assert "adjusted R²" in summary.data


def test_long_loops_show_progress_in_the_ui(run, tmp_path, tiny_text_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    result = run(model="gpt2", keep_hidden=True, hidden_config=HiddenConfig(heldout_tokens=32))
    subject = f"{result['model'].lower()}-{tiny_text_dir.name.lower()}"
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[last_flow_run_id(tmp_path / "data")])))
    progress = {a.key: a for a in found if a.type == "progress"}
    for stage in ("probabilities", "hidden"):
        artifact = progress[f"{stage}-progress-{subject}"]
        assert float(artifact.data) == 100.0 and "(100%" in artifact.description


def test_stage_logs_reach_the_run_log_when_the_flow_is_called_from_python(run, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    run(model="phi")  # a function call, as from a notebook: no command line set-up
    run_id = last_flow_run_id(tmp_path / "data")
    deadline = time.monotonic() + 30  # log lines reach the server in batches
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[run_id])))
        lines = [entry.message for entry in logs if entry.name == "tokprob"]
        if any(line.startswith("α over 160 tokens") for line in lines):
            break
        assert time.monotonic() < deadline, lines
        time.sleep(1)


def test_flow_runs_are_named_and_tagged_by_model_and_dataset(run, tmp_path, tiny_text_dir,
                                                              tiny_models):
    from prefect.client.orchestration import get_client

    run(model="gpt2")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(last_flow_run_id(tmp_path / "data"))
    assert flow_run.name.startswith(f"encoding-gpt2-{tiny_text_dir.name}-")
    assert {"model:gpt2", f"dataset:{tiny_text_dir.name}"} <= set(flow_run.tags)
