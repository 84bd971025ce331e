"""The static-shape renderer (what the exported feedback network runs) against the reference."""

import pytest
import torch

from ort3d.kernels.render import (bin_gaussians, camera_from_c2w, project_gaussians,
                                  render_gaussians)
from ort3d.kernels.render_static import render_gaussians_static, tile_lists
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w

# Chunk boundaries differ from the reference's, so running transmittance products associate
# differently: float32 rounding of a few ulp of values in [0, 1] (depth up to ~2.5).
TOLERANCE = 2e-6


def _scene(num, views, size, seed, opaque=False):
    g = lgm_like_gaussians(num, seed=seed)
    if opaque:   # opaque, large splats: most pixels hit the 1e-4 transmittance cut early
        g[..., 3] = 0.99
        g[..., 4:7] *= 4
    c2w = look_at_c2w(torch.arange(views) * (360.0 / views), elevation_deg=10.0)
    w2c, K = camera_from_c2w(c2w, 39.6, size)
    return g, w2c, K


@pytest.mark.parametrize("opaque", [False, True])
@pytest.mark.parametrize("chunk", [16, 128])
def test_static_render_equals_reference(opaque, chunk):
    g, w2c, K = _scene(768, 3, 48, seed=3, opaque=opaque)
    ref = render_gaussians(g, w2c, K, 48, 48)
    out = render_gaussians_static(g, w2c, K, 48, 48, chunk=chunk)
    for field in ("rgb", "alpha", "depth"):
        got, want = getattr(out, field), getattr(ref, field)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOLERANCE * max(1.0, want.abs().max().item()), field


def test_tile_lists_are_the_rasterizer_lists():
    """Each tile's list: the same Gaussians in the same order as bin_gaussians' sorted entries."""
    g, w2c, K = _scene(300, 2, 40, seed=5)
    projected = project_gaussians(g, w2c, K, 40, 40)
    members, count = tile_lists(projected, 40, 40)
    binned = bin_gaussians(projected, 40, 40)
    assert torch.equal(count, binned.tile_count)
    for tile in range(count.numel()):
        start, n = int(binned.tile_start[tile]), int(count[tile])
        assert torch.equal(members[tile, :n], binned.gaussian_ids[start:start + n])


def test_transparent_gaussians_give_the_background():
    g, w2c, K = _scene(64, 2, 32, seed=0)
    g[..., 3] = 0.0                                    # binned everywhere, blending nothing
    out = render_gaussians_static(g, w2c, K, 32, 32)
    assert torch.equal(out.rgb, torch.ones_like(out.rgb))
    assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
