"""Calling stage tasks from a flow: forced re-runs and which stages hit the cache."""

from __future__ import annotations

from typing import Any

from prefect import Task

from tasks._stage import stage_policy, was_reused
from tokprob.errors import TokprobError
from tokprob.store import ArtifactRef
from tokprob.workspace import Workspace


class StageRunner:
    """Runs stage tasks in order, forcing the stages named in `refresh` and every stage
    downstream of a forced one, and records whether each came from Prefect's cache.

    Prefect's cached results (the small references) are kept beside the artifacts they
    point to, in the workspace, so they follow the store whichever Prefect server or
    PREFECT_HOME runs the flow.
    """

    def __init__(self, workspace: Workspace, refresh: list[str], stages: list[str]) -> None:
        unknown = sorted(set(refresh) - set(stages))
        if unknown:
            raise TokprobError(
                f"Unknown stage {', '.join(unknown)} to re-run; this flow's stages are "
                f"{', '.join(stages)}."
            )
        self.workspace = workspace
        self.results = workspace.prefect_results
        self.refresh = set(refresh)
        self.forced: set[str] = set()
        """Keys of the artifacts this run recomputed on purpose."""
        self.states: dict[str, str] = {}
        self.refs: dict[str, ArtifactRef] = {}

    def __call__(self, stage: Task[..., ArtifactRef], label: str | None = None,
                 **arguments: Any) -> ArtifactRef:
        """Run one stage; `label` names it in the records when a flow runs a stage twice
        (on the in-distribution and the out-of-distribution corpus)."""
        name = label or stage.name
        upstream = {ref.key for value in arguments.values()
                    for ref in (value if isinstance(value, list) else [value])
                    if isinstance(ref, ArtifactRef)}
        force = stage.name in self.refresh or bool(upstream & self.forced)
        configured = stage.with_options(result_storage=self.results,
                                        cache_policy=stage_policy(stage.name, self.workspace),
                                        refresh_cache=force or None)
        state = configured(**arguments, force=force, return_state=True)
        ref = state.result()
        # A stage that found its artifact in the store reused it like a cache hit, even
        # where Prefect's record of the hit is gone (another PREFECT_HOME, a new database).
        reused = was_reused(ref)
        self.states[name] = "cached" if state.name == "Cached" or reused else "computed"
        self.refs[name] = ref
        if force:
            self.forced.add(ref.key)
        return ref
