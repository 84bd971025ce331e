import os

import pytest
import torch


def pytest_configure(config):
    """Triton kernels run through Triton's CPU interpreter where no CUDA GPU is present (CI), and
    are compiled and run on the GPU where one is; ORT3D_TRITON_INTERPRET=1 or 0 forces either.
    TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test module
    imports triton (importing torch first is fine: torch does not import triton)."""
    forced = os.environ.get("ORT3D_TRITON_INTERPRET")
    if forced not in (None, "0", "1"):
        raise pytest.UsageError(f"ORT3D_TRITON_INTERPRET must be 0 or 1, got {forced!r}")
    os.environ["TRITON_INTERPRET"] = forced if forced is not None else str(int(not torch.cuda.is_available()))
