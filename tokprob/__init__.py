"""tokprob: how a causal LM encodes output token probabilities in its output embeddings.

Reproduces "Understanding Token Probability Encoding in Output Embeddings"
(Cho et al., arXiv 2406.01468). This package is the pure library: tensors, arrays and
DataFrames in, results out, no orchestration. `tasks/` wraps it with cached artifacts
and `flows/` wires the stages into Prefect flows. `tokprob.run` and `tokprob.results`
(tokprob/api.py) are the Python API over both; Prefect is imported only when a flow runs.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "results", "run"]


def run(flow: str = "encoding", **parameters: Any) -> dict[str, Any]:
    """Run a flow from Python; see `tokprob.api.run`."""
    from tokprob.api import run as run_flow

    return run_flow(flow, **parameters)


def results(model: str, dataset: str, flow: str | None = None,
            data_dir: str | None = None) -> Any:
    """The recorded results of a model on a dataset; see `tokprob.api.results`."""
    from tokprob.api import results as read_results

    return read_results(model, dataset, flow, data_dir)
