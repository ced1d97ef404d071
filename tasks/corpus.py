"""Stage `corpus`: where the dataset's documents are (`documents.parquet`: `doc`, `file`,
`start`, `length`) and the resolved source (`source.json`), not the text: later stages
read the documents they need lazily from the files."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq

from tasks._stage import publish_table, stage
from tokprob.corpora import CorpusSource, index_corpus, read_documents, shuffled_corpus
from tokprob.documents import DocumentIndex
from tokprob.store import ArtifactRef, ArtifactWriter
from tokprob.workspace import Workspace

STAGE = "corpus"
INDEX_FILE = "documents.parquet"
SOURCE_FILE = "source.json"


@stage(STAGE, environment=("datasets",))
def corpus(out: ArtifactWriter, source: CorpusSource) -> None:
    """Index the documents of a corpus once (one byte-level pass over local files)."""
    index = index_corpus(source)
    out.write_table(INDEX_FILE, index.to_arrow())
    out.path(SOURCE_FILE).write_text(source.model_dump_json())
    out.summary.update(dataset=source.spec, records=len(index),
                       streamed=source.kind == "hub")
    publish_table(STAGE, out, [{"dataset": source.spec, "records": len(index)}],
                  f"Documents of {source.spec}")


def _read(ref: ArtifactRef) -> tuple[CorpusSource, DocumentIndex]:
    source = CorpusSource.model_validate_json(ref.file(SOURCE_FILE).read_text())
    return source, DocumentIndex.from_arrow(pq.read_table(ref.file(INDEX_FILE)))


def all_documents(workspace: Workspace, ref: ArtifactRef) -> list[str]:
    """Every non-empty document, in the corpus's order."""
    return read_documents(_read(ref)[0], workspace.hf_datasets_cache)


def shuffled_documents(workspace: Workspace, ref: ArtifactRef, seed: int) -> Iterator[str]:
    """The non-empty documents in the seeded document-level shuffle, read lazily."""
    source, index = _read(ref)
    return shuffled_corpus(source, index, seed, workspace.hf_datasets_cache)
