"""Averaged output token probabilities α over a detecting dataset (paper §2.1).

    α_w = (1/|X|) Σ_{x∈X} P_θ(w | x)        for every token w

over X, every position of every window, the last one included (its next token lies
beyond the window, so it counts for α but not for the perplexity). Where windows start
with BOS (tokprob.windows), position 0 predicts the first text token from BOS alone, a
real prediction that counts; BOS itself is never a next token. Streamed batch by batch:
softmax rows are summed in float32 per chunk of positions and accumulated in float64, so
memory is O(|V|) plus one chunk of logits, whatever the number of tokens. The empirical
next-token counts of the same windows come along.

    result = averaged_probabilities(model, output_head(model), windows, batch_size=8)
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokprob.errors import TokprobError
from tokprob.head import OutputHead, final_hidden_states, head_logits
from tokprob.progress import Progress
from tokprob.windows import next_tokens

log = logging.getLogger("tokprob")

MAX_LOGIT_ELEMENTS = 1 << 24
"""Logits computed at once (64 MB in float32): bounds memory for any vocabulary. A chunk
of a few hundred rows already keeps the head's matrix product efficient; a larger one
only adds to the peak memory of a large model's run."""


@dataclass(frozen=True)
class AlphaResult:
    alpha: np.ndarray
    """(vocab,) float64 averaged probability of every token."""
    counts: np.ndarray
    """(vocab,) int64 occurrences of each token as the next token within the windows."""
    n_positions: int
    """|X|: positions averaged over."""
    nll_sum: float
    """Σ −log P(next token) over the positions that have a next token."""
    n_predictions: int
    prefixes: dict[int, np.ndarray]
    """n → α over the first n windows only (few-shot estimates, paper §3)."""

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / max(self.n_predictions, 1)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.mean_nll))


def alpha_percentile(alpha: np.ndarray) -> np.ndarray:
    """Percentile (0–100) of each token's α among all tokens."""
    from scipy.stats import rankdata

    return 100.0 * (rankdata(alpha) - 1) / max(len(alpha) - 1, 1)


def batches(windows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(windows), batch_size):
        yield windows[start:start + batch_size]


def prefix_grid(n_windows: int) -> list[int]:
    """1, 2, 4, … windows below n_windows: where few-shot α snapshots are taken."""
    return [1 << i for i in range(n_windows.bit_length()) if (1 << i) < n_windows]


def _batch_ends(n_windows: int, batch_size: int, prefixes: list[int]) -> list[int]:
    """Batch boundaries, cut also at each prefix so its snapshot is exact."""
    ends = set(range(batch_size, n_windows, batch_size)) | {n_windows}
    return sorted(ends | {n for n in prefixes if 0 < n < n_windows})


@dataclass(frozen=True)
class PartialSums:
    """What a run over some windows contributes to α: sums, not yet averages, so that
    shards of the windows computed apart (on a Dask cluster) add up exactly."""

    total: np.ndarray
    """(vocab,) float64 Σ over positions of P(w | x)."""
    counts: np.ndarray
    """(vocab,) int64 next-token occurrences."""
    nll_sum: float
    n_windows: int
    window: int
    cuts: dict[int, np.ndarray]
    """Local window count n → the total over this part's first n windows."""


@dataclass(frozen=True)
class Checkpoints:
    """How a long α run saves its progress, and the progress it resumes from."""

    save: Callable[[PartialSums], None]
    """Called with the sums over the windows done so far."""
    every_seconds: float = 60.0
    """Seconds of work between two saves (0: after every batch)."""
    resume: PartialSums | None = None
    """Sums over the first windows, saved by an interrupted run over the same windows."""
    clock: Callable[[], float] = time.monotonic


def alpha_sums(model, head: OutputHead, windows: np.ndarray, batch_size: int,
               progress: Progress | None = None, cuts: list[int] | None = None,
               checkpoints: Checkpoints | None = None) -> PartialSums:
    """Softmax sums, counts and NLL over every position of `windows`, with the running
    total kept after the first n windows for each n in `cuts`. With `checkpoints`, the
    sums so far are handed out every so often, and a run starts where `resume` ended:
    the batches after it are those an uninterrupted run takes, so the result is the same."""
    device = head.weight.device
    resume = checkpoints.resume if checkpoints is not None else None
    total = torch.zeros(head.vocab_size, dtype=torch.float64, device=device)
    nll_sum = 0.0
    wanted = set(cuts or [])
    snapshots: dict[int, np.ndarray] = {}
    start = 0
    if resume is not None:
        total += torch.from_numpy(resume.total).to(device)
        nll_sum, snapshots, start = resume.nll_sum, dict(resume.cuts), resume.n_windows
    last_save = checkpoints.clock() if checkpoints is not None else 0.0
    with torch.inference_mode():
        for end in _batch_ends(len(windows), batch_size, sorted(wanted)):
            if end <= start:
                continue
            batch = windows[start:end]
            ids = torch.as_tensor(batch, dtype=torch.long, device=device)
            hidden = final_hidden_states(model, ids)
            targets = torch.as_tensor(next_tokens(batch), device=device)
            batch_sum, batch_nll = _softmax_sums(hidden.reshape(-1, hidden.shape[-1]),
                                                 targets.reshape(-1), head)
            if not torch.isfinite(batch_sum).all():
                raise TokprobError(
                    "The model's logits contain NaN or infinity on this corpus, so its "
                    "probabilities are undefined. The weights may be damaged, or the dtype "
                    "overflows: try --dtype float32."
                )
            total += batch_sum
            nll_sum += batch_nll
            if end in wanted:
                snapshots[end] = total.cpu().numpy().copy()
            start = end
            if progress is not None:
                progress.update(batch.size)
            if (checkpoints is not None and end < len(windows)
                    and checkpoints.clock() - last_save >= checkpoints.every_seconds):
                checkpoints.save(_sums_so_far(windows[:end], total, nll_sum, snapshots))
                last_save = checkpoints.clock()
    return _sums_so_far(windows, total, nll_sum, snapshots)


def _sums_so_far(done: np.ndarray, total: torch.Tensor, nll_sum: float,
                 snapshots: dict[int, np.ndarray]) -> PartialSums:
    counts = np.bincount(done[:, 1:].reshape(-1), minlength=len(total))
    return PartialSums(total=total.cpu().numpy().copy(), counts=counts.astype(np.int64),
                       nll_sum=nll_sum, n_windows=len(done), window=done.shape[1],
                       cuts=dict(snapshots))


def save_partial_sums(path: Path, sums: PartialSums, owner: str) -> None:
    """Write the sums to `path` atomically (a complete file or the previous one), tagged
    with `owner`: what they are sums of (a cache key)."""
    cut_sizes = sorted(sums.cuts)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with scratch.open("wb") as handle:
        np.savez(handle, owner=np.array(owner), total=sums.total, counts=sums.counts,
                 scalars=np.array([sums.nll_sum]), sizes=np.array([sums.n_windows, sums.window]),
                 cut_sizes=np.array(cut_sizes, dtype=np.int64),
                 cut_totals=np.array([sums.cuts[n] for n in cut_sizes]).reshape(
                     len(cut_sizes), len(sums.total)))
        handle.flush()
        os.fsync(handle.fileno())
    scratch.replace(path)


def load_partial_sums(path: Path, owner: str, windows: np.ndarray,
                      vocab_size: int) -> PartialSums | None:
    """The sums saved at `path` if they are `owner`'s and fit these windows; None when
    there are none, or they belong to other inputs, or the file is damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            stored_owner = str(saved["owner"])
            total, counts = saved["total"], saved["counts"]
            (nll_sum,), (n_windows, window) = saved["scalars"].tolist(), saved["sizes"].tolist()
            cuts = dict(zip(saved["cut_sizes"].tolist(), saved["cut_totals"], strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("ignoring the damaged α checkpoint %s (%s)", path, error)
        return None
    fits = (stored_owner == owner and total.shape == (vocab_size,) and window == windows.shape[1]
            and 0 < n_windows < len(windows) and all(n <= n_windows for n in cuts))
    if not fits:
        log.warning("ignoring the α checkpoint %s: it belongs to other inputs", path)
        return None
    return PartialSums(total=total, counts=counts, nll_sum=nll_sum, n_windows=n_windows,
                       window=window, cuts=cuts)


def combine(parts: list[PartialSums], prefixes: list[int] | None = None) -> AlphaResult:
    """α from the partial sums of consecutive parts of the windows (in order), with α
    over the first n windows for each n in `prefixes` (each part must have been cut at
    the prefixes that fall inside it: see `shard_cuts`)."""
    window = parts[0].window
    total = np.sum([part.total for part in parts], axis=0)
    n_windows = sum(part.n_windows for part in parts)
    snapshots = {}
    before, offset = np.zeros_like(total), 0
    for part in parts:
        for local, cut in part.cuts.items():
            if offset + local in (prefixes or []):
                snapshots[offset + local] = (before + cut) / ((offset + local) * window)
        before, offset = before + part.total, offset + part.n_windows
    return AlphaResult(
        alpha=total / (n_windows * window), counts=np.sum([p.counts for p in parts], axis=0),
        n_positions=n_windows * window, nll_sum=float(sum(p.nll_sum for p in parts)),
        n_predictions=n_windows * (window - 1), prefixes=snapshots)


def shard_bounds(n_windows: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive ranges of whole batches, as even as possible: a batch never straddles
    two shards, so every float32 batch sum is the one a single process computes."""
    batches = -(-n_windows // batch_size)
    per_shard, extra = divmod(batches, shards)
    bounds, start = [], 0
    for shard in range(shards):
        count = per_shard + (shard < extra)
        if count:
            stop = min(start + count * batch_size, n_windows)
            bounds.append((start, stop))
            start = stop
    return bounds


def shard_cuts(start: int, stop: int, prefixes: list[int]) -> list[int]:
    """The local cuts a part covering windows [start, stop) needs for global prefixes."""
    return [n - start for n in prefixes if start < n <= stop]


def averaged_probabilities(
    model,
    head: OutputHead,
    windows: np.ndarray,
    batch_size: int,
    progress: Progress | None = None,
    prefixes: list[int] | None = None,
    checkpoints: Checkpoints | None = None,
) -> AlphaResult:
    """α, counts and the mean next-token NLL over every position of `windows`, and α
    over the first n windows for each n in `prefixes`."""
    part = alpha_sums(model, head, windows, batch_size, progress,
                      shard_cuts(0, len(windows), prefixes or []), checkpoints)
    return combine([part], prefixes)


def _softmax_sums(hidden: torch.Tensor, targets: torch.Tensor,
                  head: OutputHead) -> tuple[torch.Tensor, float]:
    """Σ over rows of softmax(hidden @ E.T + b) in float64, and Σ −log p(target).

    hidden: (rows, d); targets: (rows,), −1 where a row has no next token.
    """
    rows_per_chunk = max(1, MAX_LOGIT_ELEMENTS // head.vocab_size)
    total = torch.zeros(head.vocab_size, dtype=torch.float64, device=hidden.device)
    nll = 0.0
    for start in range(0, hidden.shape[0], rows_per_chunk):
        logits = head_logits(hidden[start:start + rows_per_chunk], head)
        chunk_targets = targets[start:start + rows_per_chunk]
        has_next = chunk_targets >= 0
        top = logits.amax(dim=-1, keepdim=True)
        picked = logits.gather(1, chunk_targets.clamp_min(0).unsqueeze(1))
        if not _exp_is_safe_unshifted(top):
            logits.sub_(top)
            picked -= top
        # The softmax in place (one buffer of logits, no copy): exp(z [− max]), then each
        # row divided by its sum inside one vector–matrix product, which also sums the
        # rows. Over one chunk float32 loses nothing measurable; the running total
        # across chunks is float64.
        norm = logits.exp_().sum(dim=-1, keepdim=True)
        total += ((1.0 / norm).T @ logits).squeeze(0).double()
        nll -= float((picked - norm.log())[has_next].double().sum())
    return total, nll


UNSHIFTED_MAX_LOGIT = 60.0
"""Largest row maximum exp(z) takes unshifted: e^60 times even a billion tokens stays
below float32's largest value (3.4e38), so no row sum overflows."""


def _exp_is_safe_unshifted(row_max: torch.Tensor) -> bool:
    """Whether exp(z) needs no max subtraction for these rows: each row maximum lies in
    [0, UNSHIFTED_MAX_LOGIT]. Then nothing overflows, and since every logit sits no
    lower than it would after the shift, nothing underflows that the shifted softmax
    keeps; skipping the shift saves a pass over the logits (α throughput, §2.1)."""
    return bool(row_max.min() >= 0.0) and bool(row_max.max() <= UNSHIFTED_MAX_LOGIT)
