"""Plücker rays and embeddings against docs/inference.md#plucker-embeddings (quirks Q2, Q4)."""

import pytest
import torch

from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.plucker import PLUCKER_DIMS, PluckerEmbedding, encode_plucker, sample_rays


@pytest.fixture(scope="module")
def cameras():
    cams = load_feedback_cameras()
    return cams.intrinsics, cams.c2w


def test_spec_value_view0_pixel00(cameras):
    origins, directions = sample_rays(*cameras, resolution=8)
    assert origins.shape == directions.shape == (1, 8, 8, 8, 3)
    # docs/inference.md#plucker-embeddings quotes the value to 4 decimals.
    expected = torch.tensor([-0.1134, 0.1134, -0.9871])
    assert torch.allclose(directions[0, 0, 0, 0], expected, atol=1e-4)
    assert torch.equal(origins[0, :, 3, 5], cameras[1][:, :3, 3])


def test_q2_transposed_grid_and_transposed_rotation(cameras):
    intrinsics, c2w = cameras
    r = 8
    _, directions = sample_rays(intrinsics, c2w, r)
    g = (torch.arange(r, dtype=torch.float64) + 0.5) / r
    fx, cx = intrinsics[0, 0, 0].double(), intrinsics[0, 0, 2].double()
    fy, cy = intrinsics[0, 1, 1].double(), intrinsics[0, 1, 2].double()
    # Grid rows (v) go through (fx, cx) and columns (u) through (fy, cy): the Q2 transposition.
    rows, cols = torch.meshgrid((g - cx) / fx, (g - cy) / fy, indexing="ij")
    R, t = c2w[:, :3, :3].double(), c2w[:, :3, 3].double()

    # The authors' maths, written independently in float64: p = (row, col, 1), d = normalize(Rᵀp − t).
    p_quirk = torch.stack([rows, cols, torch.ones_like(rows)], dim=-1)
    d_quirk = torch.einsum("fji,hwj->fhwi", R, p_quirk) - t[:, None, None]
    d_quirk = d_quirk / d_quirk.norm(dim=-1, keepdim=True)
    # float32 ray maths vs float64: a few ulp.
    assert (directions[0].double() - d_quirk).abs().max() < 1e-6

    # The geometric rays (p = (col, row, 1), d = normalize(R·p)) are NOT what the model was trained
    # with (fx = fy and cx = cy here, so only the axis swap and Rᵀ vs R differ).
    p_geom = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1)
    d_geom = torch.einsum("fij,hwj->fhwi", R, p_geom)
    d_geom = d_geom / d_geom.norm(dim=-1, keepdim=True)
    assert (directions[0].double() - d_geom).abs().max() > 0.2   # the docs: up to 0.21


def test_q4_ray_product_runs_in_half_under_autocast(cameras):
    """CPU fp16 autocast is the analogue of the reference's CUDA autocast: the c2wᵀ·p einsum
    rounds its inputs and output to fp16; everything else stays fp32."""
    intrinsics, c2w = cameras
    r = 8
    _, exact = sample_rays(intrinsics, c2w, r)
    with torch.autocast("cpu", dtype=torch.float16):
        _, autocast = sample_rays(intrinsics, c2w, r)
    assert autocast.dtype == torch.float32

    g = torch.arange(r, dtype=torch.float32) * (1.0 / r) + 0.5 / r
    x = ((g[:, None] - intrinsics[0, 0, 2]) / intrinsics[0, 0, 0]).expand(r, r)
    y = ((g[None, :] - intrinsics[0, 1, 2]) / intrinsics[0, 1, 1]).expand(r, r)
    points = torch.stack([x, y, torch.ones(r, r), torch.ones(r, r)], dim=-1).half().float()
    world = torch.einsum("fij,hwi->fhwj", c2w.half().float(), points).half().float()[..., :3]
    emulated = world - c2w[:, None, None, :3, 3]
    emulated = emulated / emulated.norm(dim=-1, keepdim=True)
    # Same fp16 roundings; the rest differs only by fp32 reduction order.
    assert (autocast[0] - emulated).abs().max() < 5e-7
    assert (autocast - exact).abs().max() > 1e-5   # the fp16 product is visible


def test_batched_cameras_match_unbatched(cameras):
    intrinsics, c2w = cameras
    o1, d1 = sample_rays(intrinsics, c2w, 4)
    o2, d2 = sample_rays(intrinsics.expand(2, -1, -1, -1), c2w.expand(2, -1, -1, -1), 4)
    assert torch.equal(o2[1], o1[0]) and torch.equal(d2[1], d1[0]) and torch.equal(d2[0], d1[0])


def test_encode_plucker_channel_major_layout():
    torch.manual_seed(0)
    origins = torch.randn(5, 3)
    directions = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    code = encode_plucker(origins, directions)
    assert code.shape == (5, PLUCKER_DIMS) == (5, 78)
    pl = torch.cat([torch.linalg.cross(origins, directions), directions], dim=-1)
    for c in range(6):
        for k in range(6):
            e = pl[:, c] * 2.0 ** k
            assert torch.equal(code[:, c * 6 + k], e.sin())
            assert torch.equal(code[:, 36 + c * 6 + k], e.cos())
    assert torch.equal(code[:, 72:], pl)


def test_embedding_keys_and_feature_map_layout(cameras):
    intrinsics, c2w = cameras
    torch.manual_seed(0)
    mlp = PluckerEmbedding(16)
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == {
        "embed.0.weight": (16, 78), "embed.0.bias": (16,),
        "embed.2.weight": (16, 16), "embed.2.bias": (16,)}
    r = 4
    feature_map = mlp.feature_map(intrinsics, c2w, r)
    assert feature_map.shape == (8, 16, r, r)
    origins, directions = sample_rays(intrinsics, c2w, r)
    f, v, u = 5, 1, 3
    expected = mlp(encode_plucker(origins[0, f, v, u], directions[0, f, v, u]))
    assert torch.allclose(feature_map[f, :, v, u], expected, rtol=0, atol=1e-6)   # 1-row vs batched matmul rounding
