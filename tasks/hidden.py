"""Stage `hidden`: final hidden states of the held-out split, for LM-head experiments."""

from __future__ import annotations

from prefect import task

from tasks._stage import publish_table, register, run_stage
from tasks.windows import read_windows
from tokprob.config import HiddenConfig, RunConfig
from tokprob.errors import TokprobError
from tokprob.hidden import write_hidden_states
from tokprob.models import ModelSource, load_model
from tokprob.progress import Progress
from tokprob.store import ArtifactRef
from tokprob.windows import HELDOUT
from tokprob.workspace import Workspace

STAGE = "hidden"
HIDDEN_FILE = "hidden.parquet"


@task(**register(STAGE, __name__, environment=("torch", "transformers")))
def hidden_states(workspace: Workspace, windows: ArtifactRef, model: ModelSource,
                  run: RunConfig, config: HiddenConfig,
                  force: bool = False) -> ArtifactRef:
    """Store h for every held-out position (same dtype as α's forward passes)."""

    def compute(out):
        heldout = read_windows(windows).take(HELDOUT, config.heldout_tokens)
        if len(heldout) == 0:
            raise TokprobError(
                "No held-out window to keep hidden states of: raise --heldout-fraction, "
                "--heldout-tokens (at least one window), or use a longer corpus."
            )
        lm = load_model(model.path, run.dtype, run.device)
        with Progress(heldout.size, f"hidden states of {heldout.size:,} tokens") as progress:
            positions = write_hidden_states(lm, heldout, run.batch_size, out.path(HIDDEN_FILE),
                                            progress)
        out.summary.update(positions=positions, windows=len(heldout),
                           dtype=str(lm.dtype).removeprefix("torch."))
        publish_table(STAGE, out, [out.summary], "Held-out final hidden states")

    return run_stage(STAGE, workspace,
                     {"windows": windows, "model": model, "run": run, "config": config},
                     compute, force)
