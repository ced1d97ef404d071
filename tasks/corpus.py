"""Stage `corpus`: where the dataset's documents are (`documents.parquet`: `doc`, `file`,
`start`, `length`) and the resolved source (`source.json`), not the text: later stages
read the documents they need lazily from the files."""

from __future__ import annotations

from tasks._stage import publish_table, stage
from tasks.catalog import CORPUS_SOURCE_FILE, DOCUMENTS
from tokprob.corpora import CorpusSource, index_corpus
from tokprob.store import ArtifactWriter

STAGE = "corpus"


@stage(STAGE, environment=("datasets",))
def corpus(out: ArtifactWriter, source: CorpusSource) -> None:
    """Index the documents of a corpus once (one byte-level pass over local files)."""
    index = index_corpus(source)
    out.write_table(DOCUMENTS.file, index.to_arrow())
    out.path(CORPUS_SOURCE_FILE).write_text(source.model_dump_json())
    out.summary.update(dataset=source.spec, records=len(index),
                       streamed=source.kind == "hub")
    publish_table(STAGE, out, [{"dataset": source.spec, "records": len(index)}],
                  f"Documents of {source.spec}")

