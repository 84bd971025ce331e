"""Shared by the Triton kernel tests: where the kernels run, the released intrinsics, an error metric.

Imports no triton: tests/conftest.py must set TRITON_INTERPRET before the first `import triton`.
"""

import os

import pytest
import torch

# The released normalised intrinsics of every feedback view (docs/inference.md#cameras).
INTRINSICS = torch.tensor([[1.3888888359069824, 0.0, 0.5], [0.0, 1.3888888359069824, 0.5],
                           [0.0, 0.0, 1.0]])


def kernel_device() -> str:
    """CPU through the Triton interpreter (CI), or CUDA when the kernels are compiled."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 (tests/conftest.py) or a CUDA GPU")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖got − ref‖ / ‖ref‖ over the whole tensor."""
    return ((got - ref).norm() / ref.norm()).item()
