"""A cached re-run of the `encoding` flow against its cold run (README: Caching).

The flow (flows/encoding.py, default model and corpus, the default 32,768 tokens of α;
2,048 with --quick) runs in a fresh temporary data folder whose `downloads/` and
`models/` link to the main data folder's, so the cold run computes every stage but
downloads and dequantizes nothing. The same process then runs the flow again, where
every stage should come from the cache, `repeats` times (median). Both runs go through
the Prefect engine with a private temporary server; its start-up is timed apart (a
trivial flow runs first), and so are the imports of torch, transformers and datasets,
which a real run pays once per process whatever is cached. Ratio: cached ÷ cold
seconds. Goal: ≤ 3%.

The flow runs in a child process (this module with --child) so that Prefect's settings,
server and caches belong to the benchmark alone.

    python -m benchmarks --only cached_rerun [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import Fixture, Result, header, median, verdict

NAME = "cached_rerun"
GOAL = 0.03
MARKER = "BENCHMARK-RESULT "
TIMEOUT_S = 1800


def run(fixture: Fixture, quick: bool) -> list[Result]:
    header(NAME, "encoding flow re-run (all stages cached) vs cold run, fresh data folder")
    max_tokens = 2048 if quick else 32768
    repeats = 3
    with tempfile.TemporaryDirectory(prefix="tokprob-bench-") as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        # Pre-seeded with the fetched archives and the dequantized model: the cold run
        # measures computing the stages, not downloading.
        for name in ("downloads", "models"):
            (data / name).symlink_to(fixture.workspace.root / name, target_is_directory=True)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("PREFECT_")}
        env["PREFECT_HOME"] = str(Path(scratch) / "prefect")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.cached_rerun", "--child", str(data),
                 str(max_tokens), str(repeats)],
                capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as expired:
            done = subprocess.CompletedProcess(expired.cmd, -1, _text(expired.stdout),
                                               _text(expired.stderr) + f"\ntimed out after "
                                               f"{TIMEOUT_S} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        print(f"  the flow failed (exit status {done.returncode}); its last output:")
        print("\n".join("    " + line for line in (done.stdout + done.stderr)
                        .strip().splitlines()[-30:]))
        return [Result(NAME, "cached re-run s ÷ cold run s", "failed", f"≤ {GOAL:.0%}", False)]
    report = json.loads(lines[-1][len(MARKER):])
    cold, cached = report["cold_s"], median(report["cached_s"])
    ratio = cached / cold
    n_cached = sum(state == "cached" for state in report["cached_stages"].values())
    n_cold = sum(state == "cached" for state in report["cold_stages"].values())
    print(f"  max_tokens {max_tokens:,}; Prefect server start {report['server_s']:.1f} s and "
          f"imports {report['imports_s']:.1f} s, outside both timings")
    print(f"  cold run {cold:.1f} s ({n_cold}/{len(report['cold_stages'])} stages cached: "
          + ", ".join(f"{stage} {seconds:.1f} s"
                      for stage, seconds in report["cold_stage_s"].items()) + ")")
    print(f"  cached re-run {cached:.2f} s, median of {repeats} "
          f"({', '.join(f'{s:.2f}' for s in report['cached_s'])}); "
          f"{n_cached}/{len(report['cached_stages'])} stages cached")
    print(f"  ratio {ratio:.2%}; goal ≤ {GOAL:.0%}: {verdict(ratio <= GOAL)}")
    return [
        Result(NAME, "cached re-run s ÷ cold run s", f"{ratio:.2%}", f"≤ {GOAL:.0%}",
               ratio <= GOAL),
        Result(NAME, "stages cached on re-run",
               f"{n_cached}/{len(report['cached_stages'])}",
               f"{len(report['cached_stages'])}/{len(report['cached_stages'])}",
               n_cached == len(report["cached_stages"])),
    ]


def child(data_dir: str, max_tokens: int, repeats: int) -> None:
    """Run the flow cold, then `repeats` times cached, in this process; print the timings."""
    from cli.environment import prepare_environment
    from tokprob.workspace import Workspace

    workspace = Workspace.from_env(data_dir)
    prepare_environment(workspace)

    started = time.perf_counter()
    import datasets  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from prefect import flow

    from flows.encoding import encoding
    from tokprob.config import Detection, ProbabilityConfig
    imports_s = time.perf_counter() - started

    @flow(name="benchmark-warm-up")
    def warm_up() -> None:
        """Starts the temporary Prefect server."""

    started = time.perf_counter()
    warm_up()
    server_s = time.perf_counter() - started

    def timed_run() -> tuple[float, dict]:
        started = time.perf_counter()
        result = encoding(data_dir=workspace.data_dir,
                          detection=Detection(
                              probability_config=ProbabilityConfig(max_tokens=max_tokens)))
        return time.perf_counter() - started, result

    cold_started = time.time()
    cold_s, cold = timed_run()
    cold_stage_s = _stage_seconds(workspace, cold_started)
    cached = [timed_run() for _ in range(repeats)]
    print(MARKER + json.dumps({
        "imports_s": imports_s, "server_s": server_s, "cold_s": cold_s,
        "cold_stage_s": cold_stage_s, "cold_stages": cold["stages"],
        "cached_s": [seconds for seconds, _ in cached], "cached_stages": cached[-1][1]["stages"],
    }))


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _stage_seconds(workspace, started: float) -> dict[str, float]:
    """Seconds from one stage's artifact to the next (from `started` for the first): where
    the cold run's time goes, Prefect's overhead between stages included."""
    written = sorted((path.stat().st_mtime, path.parent.parent.name)
                     for path in workspace.artifacts.glob("*/*/manifest.json"))
    seconds = {}
    for when, stage in written:
        seconds[stage] = when - started
        started = when
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=3, metavar=("DATA_DIR", "MAX_TOKENS", "REPEATS"),
                        required=True)
    args = parser.parse_args()
    child(args.child[0], int(args.child[1]), int(args.child[2]))
