"""α sharded over a 2-worker local Dask cluster against one process (README: Dask).

The same detecting windows of the default model and corpus, once through
`averaged_probabilities` in this process and once through the `probabilities-sharded`
flow (prefect-dask's DaskTaskRunner, two single-threaded worker processes, each loading
the model and returning its partial sums). On a 2-core machine one process already uses
both cores, so the ratio shows the cost of the cluster more than a gain; the gain comes
with more machines (`--dask-address`). The numbers must agree to 1e-9.

    python -m benchmarks --only dask_shards [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import BATCH_SIZE, Fixture, Result, header, verdict
from tokprob.config import RunConfig
from tokprob.probabilities import averaged_probabilities, prefix_grid
from tokprob.store import ArtifactStore
from tokprob.windows import DETECT

NAME = "dask_shards"


def run(fixture: Fixture, quick: bool) -> list[Result]:
    header(NAME, "α on a 2-worker local Dask cluster vs one process")
    n_tokens = 4096 if quick else 16384
    windows = fixture.detect(n_tokens)
    model = fixture.model("float32")
    from tokprob.head import output_head

    started = time.perf_counter()
    single = averaged_probabilities(model, output_head(model), windows, BATCH_SIZE,
                                    prefixes=prefix_grid(len(windows)))
    single_seconds = time.perf_counter() - started

    from cli.environment import prepare_environment

    with tempfile.TemporaryDirectory() as scratch:
        from tokprob.workspace import Workspace

        workspace = Workspace.from_env(Path(scratch) / "data")
        prepare_environment(workspace)
        from tasks.shards import dask_runner, sharded_alpha

        store = ArtifactStore(workspace.artifacts)
        with store.write("windows", "bench", {}, {}, "bench") as out:
            out.write_table("windows.parquet", fixture.windows.to_arrow())
        ref = store.ref("windows", "bench")
        config = RunConfig(batch_size=BATCH_SIZE, shards=2)
        started = time.perf_counter()
        sharded = sharded_alpha.with_options(task_runner=dask_runner(config))(
            fixture.model_source, ref, n_tokens, len(windows), config,
            prefix_grid(len(windows)))
        sharded_seconds = time.perf_counter() - started
    worst = float(np.max(np.abs(sharded.alpha / single.alpha - 1.0)))
    ratio = single_seconds / sharded_seconds
    print(f"  {len(windows) * windows.shape[1]:,} tokens ({DETECT} split): one process "
          f"{single_seconds:.1f} s, 2 Dask workers {sharded_seconds:.1f} s (cluster start "
          "and model loads included)")
    print(f"  speed-up {ratio:.2f}×; max relative difference of α {worst:.1e}: "
          f"{verdict(worst <= 1e-9)}")
    return [Result(NAME, "one-process s ÷ 2-worker s", f"{ratio:.2f}×", "report", True),
            Result(NAME, "max rel. diff. of α", f"{worst:.1e}", "≤ 1e-09", worst <= 1e-9)]
