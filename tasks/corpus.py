"""Stage `corpus`: the dataset's documents as Parquet (`doc`, `text`)."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

from tasks._stage import publish_table, register, run_stage
from tokprob.corpora import CorpusSource, read_documents
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "corpus"


@task(**register(STAGE, __name__, environment=("datasets",)))
def corpus(workspace: Workspace, source: CorpusSource, force: bool = False) -> ArtifactRef:
    """Read the documents of a corpus once."""

    def compute(out):
        documents = read_documents(source, workspace.hf_datasets_cache)
        out.write_table("corpus.parquet", pa.table({"doc": range(len(documents)),
                                                    "text": documents}))
        out.summary.update(dataset=source.spec, documents=len(documents),
                           characters=sum(len(d) for d in documents))
        publish_table(STAGE, out, [{"dataset": source.spec, "documents": len(documents),
                                    "characters": out.summary["characters"]}],
                      f"Documents of {source.spec}")

    return run_stage(STAGE, workspace, {"source": source}, compute, force)
