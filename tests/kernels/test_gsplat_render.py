"""gsplat as a feedback renderer: its conventions mapped onto the reference renderer's.

On CPU the renderer runs with gsplat's pure-torch stages (`torch_stages()`: gsplat's own
`_torch_impl` projection and binning, our twin of its compositing kernel) through the same
mapping code the CUDA renderer uses; the CUDA tests compare gsplat's kernels with those twins.
Scenes: LGM-like Gaussians (kernels/synthetic_gaussians.py) whose raw quaternions have norm
≈ 0.08 (normalised over the Gaussian axis, docs/quirks.md#q19), scales ×3 so that splats span
several pixels at 64² as LGM's do at 512².
"""

import importlib.metadata

import pytest
import torch

from kernel_helpers import INTRINSICS, rel_err
from ort3d.kernels import gsplat_render, render
from ort3d.kernels.feedback import pixel_unshuffle_feedback
from ort3d.kernels.feedback_dispatch import (RendererUnavailable, create_feedback_renderer,
                                             prepare_render_cameras, render_feedback)
from ort3d.kernels.gsplat_render import (
    GsplatFeedbackRenderer, bin_stage, composite_stage, gsplat_inputs, gsplat_package_problem,
    gsplat_unavailable_reason, project_stage, rasterize_to_pixels_torch, render_gaussians_gsplat,
    torch_stages,
)
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w

H = W = 64
needs_gsplat = pytest.mark.skipif(gsplat_package_problem() is not None, reason=str(gsplat_package_problem()))


def cameras(device="cpu"):
    return prepare_render_cameras(look_at_c2w([45.0, 270.0]), 39.6, INTRINSICS.expand(2, 3, 3),
                                  H, W, device=device)


def scene(seed, batch=1, opacity_max=1.0, device="cpu"):
    g = lgm_like_gaussians(num=512, batch=batch, seed=seed)
    g[..., 4:7] *= 3.0
    g[..., 3] = g[..., 3].clamp(max=opacity_max)
    return g.to(device)


def as_reference_inputs(projected, binned, height, width):
    """gsplat's projection and tile lists in the reference compositor's types (batch of one)."""
    start = binned.isect_offsets.reshape(-1).long()
    count = torch.diff(start, append=start.new_tensor([binned.flatten_ids.numel()]))
    tiles_x, tiles_y = render.tile_grid(height, width)
    valid = (projected.radii > 0).all(-1)[None]
    return (render.Projected(means2d=(projected.means2d - 0.5)[None], conic=projected.conics[None],
                             radius=None, depth=projected.depths[None], rect_min=None, rect_max=None,
                             valid=valid),
            render.Binned(binned.flatten_ids.long(), start, count, tiles_x, tiles_y))


@needs_gsplat
def test_projection_equals_the_reference_with_the_raw_quaternion_covariance():
    g = scene(seed=3)
    cams = cameras()
    stages = torch_stages()
    inputs = gsplat_inputs(g, cams.w2c, cams.K)
    got = project_stage(stages, inputs, 0, H, W)
    ref = render.project_gaussians(g, cams.w2c, cams.K, H, W)
    assert g[..., 7:11].norm(dim=-1).max() < 0.2            # raw quaternions, far from unit (Q19)

    ours, theirs = ref.valid[0], (got.radii > 0).all(-1)
    both = ours & theirs
    assert both.sum() > 0.9 * ours.sum() > 500
    # fp32 rounding: the reference evaluates fx·x/z + cx, gsplat fx·x·(1/z) + (cx + 0.5).
    assert ((got.means2d - 0.5) - ref.means2d[0])[both].abs().max() <= 3e-5
    assert rel_err(got.conics[both], ref.conic[0][both]) <= 1e-6   # einsum vs explicit sums
    assert (got.depths[both] - ref.depth[0][both]).abs().max() <= 1e-6
    # Culling differs only at the image border: the reference keeps a Gaussian whose getRect is
    # not empty, gsplat one whose (different) bounding box overlaps the image.
    mismatch = ours ^ theirs
    u = (got.means2d - 0.5)[mismatch]
    reach = torch.maximum(ref.radius[0][mismatch], got.radii[mismatch].max(-1).values)[:, None] + 1
    assert mismatch.sum() <= 0.01 * ours.sum()
    assert ((u < reach) | (u > torch.tensor([W - 1.0, H - 1.0]) - reach)).any(-1).all()

    # gsplat's own quaternion path normalises them and would render other shapes: covars= it is.
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
    normalised, _ = _quat_scale_to_covar_preci(g[0, :, 7:11], g[0, :, 4:7], True, False)
    other = project_stage(stages, inputs._replace(covars=normalised[None]), 0, H, W)
    assert rel_err(other.conics[both], ref.conic[0][both]) > 0.1


@needs_gsplat
def test_compositing_equals_the_reference_on_the_same_tile_lists(monkeypatch):
    cams = cameras()
    stages = torch_stages()

    def both_compositors(g):
        inputs = gsplat_inputs(g, cams.w2c, cams.K)
        projected = project_stage(stages, inputs, 0, H, W)
        binned = bin_stage(stages, projected, H, W)
        got = composite_stage(stages, inputs, 0, projected, binned, H, W)
        ref = render.composite_tiles(*as_reference_inputs(projected, binned, H, W),
                                     g[..., 11:14], g[..., 3], H, W)
        return [rel_err(getattr(got, n), getattr(ref, n)) for n in ("rgb", "alpha", "depth")]

    # Opacity <= 0.99: neither alpha clamp is reached, so the compositors agree to fp32 rounding
    # (pixel offsets (u+0.5)−(j+0.5) vs u−j; alpha 1−T vs Σα·T; the same T cut but for T == 1e-4).
    assert max(both_compositors(scene(seed=4, opacity_max=0.99))) <= 1e-6
    # An opaque surface: gsplat clamps α at 0.999, the reference at 0.99 (not configurable in gsplat).
    g = scene(seed=4)
    g[..., 3] = torch.where(g[..., 3] > 0.5, 1.0, g[..., 3])
    assert max(both_compositors(g)) > 1e-5
    monkeypatch.setattr(render, "ALPHA_MAX", gsplat_render.GSPLAT_ALPHA_MAX)
    assert max(both_compositors(g)) <= 1e-6


@needs_gsplat
def test_whole_render_and_feedback_against_the_reference():
    g = scene(seed=5)
    cams = cameras()
    got = render_gaussians_gsplat(g, cams.w2c, cams.K, H, W, stages=torch_stages())
    ref = render.render_gaussians(g, cams.w2c, cams.K, H, W)
    assert (ref.alpha > 0.5).float().mean() > 0.1                         # the object is in view
    # Beyond rounding, two conventions gsplat does not expose differ (docs/gsplat.md): the tiles
    # a Gaussian is blended in (the reference's getRect square of 3·sqrt(λ_max), which also skips
    # the first pixel column/row of a tile it barely reaches, vs gsplat's box around every
    # α >= 1/255) and the alpha clamp (0.99 vs 0.999). Measured on this scene: rgb 4.3e-4, alpha
    # and depth 1.4e-3; on the same tile lists the compositors agree to 1e-7 (test above).
    assert rel_err(got.rgb, ref.rgb) <= 2e-3
    assert rel_err(got.alpha, ref.alpha) <= 5e-3
    assert rel_err(got.depth, ref.depth) <= 5e-3

    renderer = GsplatFeedbackRenderer(cams, stages=torch_stages())       # the loop's gsplat kind
    out = renderer.render(g, want_images=True)
    want = render_feedback(g, cams, renderer="torch")
    rgb, ccm = out.rgb, out.ccm
    assert rgb.shape == ccm.shape == want.rgb.shape == (2, 192, H // 8, W // 8)
    assert torch.equal(out.images.rgb, got.rgb)
    assert torch.equal(rgb, pixel_unshuffle_feedback(got.rgb.flatten(0, 1)))
    assert rel_err(rgb, want.rgb) <= 2e-3                                  # the render's difference
    # CCM values are fp16 steps (2^-11): the depth differences above move a few of them
    # (measured: 0.25% of the values, by at most 3 steps).
    assert (ccm != want.ccm).float().mean() < 0.01
    assert renderer.report() == {"kind": "gsplat", "gsplat": importlib.metadata.version("gsplat")}


@needs_gsplat
def test_batch_elements_render_independently():
    g = scene(seed=6, batch=2)
    cams = cameras()
    both = render_gaussians_gsplat(g, cams.w2c, cams.K, H, W, stages=torch_stages())
    for b in range(2):
        alone = render_gaussians_gsplat(g[b:b + 1], cams.w2c, cams.K, H, W, stages=torch_stages())
        for name in ("rgb", "alpha", "depth"):
            assert torch.equal(getattr(both, name)[b:b + 1], getattr(alone, name))
    assert both.rgb.shape == (2, 2, 3, H, W) and both.depth.shape == both.alpha.shape == (2, 2, 1, H, W)


def one_tile(means2d, conics, opacities, rgb, size=16, background=(1.0, 1.0, 1.0)):
    """rasterize_to_pixels_torch on one image, one tile listing the Gaussians in the given order."""
    n = len(opacities)
    colors = torch.tensor(rgb, dtype=torch.float32).reshape(1, n, -1)
    return rasterize_to_pixels_torch(
        torch.tensor(means2d, dtype=torch.float32)[None], torch.tensor(conics, dtype=torch.float32)[None],
        colors, torch.tensor(opacities, dtype=torch.float32)[None], size, size, 16,
        torch.zeros(1, 1, 1, dtype=torch.int32), torch.arange(n, dtype=torch.int32),
        backgrounds=torch.tensor([background], dtype=torch.float32))


def test_compositing_twin_by_hand():
    # One isotropic Gaussian of variance 2 centred on pixel (row 8, column 5): centres at j + 0.5.
    out, alpha = one_tile([[5.5, 8.5]], [[0.5, 0.0, 0.5]], [0.6], [[0.2, 0.4, 0.6]])
    a0 = 0.6
    a1 = 0.6 * torch.exp(torch.tensor(-0.25)).item()                  # one pixel away: σ = ½·½·1
    assert alpha[0, 8, 5, 0].item() == pytest.approx(a0, abs=1e-7)
    assert alpha[0, 8, 6, 0].item() == pytest.approx(a1, abs=1e-7)
    assert out[0, 8, 5].tolist() == pytest.approx([0.2 * a0 + 1 - a0, 0.4 * a0 + 1 - a0, 0.6 * a0 + 1 - a0],
                                                  abs=1e-7)
    # Beyond ~3.3σ α < 1/255: not blended at all (background only).
    assert alpha[0, 8, 15, 0].item() == 0.0 and out[0, 8, 15].tolist() == [1.0, 1.0, 1.0]

    # Opaque stack: α clamps at 0.999, so T = 1e-3 after the first; the second would bring T to
    # 1e-6 <= 1e-4, which ends the pixel without blending it (the third is never reached).
    out, alpha = one_tile([[5.5, 8.5]] * 3, [[0.5, 0.0, 0.5]] * 3, [1.0] * 3,
                          [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], background=(0.0, 0.0, 0.0))
    assert alpha[0, 8, 5, 0].item() == pytest.approx(0.999, abs=1e-7)
    assert out[0, 8, 5].tolist() == pytest.approx([0.999, 0.0, 0.0], abs=1e-7)
    # Image smaller than the tile: pixels outside are not returned.
    out, alpha = one_tile([[5.5, 8.5]], [[0.5, 0.0, 0.5]], [0.6], [[0.2, 0.4, 0.6]], size=12)
    assert out.shape == (1, 12, 12, 3) and alpha.shape == (1, 12, 12, 1)


def test_unavailable_is_one_line(monkeypatch):
    g = lgm_like_gaussians(num=16, seed=1)
    cams = cameras()
    no_cuda = "renderer gsplat: needs a CUDA device (gsplat's rasteriser is CUDA-only)"
    with pytest.raises(RendererUnavailable) as error:                      # what --renderer gsplat gets
        create_feedback_renderer("gsplat", cams)
    assert str(error.value) == no_cuda
    for call in (lambda: render_feedback(g, cams, renderer="gsplat"),
                 lambda: render_gaussians_gsplat(g, cams.w2c, cams.K, H, W)):
        with pytest.raises(RendererUnavailable) as error:
            call()
        assert str(error.value) == no_cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)       # the package checks come next
    monkeypatch.setattr(gsplat_render, "gsplat_version", lambda: None)
    assert gsplat_unavailable_reason("cuda") == "gsplat is not installed: pip install 'ort3d[gsplat]'"
    with pytest.raises(RendererUnavailable, match=r"^renderer gsplat: gsplat is not installed"):
        torch_stages()
    monkeypatch.setattr(gsplat_render, "gsplat_version", lambda: (1, 4))
    assert gsplat_unavailable_reason("cuda") == "needs gsplat>=1.5, found 1.4"
    with pytest.raises(ValueError, match=r"gaussians must be \[B, N, 14\]"):
        gsplat_inputs(g[0], cams.w2c, cams.K)


# ---------------------------------------------------------------------------------------------
# CUDA: gsplat's kernels against their twins and against gsplat.rasterization itself.

def cuda_stages_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("gsplat's CUDA kernels need a CUDA GPU")
    try:
        return gsplat_render.cuda_stages()     # builds gsplat's extension if needed (minutes)
    except RendererUnavailable as error:
        pytest.skip(str(error))


def test_cuda_stages_equal_gsplat_rasterization():
    stages = cuda_stages_or_skip()
    g = scene(seed=7, batch=2, device="cuda")
    cams = cameras("cuda")
    got = render_gaussians_gsplat(g, cams.w2c, cams.K, H, W)
    want = gsplat_render.render_gaussians_rasterization(g, cams.w2c, cams.K, H, W)
    for name in ("rgb", "alpha", "depth"):                  # the same kernels on the same inputs
        assert torch.equal(getattr(got, name), getattr(want, name))
    assert stages is gsplat_render.cuda_stages()            # built once per process
    assert GsplatFeedbackRenderer(cams).stages is stages


def test_cuda_stages_match_their_torch_twins_and_the_reference():
    cuda_stages_or_skip()
    g = scene(seed=8, device="cuda")
    cams = cameras("cuda")
    got = render_gaussians_gsplat(g, cams.w2c, cams.K, H, W)
    twin = render_gaussians_gsplat(g, cams.w2c, cams.K, H, W, stages=torch_stages())
    ref = render.render_gaussians(g, cams.w2c, cams.K, H, W)
    for name in ("rgb", "alpha", "depth"):
        # gsplat compiles with -use_fast_math (__expf): a few ulp per α.
        assert rel_err(getattr(got, name), getattr(twin, name)) <= 1e-5
    # The same explained differences as on CPU (test_whole_render_and_feedback_against_the_reference).
    assert rel_err(got.rgb, ref.rgb) <= 2e-3
    assert rel_err(got.depth, ref.depth) <= 5e-3
