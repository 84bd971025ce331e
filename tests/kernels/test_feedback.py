"""CCM (docs/renderers.md#ccm, docs/quirks.md#q5) against its closed form, the fp16 emulation, and the adapter input layout."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ort3d.kernels.feedback import ccm_from_depth, feedback_maps, pixel_unshuffle_feedback
from ort3d.kernels.render import RenderOutput

CAMERAS = json.loads((Path(__file__).resolve().parents[2] / "models" / "data" / "cameras.json").read_text())
C2W = torch.tensor(CAMERAS["c2w"]["data"], dtype=torch.float64).float()
INTRINSICS = torch.tensor(CAMERAS["intrinsics"]["data"], dtype=torch.float64).float()
FX = 1.3888888359069824       # normalised focal of every view (float32)
RADIUS = 1.7416968345642094   # view 0 camera distance


def synthetic_depth(views, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    depth = torch.rand(1, views, 1, size, size, generator=gen) + 1.2
    depth[..., : size // 4, :] = 0.0          # background rows
    depth[..., -2:, -3:] = -1.0               # negative depth is background too (mask D > 0)
    return depth


def test_view0_matches_closed_form():
    size = 512  # large enough for the x/y channels to saturate at 0 and 1
    depth = synthetic_depth(1, size)
    ccm = ccm_from_depth(depth, C2W[:1], INTRINSICS[:1])[0, 0].double()
    D = depth[0, 0, 0].double()
    u = torch.arange(size, dtype=torch.float64)
    v = u[:, None]
    expected = torch.stack([
        0.5 + 0.001 * (u - 0.5) * D / FX,
        0.5 - 0.001 * (v - 0.5) * D / FX,
        0.5 + 0.001 * (RADIUS - D),
    ]).clamp(0, 1)
    expected = torch.where(D > 0, expected, torch.full_like(expected, 0.5))
    # fp32 arithmetic on values ~1e3 before the 0.001 scale: ~1e-7 absolute after it.
    assert (ccm - expected).abs().max().item() < 1e-6
    assert (ccm[:2] == 0).any() and (ccm[:2] == 1).any()  # the clamp is exercised


def test_all_views_match_c2w_backprojection():
    size = 64
    depth = synthetic_depth(8, size, seed=1)
    ccm = ccm_from_depth(depth, C2W, INTRINSICS)[0].double()
    K, c2w, D = INTRINSICS.double(), C2W.double(), depth[0, :, 0].double()
    idx = torch.arange(size, dtype=torch.float64)
    X = (idx - K[:, 0, 2, None, None]) * D / K[:, 0, 0, None, None]
    Y = (idx[:, None] - K[:, 1, 2, None, None]) * D / K[:, 1, 1, None, None]
    cam = torch.stack([X, Y, D, torch.ones_like(D)], 1)                      # [V,4,H,W]
    world = torch.einsum("vij,vjhw->vihw", c2w, cam)[:, :3]
    expected = torch.where(D[:, None] > 0, (world * 0.001 + 0.5).clamp(0, 1), torch.full_like(world, 0.5))
    assert (ccm - expected).abs().max().item() < 1e-6  # fp32 rounding only, see above


def test_background_is_exactly_half_in_both_precisions():
    depth = torch.zeros(2, 8, 1, 16, 16)
    depth[:, :, :, 4:8] = -0.5
    for dtype in (torch.float32, torch.float16):
        ccm = ccm_from_depth(depth, C2W, INTRINSICS, matmul_dtype=dtype)
        assert ccm.shape == (2, 8, 3, 16, 16) and ccm.dtype == torch.float32
        assert bool((ccm == 0.5).all())


def test_fp16_emulation_is_fp16_quantised_fp32():
    depth = synthetic_depth(8, 128, seed=2)
    exact = ccm_from_depth(depth, C2W, INTRINSICS)
    half = ccm_from_depth(depth, C2W, INTRINSICS, matmul_dtype=torch.float16)
    assert torch.equal(half, half.half().float())  # every value is an fp16 value
    # Half-step roundings, summed: +0.5 result in [0.5, 1) 2.4e-4, ·0.001 result (< 0.5) 1.2e-4,
    # the ≤ 200-magnitude product and camera coordinates (step 1/8 → 6e-5 each after ·0.001),
    # c2w (translation 1.7417 → 1.7412, 5e-7): ≈ 4.9e-4, below 2^-10.
    diff = (half - exact).abs()
    assert diff.max().item() <= 2.0 ** -10
    assert diff.mean().item() > 1e-5  # it really is quantised, not the fp32 path


def _reference_fp16(depth, c2w, K):
    """The reference op sequence with real half tensors: fp16 matmul, then fp16 scale/offset."""
    B, V, _, H, W = depth.shape
    d = depth.flatten(0, 1)[:, 0]
    u = torch.arange(W, dtype=torch.float32).expand(H, W)
    v = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    x = (u - K[:, 0, 2, None, None]) * d / K[:, 0, 0, None, None]
    y = (v - K[:, 1, 2, None, None]) * d / K[:, 1, 1, None, None]
    coords = torch.stack([x, y, d, torch.ones_like(d)], -1).reshape(B * V, -1, 4)
    world = torch.matmul(coords.half(), c2w.half().transpose(1, 2)).reshape(B * V, H, W, 4)
    pos = world[..., :3] * (d > 0)[..., None]
    out = (pos * 0.001 + 0.5).clamp(0.0, 1.0)
    return out.permute(0, 3, 1, 2).reshape(B, V, 3, H, W).float()


def test_fp16_emulation_matches_half_tensor_ops():
    depth = synthetic_depth(8, 32, seed=3)
    ours = ccm_from_depth(depth, C2W, INTRINSICS, matmul_dtype=torch.float16)
    ref = _reference_fp16(depth, C2W, INTRINSICS)
    # A half GEMM's fp32 accumulation order is the library's choice: allow one fp16 step (2^-11
    # in [0.5, 1)) where a rounding tie goes the other way, and require almost all to be equal.
    assert (ours - ref).abs().max().item() <= 2.0 ** -11
    assert (ours == ref).float().mean().item() > 0.99


def test_pixel_unshuffle_channel_order():
    maps = torch.randn(2, 3, 16, 24)
    out = pixel_unshuffle_feedback(maps)
    assert out.shape == (2, 192, 2, 3)
    assert torch.equal(out, torch.nn.PixelUnshuffle(8)(maps))
    for c, i, j, y, x in [(0, 0, 0, 0, 0), (1, 2, 5, 1, 2), (2, 7, 7, 1, 0), (2, 3, 1, 0, 2)]:
        assert out[1, c * 64 + i * 8 + j, y, x] == maps[1, c, 8 * y + i, 8 * x + j]


def test_feedback_maps_layout():
    B, V, H = 1, 8, 32
    gen = torch.Generator().manual_seed(4)
    render = RenderOutput(rgb=torch.rand(B, V, 3, H, H, generator=gen),
                          alpha=torch.rand(B, V, 1, H, H, generator=gen),
                          depth=synthetic_depth(V, H, seed=4))
    rgb, ccm = feedback_maps(render, C2W, INTRINSICS, unshuffle=False)
    assert torch.equal(rgb, render.rgb.flatten(0, 1))
    # Default precision is the reference's fp16 autocast matmul.
    assert torch.equal(ccm, ccm_from_depth(render.depth, C2W, INTRINSICS, torch.float16).flatten(0, 1))
    rgb_u, ccm_u = feedback_maps(render, C2W, INTRINSICS, unshuffle=True)
    assert rgb_u.shape == ccm_u.shape == (B * V, 192, H // 8, H // 8)
    assert torch.equal(rgb_u, F.pixel_unshuffle(rgb, 8)) and torch.equal(ccm_u, F.pixel_unshuffle(ccm, 8))
