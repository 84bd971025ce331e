"""The Triton render path never reads a device value on the host (CUDA-graph capturable)."""

import os

import pytest
import torch

from host_sync import HostReadError, NoHostReads, UncheckedLaunch
from kernel_helpers import INTRINSICS
from ort3d.kernels import triton_binning, triton_composite, triton_project
from ort3d.kernels.feedback_dispatch import prepare_render_cameras, render_feedback
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w
from ort3d.kernels.triton_render import OverlapBudget

H, W = 32, 32


def cameras(device):
    return prepare_render_cameras(look_at_c2w([30.0, 200.0]), 39.6, INTRINSICS.expand(2, 3, 3),
                                  H, W, device=device)


def test_no_host_reads_in_the_triton_render_path(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU variant runs the kernels through the interpreter (TRITON_INTERPRET=1)")
    gaussians = lgm_like_gaussians(num=96, seed=7)
    cams = cameras("cpu")
    budget = OverlapBudget.for_scene(2, 96)
    guard = NoHostReads()
    # The CPU interpreter copies tensors to numpy itself, which a GPU launch never does.
    for module, name in ((triton_project, "_project_kernel"), (triton_binning, "_emit_kernel"),
                         (triton_composite, "_composite_kernel")):
        monkeypatch.setattr(module, name, UncheckedLaunch(getattr(module, name), guard))
    with guard:
        with pytest.raises(HostReadError, match="_local_scalar_dense"):
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
