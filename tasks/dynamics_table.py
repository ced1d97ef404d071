"""Stage `dynamics`: every checkpoint's row in one table, its milestones and its plots
(paper §5). A module of its own, so that editing a plot re-runs no checkpoint."""

from __future__ import annotations

import re

from prefect import task

from tasks._io import read_table
from tasks._stage import publish_table, register, run_stage
from tasks.dynamics import ROW_FILE
from tokprob import plots
from tokprob.dynamics import checkpoint_table, training_milestones
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace

STAGE = "dynamics"
DYNAMICS_FILE = "dynamics.parquet"
FIGURES = {"encoding": "dynamics_encoding.png", "convergence": "dynamics_convergence.png"}


@task(**register(STAGE, __name__))
def dynamics_table(workspace: Workspace, rows: list[ArtifactRef],
                   force: bool = False) -> ArtifactRef:
    """All checkpoints in one table, the two half-way steps, and the plots."""

    def compute(out):
        table = checkpoint_table([read_table(ref, ROW_FILE) for ref in rows])
        out.write_table(DYNAMICS_FILE, table)
        # The checkpoints' common name, without the step of the last one.
        subject = re.sub(r"@step\d+$", "", out.summary.get("subject", ""))
        plots.dynamics_encoding(table, f"{subject}: encoding through training",
                                out.path(FIGURES["encoding"]))
        plots.dynamics_convergence(table, f"{subject}: distance to the final checkpoint",
                                   out.path(FIGURES["convergence"]))
        out.summary.update(training_milestones(table), figures=FIGURES)
        publish_table(STAGE, out, table[["step", "tokens_seen", "loss", "adj_r2_freq",
                                         "adj_r2_alpha", "rel_distance_mean"]]
                      .to_dict("records"),
                      "Frequency encoding (adjusted R²) and distance to the final checkpoint")

    return run_stage(STAGE, workspace, {"rows": rows}, compute, force)
