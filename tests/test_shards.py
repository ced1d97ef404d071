"""α sharded over a local Dask cluster (prefect-dask) against a single process."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import last_flow_run_id

from tokprob.config import Corpus, Detection, ProbabilityConfig, RunConfig, WindowConfig

pytestmark = pytest.mark.prefect


def test_sharded_alpha_equals_single_process_alpha(prefect_api, tiny_models, tiny_text_dir,
                                                   tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.encoding import encoding

    runs = {}
    for shards in (1, 2):
        runs[shards] = encoding(
            model=str(tiny_models["llama"]), corpus=Corpus(dataset=str(tiny_text_dir)),
            data_dir=str(tmp_path / f"shards-{shards}"), detection=Detection(
                window_config=WindowConfig(window=16, heldout_fraction=0.2),
                run_config=RunConfig(batch_size=3, shards=shards),
                probability_config=ProbabilityConfig(max_tokens=160)))
    single, sharded = (pq.read_table(runs[s]["artifacts"]["probabilities"]).to_pandas()
                       for s in (1, 2))
    np.testing.assert_allclose(sharded["alpha"], single["alpha"], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(sharded["count"], single["count"])
    prefix_files = [pq.read_table(runs[s]["artifact_dirs"]["probabilities"]
                                  + "/alpha_prefixes.parquet").to_pandas() for s in (1, 2)]
    assert list(prefix_files[0].columns) == list(prefix_files[1].columns)
    for column in prefix_files[0].columns[1:]:
        np.testing.assert_allclose(prefix_files[1][column], prefix_files[0][column], rtol=1e-9)
    assert runs[2]["perplexity"] == pytest.approx(runs[1]["perplexity"], rel=1e-9)

    # The shards are task runs of the sharded run's subflow (probabilities-sharded).
    subflows = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
        any_=[last_flow_run_id(tmp_path / "shards-2")]))
    with get_client(sync_client=True) as client:
        names = [run.name for run in client.read_task_runs(flow_run_filter=subflows)]
    assert sum(name.startswith("alpha-shard") for name in names) == 2


def test_each_worker_takes_its_own_gpu_where_there_are_gpus():
    from tasks.shards import pinned_device

    assert [pinned_device("auto", position, 2) for position in range(3)] == [
        "cuda:0", "cuda:1", "cuda:0"]
    assert pinned_device("cuda", 3, 4) == "cuda:3"
    assert pinned_device("auto", 1, 0) == "auto"
    assert pinned_device("cpu", 1, 2) == "cpu"
    assert pinned_device("cuda:1", 0, 2) == "cuda:1"  # a device named by the user stays


def test_alpha_on_a_running_dask_cluster_loads_the_model_in_the_workers_only(
        prefect_api, tiny_models, tiny_text_dir, tmp_path, monkeypatch):
    from distributed import LocalCluster

    import tasks.probabilities
    from flows.encoding import encoding

    def run(data: str, config: RunConfig):
        return encoding(model=str(tiny_models["phi"]), corpus=Corpus(dataset=str(tiny_text_dir)),
                        data_dir=str(tmp_path / data), detection=Detection(
                            window_config=WindowConfig(window=16, heldout_fraction=0.2),
                            run_config=config,
                            probability_config=ProbabilityConfig(max_tokens=160)))

    def refuse(*args, **kwargs):
        raise AssertionError("the flow's own process loaded the model")

    monkeypatch.setattr(tasks.probabilities, "load_model", refuse)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        sharded = run("sharded", RunConfig(batch_size=3, shards=2,
                                           dask_address=cluster.scheduler_address))
    monkeypatch.undo()
    single = run("single", RunConfig(batch_size=3))
    alphas = [pq.read_table(result["artifacts"]["probabilities"]).column("alpha").to_numpy()
              for result in (sharded, single)]
    np.testing.assert_allclose(alphas[0], alphas[1], rtol=1e-9, atol=0)
