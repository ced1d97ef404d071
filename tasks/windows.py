"""Stage `windows`: the corpus tokenized, packed into windows and split (paper §2.1)."""

from __future__ import annotations

from tasks._stage import publish_table, stage
from tasks.catalog import WINDOW_TOKENS, shuffled_documents
from tokprob.config import WindowConfig
from tokprob.model_sources import ModelSource
from tokprob.models import check_window_fits, load_tokenizer
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.windows import DETECT, HELDOUT, TokenBudget, build_windows
from tokprob.workspace import Workspace

STAGE = "windows"


@stage(STAGE, environment=("transformers", "tokenizers"))
def windows(out: ArtifactWriter, workspace: Workspace, corpus: ArtifactRef, model: ModelSource,
            config: WindowConfig, budget: TokenBudget) -> None:
    """Tokenize with the model's tokenizer, in a seeded document-level shuffle and only
    until the splits hold their token budgets, and cut fixed-length windows."""
    documents = shuffled_documents(workspace, corpus, config.seed)
    tokenizer = load_tokenizer(model.path)
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(model.path)
    check_window_fits(model_config.to_dict(), config.window, model.display_name)
    vocab_size = _output_rows(model_config, tokenizer)
    packed = build_windows(tokenizer, documents, config.window, config.heldout_fraction,
                           config.seed, vocab_size, budget)
    out.write_table(WINDOW_TOKENS.file, packed.to_arrow())
    counts = {s: int((packed.split == s).sum()) for s in (DETECT, HELDOUT)}
    out.summary.update(windows=len(packed.tokens), window=config.window,
                       detect_windows=counts[DETECT], heldout_windows=counts[HELDOUT],
                       tokens=int(packed.tokens.size),
                       split_sha256={s: packed.digest(s) for s in (DETECT, HELDOUT)})
    publish_table(STAGE, out, [out.summary | {"subject": model.display_name}],
                  "Packed windows and their split")



def _output_rows(config, tokenizer) -> int:
    """Rows of the LM head (≥ the tokenizer's vocabulary when padded for speed)."""
    return int(getattr(config, "vocab_size", None) or len(tokenizer))
