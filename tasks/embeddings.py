"""Stage `embeddings`: the output embedding matrix E, its bias and tying (SPEC §1)."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

from tasks._io import BIAS_FILE, EMBEDDINGS_FILE, embeddings_table
from tasks._stage import publish_table, register, run_stage
from tokprob.models import ModelSource, check_head, load_model, output_head
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "embeddings"


@task(**register(STAGE, __name__, environment=("torch", "transformers")))
def embeddings(workspace: Workspace, model: ModelSource, force: bool = False) -> ArtifactRef:
    """Extract E = get_output_embeddings().weight (raw, float32) and the bias if any."""

    def compute(out):
        lm = load_model(model.path, dtype="float32", device="cpu")
        head = output_head(lm)
        check_head(lm, head, head.vocab_size)
        out.write_table(EMBEDDINGS_FILE, embeddings_table(head.weight.float().numpy()))
        if head.bias is not None:
            out.write_table(BIAS_FILE, pa.table({"token_id": range(head.vocab_size),
                                                 "bias": head.bias.float().numpy()}))
        out.summary.update(
            model=model.spec, architecture=type(lm).__name__, vocab_size=head.vocab_size,
            hidden_size=head.hidden_size, tied=head.tied, has_bias=head.bias is not None,
        )
        publish_table(STAGE, out, [out.summary], f"Output embeddings of {model.display_name}")

    return run_stage(STAGE, workspace, {"model": model}, compute, force)
