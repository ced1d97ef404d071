"""Stage `probabilities`: α over the detecting split, with next-token counts (paper §2.1)."""

from __future__ import annotations

import logging
import time

import pyarrow as pa
from prefect import task

from tasks._io import PREFIXES_FILE, PROBABILITIES_FILE
from tasks._stage import publish_table, register, run_stage
from tasks.windows import read_windows
from tokprob.config import ProbabilityConfig, RunConfig
from tokprob.errors import TokprobError
from tokprob.models import ModelSource, check_head, load_model, load_tokenizer, output_head
from tokprob.probabilities import averaged_probabilities, prefix_grid
from tokprob.progress import Progress
from tokprob.store import ArtifactRef
from tokprob.windows import DETECT
from tokprob.workspace import Workspace

log = logging.getLogger("tokprob")

STAGE = "probabilities"


@task(**register(STAGE, __name__, environment=("torch", "transformers")))
def probabilities(workspace: Workspace, windows: ArtifactRef, model: ModelSource,
                  run: RunConfig, config: ProbabilityConfig, force: bool = False) -> ArtifactRef:
    """Stream the model over the detecting windows and average its softmax."""

    def compute(out):
        detect = read_windows(windows).take(DETECT, config.max_tokens)
        if len(detect) == 0:
            raise TokprobError(
                f"--max-tokens {config.max_tokens} is less than one window of "
                f"{read_windows(windows).tokens.shape[1]} tokens; raise --max-tokens or lower "
                "--window."
            )
        if len(detect) < config.max_tokens // detect.shape[1]:
            log.warning("--max-tokens %d is more than the corpus holds: its detecting split "
                        "has %s tokens (%d windows of %d); α averages over all of them",
                        config.max_tokens, f"{detect.size:,}", len(detect), detect.shape[1])
        lm = load_model(model.path, run.dtype, run.device)
        head = output_head(lm)
        check_head(lm, head, head.vocab_size)
        if run.shards > 1:
            from tasks.shards import dask_runner, sharded_alpha

            started = time.monotonic()
            result = sharded_alpha.with_options(task_runner=dask_runner(run))(
                model, windows, config.max_tokens, len(detect), run, prefix_grid(len(detect)))
            rate = detect.size / (time.monotonic() - started)
        else:
            with Progress(detect.size, f"α over {detect.size:,} tokens") as progress:
                result = averaged_probabilities(lm, head, detect, run.batch_size, progress,
                                                prefixes=prefix_grid(len(detect)))
            rate = progress.rate
        tokens = token_strings(load_tokenizer(model.path), head.vocab_size)
        out.write_table(PROBABILITIES_FILE, pa.table({
            "token_id": pa.array(range(head.vocab_size), pa.int32()),
            "token": tokens, "alpha": result.alpha, "count": result.counts,
        }))
        out.write_table(PREFIXES_FILE, pa.table(
            {"token_id": pa.array(range(head.vocab_size), pa.int32())}
            | {f"windows_{n}": alpha for n, alpha in sorted(result.prefixes.items())}))
        out.summary.update(
            n_tokens=result.n_positions, n_windows=len(detect), window=detect.shape[1],
            vocab_size=head.vocab_size, mean_nll=result.mean_nll,
            perplexity=result.perplexity, tokens_per_second=rate,
            dtype=run.dtype,
        )
        top = sorted(zip(result.alpha, tokens, strict=True), reverse=True)[:10]
        publish_table(STAGE, out, [{"token": t, "alpha": a} for a, t in top],
                      f"Averaged output probabilities over {result.n_positions:,} tokens "
                      f"(perplexity {result.perplexity:.2f}); the 10 most probable tokens")

    arguments = {"windows": windows, "model": model, "run": run, "config": config}
    return run_stage(STAGE, workspace, arguments, compute, force)


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Each output row's token as text ('' for rows beyond the tokenizer)."""
    known = min(len(tokenizer), vocab_size)
    texts = [tokenizer.decode([i]) for i in range(known)]
    return texts + [""] * (vocab_size - known)
