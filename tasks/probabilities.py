"""Stage `probabilities`: α over the detecting split, with next-token counts (paper §2.1)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from tasks._stage import publish_table, stage
from tasks.catalog import ALPHA, ALPHA_PREFIXES, read_windows
from tokprob.config import ProbabilityConfig, RunConfig
from tokprob.errors import TokprobError
from tokprob.head import check_head, output_head
from tokprob.model_sources import ModelSource
from tokprob.models import load_model, load_tokenizer, resolve_dtype
from tokprob.probabilities import (
    Checkpoints,
    averaged_probabilities,
    load_partial_sums,
    prefix_grid,
    save_partial_sums,
)
from tokprob.progress import Progress
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.windows import DETECT

log = logging.getLogger("tokprob")

STAGE = "probabilities"
CHECKPOINT_FILE = "alpha-partial-sums.npz"

log = logging.getLogger("tokprob")


@stage(STAGE, environment=("torch", "transformers"), loads_model=True,
       reads={"windows": DETECT})  # α reads the detecting windows only
def probabilities(out: ArtifactWriter, windows: ArtifactRef, model: ModelSource, run: RunConfig,
                  config: ProbabilityConfig) -> None:
    """Stream the model over the detecting windows and average its softmax."""
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
    if run.shards > 1:  # the workers load the model, this process does not
        from tasks.shards import dask_runner, sharded_alpha

        started = time.monotonic()
        result = sharded_alpha.with_options(task_runner=dask_runner(run))(
            model, windows, config.max_tokens, len(detect), run, prefix_grid(len(detect)))
        rate = detect.size / (time.monotonic() - started)
        vocab_size, dtype = len(result.alpha), resolve_dtype(model.path, run.dtype)
    else:
        lm = load_model(model.path, run.dtype, run.device)
        head = output_head(lm)
        check_head(lm, head, head.vocab_size)
        vocab_size, dtype = head.vocab_size, str(head.weight.dtype).removeprefix("torch.")
        checkpoints = alpha_checkpoints(out, detect, run, vocab_size)
        done = checkpoints.resume.n_windows if checkpoints.resume else 0
        with Progress(detect[done:].size, f"α over {detect.size:,} tokens") as progress:
            result = averaged_probabilities(lm, head, detect, run.batch_size, progress,
                                            prefixes=prefix_grid(len(detect)),
                                            checkpoints=checkpoints)
        rate = progress.rate
    tokens = token_strings(load_tokenizer(model.path), vocab_size)
    out.write_table(ALPHA.file, pa.table({
        "token_id": pa.array(range(vocab_size), pa.int32()),
        "token": tokens, "alpha": result.alpha, "count": result.counts,
    }))
    out.write_table(ALPHA_PREFIXES.file, pa.table(
        {"token_id": pa.array(range(vocab_size), pa.int32())}
        | {f"windows_{n}": alpha for n, alpha in sorted(result.prefixes.items())}))
    out.summary.update(
        n_tokens=result.n_positions, n_windows=len(detect), window=detect.shape[1],
        vocab_size=vocab_size, mean_nll=result.mean_nll,
        perplexity=result.perplexity, tokens_per_second=rate, dtype=dtype,
    )
    top = sorted(zip(result.alpha, tokens, strict=True), reverse=True)[:10]
    publish_table(STAGE, out, [{"token": t, "alpha": a} for a, t in top],
                  f"Averaged output probabilities over {result.n_positions:,} tokens "
                  f"(perplexity {result.perplexity:.2f}); the 10 most probable tokens")


def alpha_checkpoints(out: ArtifactWriter, detect: np.ndarray, run: RunConfig,
                      vocab_size: int) -> Checkpoints:
    """Partial sums saved beside the unfinished artifact, and those of an earlier run of
    the same key that was killed, to resume from."""
    path = out.partial_path(CHECKPOINT_FILE)
    resume = load_partial_sums(path, out.key, detect, vocab_size)
    if resume is not None:
        log.info("%s: resuming α from its checkpoint at window %d of %d (%s)", STAGE,
                 resume.n_windows, len(detect), path)
    return Checkpoints(save=lambda sums: save_partial_sums(path, sums, out.key),
                       every_seconds=run.checkpoint_seconds, resume=resume)


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Each output row's token as text ('' for rows beyond the tokenizer)."""
    known = min(len(tokenizer), vocab_size)
    texts = [tokenizer.decode([i]) for i in range(known)]
    return texts + [""] * (vocab_size - known)
