"""α sharded over a Dask cluster (prefect-dask's DaskTaskRunner): each shard of the
detecting windows runs in a worker and returns its partial sums; the sums add up to α.

The probabilities stage calls this when `--shards` is above 1; it runs as a sub-flow of
that stage, on a local cluster of that many single-threaded workers, or on the cluster
at `--dask-address` (whose workers must see the same data folder). Only the workers load
the model, each once.
"""

from __future__ import annotations

import os
from functools import lru_cache

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tasks.catalog import read_windows
from tokprob.config import RunConfig
from tokprob.head import check_head, output_head
from tokprob.model_sources import ModelSource
from tokprob.models import load_model
from tokprob.probabilities import (
    AlphaResult,
    PartialSums,
    alpha_sums,
    combine,
    shard_bounds,
    shard_cuts,
)
from tokprob.store import ArtifactRef
from tokprob.windows import DETECT


@task(name="alpha-shard", cache_policy=NO_CACHE, persist_result=False)
def alpha_shard(model: ModelSource, windows: ArtifactRef, max_tokens: int, start: int,
                stop: int, run: RunConfig, cuts: list[int]) -> PartialSums:
    """Partial sums of α over detecting windows [start, stop), with the model this worker
    loaded once, on its own GPU where there are GPUs, and threads shared fairly with the
    other workers of its machine."""
    import torch

    position, workers = _place_on_machine()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    device = pinned_device(run.device, position, torch.cuda.device_count())
    lm = _worker_model(model.path, run.dtype, device)
    chosen = read_windows(windows).take(DETECT, max_tokens)[start:stop]
    return alpha_sums(lm, output_head(lm), chosen, run.batch_size, cuts=cuts)


@flow(name="probabilities-sharded")
def sharded_alpha(model: ModelSource, windows: ArtifactRef, max_tokens: int, n_windows: int,
                  run: RunConfig, prefixes: list[int]) -> AlphaResult:
    """Submit one shard task per range of batches, then add their sums. The model is
    loaded by the workers only."""
    futures = [alpha_shard.submit(model, windows, max_tokens, start, stop, run,
                                  shard_cuts(start, stop, prefixes))
               for start, stop in shard_bounds(n_windows, run.shards, run.batch_size)]
    return combine([future.result() for future in futures], prefixes)


def pinned_device(requested: str, position: int, gpus: int) -> str:
    """The device of the worker at `position` among its machine's workers: with `auto` or
    `cuda` and GPUs present, a GPU of its own (round robin); otherwise as requested."""
    if requested in ("auto", "cuda") and gpus > 0:
        return f"cuda:{position % gpus}"
    return requested


@lru_cache(maxsize=1)
def _worker_model(path: str, dtype: str, device: str):
    """The model, loaded and checked once per worker process however many shards it runs
    (one model at a time: a worker serves one run)."""
    lm = load_model(path, dtype, device)
    head = output_head(lm)
    check_head(lm, head, head.vocab_size)
    return lm


def _place_on_machine() -> tuple[int, int]:
    """This worker's position among the Dask workers of its machine, and their number
    ((0, 1) outside a Dask worker)."""
    from distributed import get_client, get_worker

    try:
        worker = get_worker()
    except ValueError:
        return 0, 1
    workers = get_client().scheduler_info(n_workers=-1)["workers"]
    host = workers[worker.address]["host"]
    mine = sorted(address for address, info in workers.items() if info["host"] == host)
    return mine.index(worker.address), len(mine)


def dask_runner(run: RunConfig):
    """A local cluster of `shards` single-threaded worker processes, or the given one."""
    from prefect_dask import DaskTaskRunner

    if run.dask_address:
        return DaskTaskRunner(address=run.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": run.shards, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})
