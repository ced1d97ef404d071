"""Windows from a 1 GB `.jsonl` against windows from a 10 MB one, at the same budgets.

Both files repeat the default corpus's documents (wiki-leads, one JSON record a line, a
distinct `id` each) and are written to a temporary folder, deleted afterwards. For each
file the corpus stage's one-time work is timed once (the content hash and the byte-level
index of document offsets, which later runs reuse), then the windows stage's work,
`repeats` times interleaved (median): the default tokenizer, the seeded document-level
shuffle, and tokenizing documents until the detecting (`--max-tokens`, 32,768; 2,048 with
--quick) and held-out (16,384) budgets are filled. Ratio: 1 GB seconds ÷ 10 MB seconds
for the windows. Goal: ≤ 1.2. With --quick the large file is 100 MB.

    python -m benchmarks --only corpus_scale [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks._common import Fixture, Result, header, interleaved, median, verdict
from tokprob.config import HiddenConfig, WindowConfig
from tokprob.corpora import index_corpus, read_documents, resolve_corpus, shuffled_corpus
from tokprob.models import load_tokenizer
from tokprob.specs import DatasetSpec
from tokprob.windows import DETECT, TokenBudget, build_windows

NAME = "corpus_scale"
GOAL = 1.2
SMALL_BYTES = 10 << 20


def run(fixture: Fixture, quick: bool) -> list[Result]:
    large_bytes = (100 if quick else 1024) << 20
    header(NAME, f"windows from a {large_bytes >> 20} MB .jsonl vs a 10 MB one")
    # Each side takes well under a second, so a few slow rounds on a shared machine would
    # decide a median of 3: 7 rounds cost a few seconds more.
    max_tokens, repeats = (2048 if quick else 32768), 7
    documents = read_documents(fixture.corpus_source, fixture.workspace.hf_datasets_cache)
    config = WindowConfig()
    budget = TokenBudget(detect=max_tokens, heldout=HiddenConfig().heldout_tokens)
    vocab_size = fixture.model("float32").config.vocab_size
    with tempfile.TemporaryDirectory(prefix="tokprob-bench-corpus-") as scratch:
        sources, indexes = {}, {}
        for label, size in (("small", SMALL_BYTES), ("large", large_bytes)):
            path = _repeat(documents, Path(scratch) / f"{label}.jsonl", size)
            started = time.perf_counter()
            sources[label] = resolve_corpus(DatasetSpec.parse(str(path)), fixture.workspace)
            indexes[label] = index_corpus(sources[label])
            print(f"  {label}: {path.stat().st_size / 2**20:,.0f} MB, {len(indexes[label]):,} "
                  f"documents; hash and index once: {time.perf_counter() - started:.2f} s")

        def windows_of(label: str):
            def build():
                tokenizer = load_tokenizer(fixture.model_source.path)
                texts = shuffled_corpus(sources[label], indexes[label], config.seed,
                                        fixture.workspace.hf_datasets_cache)
                packed = build_windows(tokenizer, texts, config.window,
                                       config.heldout_fraction, config.seed, vocab_size, budget)
                assert len(packed.take(DETECT, max_tokens)) == max_tokens // config.window
            return build

        seconds = interleaved({label: windows_of(label) for label in sources}, repeats)
    small, large = median(seconds["small"]), median(seconds["large"])
    ratio = large / small
    print(f"  windows, median of {repeats}: small {small:.2f} s, large {large:.2f} s, "
          f"ratio {ratio:.2f} (goal ≤ {GOAL}) {verdict(ratio <= GOAL)}")
    return [Result(NAME, f"windows s, {large_bytes >> 20} MB ÷ 10 MB .jsonl "
                         f"({max_tokens:,} tokens)", f"{ratio:.2f}", f"≤ {GOAL}",
                   ratio <= GOAL)]


def _repeat(documents: list[str], path: Path, size: int) -> Path:
    """A JSON-lines file of about `size` bytes: the documents again and again."""
    lines = [json.dumps({"text": d}) for d in documents]
    written, copy = 0, 0
    with path.open("w") as handle:
        while written < size:
            for number, line in enumerate(lines):
                record = f'{{"id": {copy * len(lines) + number}, {line[1:]}\n'
                handle.write(record)
                written += len(record)
                if written >= size:
                    break
            copy += 1
    return path
