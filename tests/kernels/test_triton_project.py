"""Projection kernel == its torch twin (`render.project_gaussians`) on the renderer's corner cases."""

import torch

from kernel_helpers import kernel_device, rel_err
from ort3d.kernels.render import camera_from_c2w, project_gaussians
from ort3d.kernels.synthetic_gaussians import edge_case_gaussians, look_at_c2w
from ort3d.kernels.triton_project import project_gaussians_triton

H, W = 40, 56          # partial 16×16 tiles on both axes


def test_projection_matches_torch_twin():
    device = kernel_device()
    gaussians = edge_case_gaussians(seed=1, device=device)
    w2c, K = camera_from_c2w(look_at_c2w([0.0, 100.0, 215.0], 10.0), 39.6, (H, W))
    w2c, K = w2c.to(device), K.to(device)
    ref = project_gaussians(gaussians, w2c, K, H, W)
    got = project_gaussians_triton(gaussians, w2c, K, H, W, cull_transparent=False).to_projected()

    # The scene really holds the corner cases: culled near/behind, border straddlers, needles.
    view_z = (gaussians[0, :, :3] @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3])[..., 2]
    assert (view_z <= 0.2).any() and ref.valid.any()
    u, v, r = ref.means2d[..., 0], ref.means2d[..., 1], ref.radius.float()
    assert (ref.valid & ((u < r) | (v < r) | (u + r > W) | (v + r > H))).any()
    assert (ref.valid & (ref.rect_max - ref.rect_min).prod(-1).gt(4)).any()   # multi-tile splats

    # Integer outputs decide binning: they must be identical.
    assert torch.equal(got.valid, ref.valid)
    assert torch.equal(got.radius, ref.radius)
    assert torch.equal(got.rect_min, ref.rect_min) and torch.equal(got.rect_max, ref.rect_max)
    # fp32 outputs: same operations in the same order; 1e-5 leaves room for FMA/libm on GPUs.
    keep = ref.valid
    assert rel_err(got.means2d[keep], ref.means2d[keep]) <= 1e-5
    assert rel_err(got.conic[keep], ref.conic[keep]) <= 1e-5
    assert rel_err(got.depth[keep], ref.depth[keep]) <= 1e-5


def test_transparent_culling_only_drops_invisible_gaussians():
    device = kernel_device()
    gaussians = edge_case_gaussians(seed=1, device=device)
    w2c, K = camera_from_c2w(look_at_c2w([0.0, 100.0], 10.0), 39.6, (H, W))
    ref = project_gaussians(gaussians, w2c.to(device), K.to(device), H, W)
    got = project_gaussians_triton(gaussians, w2c.to(device), K.to(device), H, W).to_projected()
    visible = gaussians[:, None, :, 3] >= 1.0 / 255.0      # α ≤ opacity: below 1/255 always skipped
    assert (ref.valid & ~visible).any()                    # the scene has faint, in-view splats
    assert torch.equal(got.valid, ref.valid & visible)
