"""tokprob: how a causal LM encodes output token probabilities in its output embeddings.

Reproduces "Understanding Token Probability Encoding in Output Embeddings"
(Cho et al., arXiv 2406.01468). This package is the pure library: tensors, arrays and
DataFrames in, results out, no orchestration. `tasks/` wraps it with cached artifacts
and `flows/` wires the stages into Prefect flows.
"""

__version__ = "0.1.0"
