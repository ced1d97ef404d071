"""Stage `dynamics`: every checkpoint's row in one table, its milestones and its plots
(paper §5). A module of its own, so that editing a plot re-runs no checkpoint."""

from __future__ import annotations

import re

from tasks._stage import publish_table, stage
from tasks.catalog import CHECKPOINT_ROW, DYNAMICS_TABLE
from tokprob import plots
from tokprob.dynamics import checkpoint_table, training_milestones
from tokprob.store import ArtifactRef, ArtifactWriter

STAGE = "dynamics"
FIGURES = {"encoding": "dynamics_encoding.png", "convergence": "dynamics_convergence.png"}


@stage(STAGE)
def dynamics_table(out: ArtifactWriter, rows: list[ArtifactRef]) -> None:
    """All checkpoints in one table, the two half-way steps, and the plots."""
    table = checkpoint_table([CHECKPOINT_ROW.read(ref) for ref in rows])
    out.write_table(DYNAMICS_TABLE.file, table)
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
