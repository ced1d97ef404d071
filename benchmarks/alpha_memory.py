"""Peak memory of streaming α at N and 4N tokens: it must not grow with |X| (paper §2.1).

Each size runs in a fresh child process (this module with --child) that loads the default
model in float32, reads the first N detecting windows of the default corpus (packed by
the parent and handed over as a small .npy file) and runs
`tokprob.probabilities.averaged_probabilities` with the pipeline's default batch size.
The child reports its peak resident set size before the first forward pass and after α:
the kernel's high-water mark VmHWM from /proc/self/status. (Not `getrusage().ru_maxrss`:
on Linux a child started by fork/vfork + exec inherits the parent's peak there, which
here is the benchmark runner's several GB.) A peak varies by several percent from run to
run (the allocator's timing; the memory-mapped weights, whose pages the kernel may evict
while other processes press on memory), so each size runs twice, interleaved (once with
--quick), and the higher peak counts. Ratio: peak at 4N ÷ peak at N. Goal: flat, ≤ 1.1.
N = 4,096 tokens (2,048 with --quick): at least one full batch, so both sizes run the
same batch shape and only the number of batches differs. For scale, one more child runs
the bare forward pass `model(input_ids=ids).logits` over the N tokens instead of α.

    python -m benchmarks --only alpha_memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import BATCH_SIZE, Fixture, Result, header, verdict

NAME = "alpha_memory"
GOAL = 1.1
MARKER = "BENCHMARK-RESULT "
TIMEOUT_S = 1200


def run(fixture: Fixture, quick: bool) -> list[Result]:
    header(NAME, "peak RSS of averaged_probabilities at N and 4N tokens, fresh processes")
    n_tokens = (1 if quick else 2) * BATCH_SIZE * fixture.windows.tokens.shape[1]
    repeats = 1 if quick else 2
    with tempfile.TemporaryDirectory(prefix="tokprob-bench-") as scratch:
        windows_file = Path(scratch) / "windows.npy"
        np.save(windows_file, fixture.detect(4 * n_tokens))
        peaks: dict[tuple[str, int], list[float]] = {}
        runs = [("alpha", n_tokens), ("alpha", 4 * n_tokens)] * repeats + [("bare", n_tokens)]
        for what, tokens in runs:
            report = _in_child(fixture.model_source.path, windows_file, tokens, what)
            if report is None:
                return [Result(NAME, "peak RSS at 4N ÷ at N", "failed", f"≤ {GOAL}", False)]
            peaks.setdefault((what, tokens), []).append(report["peak_mb"])
            label = "α" if what == "alpha" else "bare forward"
            print(f"  {label:<12} {report['tokens']:>6,} tokens: peak RSS "
                  f"{report['peak_mb']:,.0f} MB ({report['before_mb']:,.0f} MB before the first "
                  f"forward pass; took {report['seconds']:.1f} s)")
    ratio = max(peaks["alpha", 4 * n_tokens]) / max(peaks["alpha", n_tokens])
    print(f"  ratio 4N/N {ratio:.3f}" + (f" (highest of {repeats} each)" if repeats > 1 else "")
          + f"; goal ≤ {GOAL}: {verdict(ratio <= GOAL)}")
    return [Result(NAME, f"peak RSS at {4 * n_tokens:,} ÷ at {n_tokens:,} tokens",
                   f"{ratio:.3f}", f"≤ {GOAL}", ratio <= GOAL)]


def _in_child(model_path: str, windows_file: Path, tokens: int, what: str) -> dict | None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.alpha_memory", "--child", model_path,
             str(windows_file), str(tokens), what],
            capture_output=True, text=True, cwd=Path(__file__).parent.parent,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        print(f"  the {what} child for {tokens:,} tokens timed out after {TIMEOUT_S} s")
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        print(f"  the {what} child for {tokens:,} tokens failed (exit status "
              f"{done.returncode}); its last output:")
        print("\n".join("    " + line for line in (done.stdout + done.stderr)
                        .strip().splitlines()[-30:]))
        return None
    return json.loads(lines[-1][len(MARKER):])


def child(model_path: str, windows_file: str, n_tokens: int, what: str) -> None:
    """Load the model, run α (or the bare forward) over the first n_tokens windows, print
    the peak RSS."""
    from benchmarks.alpha_throughput import bare_forward
    from tokprob.head import output_head
    from tokprob.models import load_model
    from tokprob.probabilities import averaged_probabilities

    model = load_model(model_path)
    head = output_head(model)
    windows = np.load(windows_file)
    windows = windows[: n_tokens // windows.shape[1]]
    # The weights are memory-mapped: they become resident during the first forward pass.
    before_mb = _peak_mb()
    started = time.perf_counter()
    if what == "alpha":
        averaged_probabilities(model, head, windows, BATCH_SIZE)
    else:
        bare_forward(model, windows)
    print(MARKER + json.dumps({"tokens": int(windows.size), "before_mb": before_mb,
                               "peak_mb": _peak_mb(),
                               "seconds": time.perf_counter() - started}))


def _peak_mb() -> float:
    """Peak resident set size of this process so far, in MB (2**20 bytes)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # Elsewhere ru_maxrss is the best there is (kB on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=4, required=True,
                        metavar=("MODEL", "WINDOWS_NPY", "TOKENS", "alpha|bare"))
    args = parser.parse_args()
    child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
