"""The Triton render path never reads a device value on the host (CUDA-graph capturable)."""

import contextlib
import os

import pytest
import torch

from kernel_helpers import INTRINSICS
from ort3d.kernels import triton_binning, triton_composite, triton_project
from ort3d.kernels.feedback_dispatch import prepare_render_cameras, render_feedback
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w
from ort3d.kernels.triton_render import OverlapBudget

H, W = 32, 32
# Every way Python code can pull a tensor's value to the host.
HOST_READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostReadGuard:
    """Makes the host-read methods of torch.Tensor raise while active."""

    def __init__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def _forbid(self, name):
        def raiser(*args, **kwargs):
            raise AssertionError(f"host read Tensor.{name} inside the render path")
        return raiser

    def __enter__(self):
        for name in HOST_READS:
            setattr(torch.Tensor, name, self._forbid(name))
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)

    @contextlib.contextmanager
    def paused(self):
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()


class InterpreterLaunch:
    """A kernel whose launches run unguarded: the CPU interpreter itself copies tensors to numpy,
    which a real GPU launch never does."""

    def __init__(self, kernel, guard):
        self.kernel, self.guard = kernel, guard

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with self.guard.paused():
                return self.kernel[grid](*args, **kwargs)
        return launch


def cameras(device):
    return prepare_render_cameras(look_at_c2w([30.0, 200.0]), 39.6, INTRINSICS.expand(2, 3, 3),
                                  H, W, device=device)


def test_no_host_reads_in_the_triton_render_path(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU variant runs the kernels through the interpreter (TRITON_INTERPRET=1)")
    gaussians = lgm_like_gaussians(num=96, seed=7)
    cams = cameras("cpu")
    budget = OverlapBudget.for_scene(2, 96)
    guard = HostReadGuard()
    for module, name in ((triton_project, "_project_kernel"), (triton_binning, "_emit_kernel"),
                         (triton_composite, "_composite_kernel")):
        monkeypatch.setattr(module, name, InterpreterLaunch(getattr(module, name), guard))
    with guard:
        with pytest.raises(AssertionError, match="Tensor.item"):
            torch.ones(1).item()                                   # the guard is live
        out = render_feedback(gaussians, cams, renderer="triton", want_images=True, budget=budget)
    budget.check()
    assert out.rgb.shape == (2, 192, H // 8, W // 8) and torch.isfinite(out.ccm).all()


def test_no_sync_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted (ORT3D_TRITON_INTERPRET=1 forces the interpreter on this GPU)")
    gaussians = lgm_like_gaussians(num=4096, seed=8, device="cuda")
    cams = cameras("cuda")
    budget = OverlapBudget.for_scene(2, 4096, device="cuda")
    render_feedback(gaussians, cams, renderer="triton", budget=budget)   # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = render_feedback(gaussians, cams, renderer="triton", want_images=True, budget=budget)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    budget.check()
    ref = render_feedback(gaussians, cams, renderer="torch", want_images=True)
    assert ((out.rgb - ref.rgb).norm() / ref.rgb.norm()).item() <= 1e-5
    assert (out.ccm - ref.ccm).abs().max().item() <= 2.0 ** -11
