"""NumPy arrays as torch tensors for the read-only evaluation passes."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def read_only_tensor(array: np.ndarray, dtype: type = np.float32) -> torch.Tensor:
    """`array` as a tensor of `dtype`, sharing memory when the dtype already matches.

    Artifacts are memory-mapped read-only; torch warns when it wraps such an array
    because it cannot forbid writes. The steering and pruning passes only read these
    tensors, so the warning is silenced here instead of paying for a copy of E.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(array, dtype=dtype))
