"""Compositing kernel and fused feedback epilogue == the torch twins (render → CCM → unshuffle)."""

import torch

from kernel_helpers import INTRINSICS, kernel_device, rel_err
from ort3d.kernels.feedback import ccm_from_depth, feedback_maps, pixel_unshuffle_feedback
from ort3d.kernels.render import camera_from_c2w, composite_tiles, render_gaussians
from ort3d.kernels.synthetic_gaussians import edge_case_gaussians, look_at_c2w
from ort3d.kernels.triton_binning import bin_gaussians_triton
from ort3d.kernels.triton_composite import composite_triton
from ort3d.kernels.triton_project import project_gaussians_triton
from ort3d.kernels.triton_render import render_gaussians_triton

H, W = 40, 56


def scene(device, seed=3):
    gaussians = edge_case_gaussians(seed=seed, device=device)
    c2w = look_at_c2w([0.0, 100.0], 10.0)
    w2c, K = camera_from_c2w(c2w, 39.6, (H, W))
    intrinsics = INTRINSICS.expand(2, 3, 3)
    return gaussians, w2c.to(device), K.to(device), c2w.to(device), intrinsics.to(device)


def test_compositing_matches_torch_twin():
    device = kernel_device()
    gaussians, w2c, K, _, _ = scene(device)
    proj = project_gaussians_triton(gaussians, w2c, K, H, W)
    bins = bin_gaussians_triton(proj, H, W, capacity=4096)
    got = composite_triton(proj, bins, H, W)
    g = gaussians.float()
    ref = composite_tiles(proj.to_projected(), bins.to_binned(g.shape[1]), g[..., 11:14], g[..., 3],
                          H, W)           # same lists: isolates the blending
    # The opaque stack saturates pixels: with α ≤ 0.99 that takes ≥ 2 layers and the rest of the
    # stack is cut off by the early termination (T would drop below 1e-4).
    assert ref.alpha.max() > 0.999
    # Same left-to-right transmittance product; 1e-5 leaves room for exp/FMA on GPUs.
    for name in ("rgb", "alpha", "depth"):
        assert rel_err(getattr(got, name), getattr(ref, name)) <= 1e-5, name


def test_fused_feedback_equals_render_ccm_unshuffle():
    device = kernel_device()
    gaussians, w2c, K, c2w, intrinsics = scene(device)
    out = render_gaussians_triton(gaussians, w2c, K, H, W, feedback_cameras=(c2w, intrinsics))
    ref = render_gaussians(gaussians, w2c, K, H, W)
    for name in ("rgb", "alpha", "depth"):
        assert rel_err(getattr(out.images, name), getattr(ref, name)) <= 1e-5, name

    # Layout and CCM are exact: the epilogue equals CCM → PixelUnshuffle of the kernel's own render.
    assert out.feedback_rgb.shape == out.feedback_ccm.shape == (2, 192, H // 8, W // 8)
    assert torch.equal(out.feedback_rgb, pixel_unshuffle_feedback(out.images.rgb[0]))
    own_ccm = ccm_from_depth(out.images.depth, c2w, intrinsics, torch.float16)[0]
    assert torch.equal(out.feedback_ccm, pixel_unshuffle_feedback(own_ccm))
    assert ((own_ccm - 0.5).abs() > 0.01).any() and (own_ccm == 0.5).any()   # object + background

    # Against the whole reference chain, depth differs by float rounding, which can flip an fp16
    # rounding of the CCM: allow one fp16 ulp in [0.5, 1) on a few entries.
    ref_rgb, ref_ccm = feedback_maps(ref, c2w, intrinsics, unshuffle=True)
    assert rel_err(out.feedback_rgb, ref_rgb) <= 1e-5
    diff = (out.feedback_ccm - ref_ccm).abs()
    assert diff.max() <= 2.0 ** -11 and (diff > 0).float().mean() < 0.01


def test_feedback_only_fp32_ccm_and_fp16_output():
    device = kernel_device()
    gaussians, w2c, K, c2w, intrinsics = scene(device, seed=4)
    out = render_gaussians_triton(gaussians, w2c, K, H, W, want_images=False,
                                  feedback_cameras=(c2w, intrinsics), matmul_dtype=torch.float32,
                                  feedback_dtype=torch.float16)
    assert out.images is None
    assert out.feedback_rgb.dtype == out.feedback_ccm.dtype == torch.float16
    ref_rgb, ref_ccm = feedback_maps(render_gaussians(gaussians, w2c, K, H, W), c2w, intrinsics,
                                     unshuffle=True, matmul_dtype=torch.float32)
    # Written as fp16: compare at fp16 resolution (2^-11 relative, half-ulp rounding).
    assert (out.feedback_rgb.float() - ref_rgb).abs().max() <= 2.0 ** -11
    assert (out.feedback_ccm.float() - ref_ccm).abs().max() <= 2.0 ** -11
