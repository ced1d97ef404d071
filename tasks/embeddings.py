"""Stage `embeddings`: the output embedding matrix E, its bias and tying (paper §2)."""

from __future__ import annotations

import pyarrow as pa

from tasks._stage import publish_table, stage
from tasks.catalog import BIAS, EMBEDDING_MATRIX, write_embeddings
from tokprob.head import OutputHead, check_head, output_head
from tokprob.model_sources import ModelSource
from tokprob.models import load_model
from tokprob.store import ArtifactWriter
from tokprob.weights import read_output_head

STAGE = "embeddings"


@stage(STAGE, environment=("torch", "transformers"), loads_model=True)
def embeddings(out: ArtifactWriter, model: ModelSource) -> None:
    """Extract E = get_output_embeddings().weight (raw, float32) and the bias if any."""
    head, architecture = head_of(model)
    write_embeddings(out.path(EMBEDDING_MATRIX.file), head.weight.numpy())
    if head.bias is not None:
        out.write_table(BIAS.file, pa.table({"token_id": range(head.vocab_size),
                                             "bias": head.bias.numpy()}))
    out.summary.update(
        model=model.spec, architecture=architecture, vocab_size=head.vocab_size,
        hidden_size=head.hidden_size, tied=head.tied, has_bias=head.bias is not None,
    )
    publish_table(STAGE, out, [out.summary], f"Output embeddings of {model.display_name}")


def head_of(model: ModelSource) -> tuple[OutputHead, str]:
    """The float32 output head and the architecture's name: read from the safetensors
    weights alone where there are such, else from the loaded model (`.bin` weights)."""
    read = read_output_head(model.path)
    if read is not None:
        return read
    lm = load_model(model.path, dtype="float32", device="cpu")
    head = output_head(lm)
    check_head(lm, head, head.vocab_size)
    return head, type(lm).__name__
