"""Run the benchmarks and print one summary table: `python -m benchmarks [--quick]
[--only NAME]...` (see benchmarks/__init__.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from benchmarks import (
    alpha_memory,
    alpha_throughput,
    cached_rerun,
    corpus_scale,
    dask_shards,
    pruning_sweep,
    regression_solver,
    scale_memory,
    steering_sweep,
)
from benchmarks._common import Result, fixture, summary_table

# In this order: regression_solver reuses the float32 α that alpha_throughput computed.
BENCHMARKS = {
    module.NAME: module
    for module in (alpha_throughput, regression_solver, alpha_memory, cached_rerun,
                   steering_sweep, pruning_sweep, dask_shards, corpus_scale, scale_memory)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="tokprob benchmarks on the real default model and corpus, each against "
                    "a baseline measured in the same run.")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    chosen = [name for name in BENCHMARKS if not args.only or name in args.only]
    print(f"tokprob benchmarks{' (quick)' if args.quick else ''}: {', '.join(chosen)}")
    shared = fixture()
    results: list[Result] = []
    crashed = False
    for name in chosen:
        try:
            results += BENCHMARKS[name].run(shared, args.quick)
        except Exception:
            crashed = True
            traceback.print_exc()
            results.append(Result(name, "crashed (traceback above)", "-", "-", False))
    print(f"\nSummary ({time.perf_counter() - started:.0f} s in all"
          f"{', quick sizes' if args.quick else ''}):\n")
    print(summary_table(results))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
