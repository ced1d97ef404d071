"""The artifact catalog: every stage's files and summary in one place, and readers that
refuse a table without the columns the catalog lists."""

from __future__ import annotations

import importlib
import pkgutil

import pandas as pd
import pytest

import tasks
from tasks._stage import STAGES
from tasks.catalog import ALPHA, CATALOG, ProbabilitiesSummary, main_file, summary_of
from tokprob.errors import TokprobError
from tokprob.store import ArtifactStore


def test_every_registered_stage_has_an_entry_and_every_entry_a_stage():
    for module in pkgutil.iter_modules(tasks.__path__):
        importlib.import_module(f"tasks.{module.name}")
    registered = {name for name, spec in STAGES.items() if spec.module.startswith("tasks.")}
    assert registered == set(CATALOG)  # (tests may register stages of their own)


def test_no_two_tables_of_a_stage_share_a_file():
    for files in CATALOG.values():
        names = [table.file for table in files.tables]
        assert len(names) == len(set(names)), files.stage


def _stored(workspace, frame: pd.DataFrame, summary: dict):
    store = ArtifactStore(workspace.artifacts)
    with store.write("probabilities", "k1", {}, {}, "v") as out:
        out.write_table(ALPHA.file, frame)
        out.summary.update(summary)
    return store.ref("probabilities", "k1")


def test_a_table_reads_back_with_its_columns_and_its_summary_typed(workspace):
    frame = pd.DataFrame({"token_id": [0, 1], "token": ["a", "b"], "alpha": [0.25, 0.75],
                          "count": [1, 3]})
    ref = _stored(workspace, frame, {"perplexity": 2.5})
    pd.testing.assert_frame_equal(ALPHA.read(ref), frame)
    assert ALPHA.read(ref, ["alpha"])["alpha"].tolist() == [0.25, 0.75]
    assert main_file(ref) == ALPHA.path(ref)
    assert summary_of(ref, ProbabilitiesSummary)["perplexity"] == 2.5


def test_a_table_without_a_listed_column_is_an_error_naming_it(workspace):
    ref = _stored(workspace, pd.DataFrame({"token_id": [0], "alpha": [1.0]}), {})
    with pytest.raises(TokprobError, match=r"no column token, count.*--refresh probabilities"):
        ALPHA.read(ref)
