"""The Python API: tokprob.run and tokprob.results, and the README's example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import tokprob
from tokprob.errors import TokprobError
from tokprob.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_run(prefect_api, tiny_models, tiny_text_dir, tmp_path):
    data = tmp_path / "data"
    out = tokprob.run("encoding", model=str(tiny_models["llama"]), dataset=str(tiny_text_dir),
                      data_dir=str(data), window=16, heldout_fraction=0.2, max_tokens=160)
    return out, data


@pytest.mark.prefect
def test_run_takes_flow_parameters_and_config_fields_and_results_read_them_back(
        tiny_run, tiny_models, tiny_text_dir):
    out, data = tiny_run
    assert out["n_tokens"] == 160 and out["window"] == 16
    res = tokprob.results(model=str(tiny_models["llama"]), dataset=tiny_text_dir.name,
                          data_dir=str(data))
    assert res.summary["adj_r2"] == out["adj_r2"]
    assert {"probabilities", "regression", "pca"} <= set(res.stages)
    table = res.table("probabilities")
    pd.testing.assert_frame_equal(table, pd.read_parquet(out["artifacts"]["probabilities"]))
    scores = res.table("pca", "scores")
    assert len(scores) == len(table)
    # By display name too, and per flow.
    assert tokprob.results(model="llama", dataset=tiny_text_dir.name, flow="encoding",
                           data_dir=str(data)).summary["r2"] == out["r2"]
    with pytest.raises(TokprobError, match="no table"):
        res.table("pca", "no_such_table")
    with pytest.raises(TokprobError, match="No stage 'steering'"):
        res.table("steering")


def test_unknown_parameters_and_flows_are_clear_errors(tmp_path):
    with pytest.raises(TokprobError, match="Unknown flow 'encode'"):
        tokprob.run("encode")
    with pytest.raises(TokprobError, match=r"no parameter 'max_token'.*max_tokens"):
        tokprob.run("encoding", max_token=4096, data_dir=str(tmp_path / "data"))
    with pytest.raises(TokprobError, match=r"no stage 'regresion' to refresh; its stages: "
                                           r"corpus, windows"):
        tokprob.run("encoding", refresh=["regresion"], data_dir=str(tmp_path / "data"))
    with pytest.raises(TokprobError, match=r"either corpus or its fields \(dataset\)"):
        tokprob.run("encoding", corpus={"dataset": "a.txt"}, dataset="b.txt",
                    data_dir=str(tmp_path / "data"))
    # Nothing was started for a refused call: no Prefect home, no server.
    assert not (tmp_path / "data").exists()


def test_results_never_compute_and_say_so_when_nothing_is_there(tmp_path):
    with pytest.raises(TokprobError, match="No finished tokprob run about model 'm'"):
        tokprob.results(model="m", dataset="d", data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "artifacts").exists()


def test_importing_tokprob_and_reading_results_leave_prefect_unimported(tmp_path):
    script = ("import sys, tokprob\n"
              "try:\n    tokprob.results(model='m', dataset='d', data_dir=sys.argv[1])\n"
              "except tokprob.api.TokprobError:\n    pass\n"
              "print('prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, check=True, cwd=REPO)
    assert done.stdout.split() == ["False"]


@pytest.mark.integration
def test_the_readme_python_example_runs(prefect_api, tmp_path):
    """The README's example, as written, on the default model (fetched archives reused)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "tokprob.run(" in example and "tokprob.results(" in example
    data = tmp_path / "data"
    (data / "downloads").mkdir(parents=True)
    for archive in Workspace.from_env(os.environ.get("TOKPROB_DATA")).downloads.glob("*.*"):
        shutil.copy(archive, data / "downloads" / archive.name)
    check = ("\nassert isinstance(res.table('probabilities'), __import__('pandas').DataFrame)"
             "\nassert 0 < res.summary['adj_r2'] < 1 and out['adj_r2'] == res.summary['adj_r2']")
    env = os.environ | {"TOKPROB_DATA": str(data), "PREFECT_HOME": str(data / "prefect"),
                        "PREFECT_API_URL": prefect_api}
    done = subprocess.run([sys.executable, "-c", example + check], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
