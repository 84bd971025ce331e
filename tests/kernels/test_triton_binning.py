"""Binning kernel == its torch twin (`render.bin_gaussians`); overflow is safe and reported."""

import pytest
import torch

from kernel_helpers import kernel_device
from ort3d.kernels.render import bin_gaussians, camera_from_c2w, tile_grid
from ort3d.kernels.synthetic_gaussians import edge_case_gaussians, look_at_c2w
from ort3d.kernels.triton_binning import bin_gaussians_triton, emit_overlaps
from ort3d.kernels.triton_project import project_gaussians_triton
from ort3d.kernels.triton_render import OverlapBudget, OverlapCapacityError, render_gaussians_triton

H, W = 40, 56


def scene(device, seed=2):
    gaussians = edge_case_gaussians(seed=seed, device=device)
    w2c, K = camera_from_c2w(look_at_c2w([0.0, 100.0], 10.0), 39.6, (H, W))
    return gaussians, w2c.to(device), K.to(device)


def test_binning_matches_torch_twin_exactly():
    device = kernel_device()
    gaussians, w2c, K = scene(device)
    proj = project_gaussians_triton(gaussians, w2c, K, H, W, cull_transparent=False)
    bins = bin_gaussians_triton(proj, H, W, capacity=4096)
    ref = bin_gaussians(proj.to_projected(), H, W)          # same projection: isolates binning
    got = bins.to_binned(gaussians.shape[1])

    assert int(bins.needed) == ref.gaussian_ids.numel() > 0
    assert torch.equal(got.tile_start, ref.tile_start)
    assert torch.equal(got.tile_count, ref.tile_count)
    assert torch.equal(got.gaussian_ids, ref.gaussian_ids)
    # The scene's duplicates give equal depths inside a tile: the order must still agree (by n).
    depth = proj.to_projected().depth.reshape(-1)[ref.gaussian_ids]
    tile_of_entry = torch.repeat_interleave(torch.arange(ref.tile_count.numel(), device=device),
                                            ref.tile_count)
    ties = (tile_of_entry[1:] == tile_of_entry[:-1]) & (depth[1:] == depth[:-1])
    assert ties.any()


def test_overflow_writes_nothing_past_the_capacity():
    device = kernel_device()
    gaussians, w2c, K = scene(device)
    proj = project_gaussians_triton(gaussians, w2c, K, H, W)
    full = bin_gaussians_triton(proj, H, W, capacity=4096)
    needed = int(full.needed)
    capacity = needed // 2

    order = torch.sort(proj.sort_key, dim=1, stable=True).indices
    ends = torch.cumsum(torch.gather(proj.tiles_touched, 1, order).reshape(-1), 0).view_as(order)
    tiles_x, tiles_y = tile_grid(H, W)
    sentinel = -7
    keys = torch.full((needed + 64,), sentinel, dtype=torch.int16, device=device)
    ids = torch.full((needed + 64,), sentinel, dtype=torch.int32, device=device)
    emit_overlaps(order, ends, proj.rect, keys[:capacity], ids[:capacity], tiles_x, tiles_x * tiles_y)
    assert (keys[capacity:] == sentinel).all() and (ids[capacity:] == sentinel).all()
    assert (keys[:capacity] != sentinel).all() and (ids[:capacity] != sentinel).all()

    # Dropped overlaps are the last ones in (image, depth) order: earlier tile lists are intact.
    small = bin_gaussians_triton(proj, H, W, capacity=capacity)
    assert int(small.needed) == needed and int(small.tile_start[-1]) == capacity
    first_image = full.tiles_x * full.tiles_y
    assert torch.equal(small.tile_start[:first_image + 1], full.tile_start[:first_image + 1])
    kept = int(full.tile_start[first_image])
    assert torch.equal(small.gaussian_ids[:kept], full.gaussian_ids[:kept])


def test_render_reports_overflow_after_the_run():
    device = kernel_device()
    gaussians, w2c, K = scene(device)
    budget = OverlapBudget(capacity=64, device=device)
    out = render_gaussians_triton(gaussians, w2c, K, H, W, budget=budget)
    assert torch.isfinite(out.images.rgb).all() and torch.isfinite(out.images.depth).all()
    with pytest.raises(OverlapCapacityError, match=rf"needed {int(out.needed)} tile overlaps .* holds 64"):
        budget.check()
    roomy = OverlapBudget(capacity=int(out.needed), device=device)
    roomy.observe(out.needed)
    roomy.check()                                               # exactly enough: no error
