"""Reference Gaussian renderer: hand-derived cases, a brute-force twin, and the tiny-size timing."""

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ort3d.kernels.render import (
    ALPHA_MIN, bin_gaussians, camera_from_c2w, composite_tiles, project_gaussians, render_gaussians,
)

CAMERAS = Path(__file__).resolve().parents[2] / "models" / "data" / "cameras.json"
IDENTITY = torch.eye(4)[None]


def gaussian(pos, opacity, scale, quat=(1.0, 0.0, 0.0, 0.0), rgb=(0.2, 0.4, 0.6)):
    return torch.tensor([*pos, opacity, *scale, *quat, *rgb], dtype=torch.float32)


def pinhole(f, cx, cy):
    return torch.tensor([[[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]])


def feedback_cameras(size):
    data = json.loads(CAMERAS.read_text())
    c2w = torch.tensor(data["c2w"]["data"], dtype=torch.float64).float()
    return camera_from_c2w(c2w, data["fov"]["data"][0], size)


# ---------------------------------------------------------------------------------------------
# Hand-derived cases. Camera = identity pose, so a Gaussian at (0, 0, z) is seen head-on and the
# EWA Jacobian is diag(f/z, f/z): the 2D covariance is (f·s/z)² + 0.3 on the diagonal.

@pytest.mark.parametrize("opacity", [0.7, 1.0])
def test_isotropic_gaussian_head_on(opacity):
    f, z, s = 40.0, 2.0, 0.075                       # f·s/z = 1.5 px
    var = (f * s / z) ** 2 + 0.3
    g = gaussian((0.0, 0.0, z), opacity, (s, s, s))[None, None]
    K = pinhole(f, 16.0, 16.0)
    out = render_gaussians(g, IDENTITY, K, 32, 32)
    a0 = min(0.99, opacity)
    rgb = torch.tensor([0.2, 0.4, 0.6])
    # fp32 maths vs float64 hand values: a few ulps.
    assert out.alpha[0, 0, 0, 16, 16].item() == pytest.approx(a0, abs=1e-6)
    assert torch.allclose(out.rgb[0, 0, :, 16, 16], rgb * a0 + (1 - a0), atol=1e-6)
    assert out.depth[0, 0, 0, 16, 16].item() == pytest.approx(z * a0, abs=1e-6)
    for d in (1, 2):  # falloff along a row and a column: exp(−d²/(2σ²)) with σ² including +0.3
        expected = opacity * math.exp(-d * d / (2 * var))
        assert out.alpha[0, 0, 0, 16, 16 + d].item() == pytest.approx(expected, abs=1e-6)
        assert out.alpha[0, 0, 0, 16 - d, 16].item() == pytest.approx(expected, abs=1e-6)

    proj = project_gaussians(g, IDENTITY, K, 32, 32)
    assert torch.allclose(proj.conic[0, 0, 0], torch.tensor([1 / var, 0.0, 1 / var]), rtol=1e-6)
    # λ_max uses the rasterizer's max(0.1, mid² − det) = 0.1 for an isotropic footprint.
    assert proj.radius[0, 0, 0].item() == math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))
    assert proj.depth[0, 0, 0].item() == z


def _composite_by_hand(alphas, colors, depths, bg=1.0):
    T, c, dep = 1.0, 0.0, 0.0
    for a, col, z in zip(alphas, colors, depths):
        if T * (1 - a) < 1e-4:
            break
        c, dep, T = c + col * a * T, dep + z * a * T, T * (1 - a)
    return c + T * bg, dep, 1 - T


def test_two_overlapping_gaussians_front_to_back():
    K = pinhole(40.0, 16.0, 16.0)
    front = gaussian((0.0, 0.0, 2.0), 0.6, (0.1,) * 3, rgb=(1.0, 0.0, 0.0))
    back = gaussian((0.0, 0.0, 3.0), 0.8, (0.15,) * 3, rgb=(0.0, 0.0, 1.0))
    a = render_gaussians(torch.stack([front, back])[None], IDENTITY, K, 32, 32)
    b = render_gaussians(torch.stack([back, front])[None], IDENTITY, K, 32, 32)
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # same per-pixel order either way, so bit-identical
    red, depth, alpha = _composite_by_hand([0.6, 0.8], [1.0, 0.0], [2.0, 3.0])
    blue = _composite_by_hand([0.6, 0.8], [0.0, 1.0], [2.0, 3.0])[0]
    assert a.rgb[0, 0, 0, 16, 16].item() == pytest.approx(red, abs=1e-6)
    assert a.rgb[0, 0, 2, 16, 16].item() == pytest.approx(blue, abs=1e-6)
    assert a.depth[0, 0, 0, 16, 16].item() == pytest.approx(depth, abs=1e-6)
    assert a.alpha[0, 0, 0, 16, 16].item() == pytest.approx(alpha, abs=1e-6)


def test_early_termination_ignores_later_gaussians():
    K = pinhole(40.0, 16.0, 16.0)
    depths = [2.0 + 0.1 * i for i in range(8)]
    # α = 0.8 at the centre: T = 0.2^j, so 0.2^6 = 6.4e-5 < 1e-4 stops before the 6th Gaussian.
    stack = [gaussian((0.0, 0.0, z), 0.8, (0.1,) * 3, rgb=(i / 8, 1 - i / 8, 0.5)) for i, z in enumerate(depths)]
    out = render_gaussians(torch.stack(stack)[None], IDENTITY, K, 32, 32)
    reds = [i / 8 for i in range(8)]
    red, depth, alpha = _composite_by_hand([0.8] * 8, reds, depths)
    assert out.rgb[0, 0, 0, 16, 16].item() == pytest.approx(red, abs=1e-6)
    assert out.depth[0, 0, 0, 16, 16].item() == pytest.approx(depth, abs=1e-6)
    assert out.alpha[0, 0, 0, 16, 16].item() == pytest.approx(alpha, abs=1e-6)
    # Recolouring the Gaussians behind the stopping point leaves the centre pixel untouched.
    for g in stack[5:]:
        g[11:14] = torch.tensor([0.0, 0.0, 0.0])
    again = render_gaussians(torch.stack(stack)[None], IDENTITY, K, 32, 32)
    assert torch.equal(again.rgb[0, 0, :, 16, 16], out.rgb[0, 0, :, 16, 16])
    # Fully opaque (α clamped to 0.99): T = 0.0099999905 after one, 9.99998e-5 < 1e-4 after two.
    opaque = torch.stack([gaussian((0.0, 0.0, z), 1.0, (0.1,) * 3, rgb=(0.0, 1.0, 0.0)) for z in (2.0, 2.5, 3.0)])
    out = render_gaussians(opaque[None], IDENTITY, K, 32, 32)
    assert out.alpha[0, 0, 0, 16, 16].item() == pytest.approx(0.99, abs=1e-6)
    assert out.depth[0, 0, 0, 16, 16].item() == pytest.approx(2.0 * 0.99, abs=1e-6)


@pytest.mark.parametrize("z", [0.2, 0.1, -1.0])
def test_near_plane_culls(z):
    g = torch.stack([gaussian((0.0, 0.0, z), 0.9, (0.05,) * 3), gaussian((0.0, 0.0, 0.25), 0.9, (0.01,) * 3)])
    proj = project_gaussians(g[None], IDENTITY, pinhole(40.0, 16.0, 16.0), 32, 32)
    assert proj.valid[0, 0].tolist() == [False, True]  # z <= 0.2 culled, 0.25 kept
    assert proj.radius[0, 0, 0].item() == 0
    out = render_gaussians(g[:1][None], IDENTITY, pinhole(40.0, 16.0, 16.0), 32, 32)
    assert out.alpha.abs().max().item() == 0.0 and out.rgb.min().item() == 1.0


def _hand_conic(quat, scale, f, z):
    w, x, y, zq = quat
    R = torch.tensor([
        [1 - 2 * (y * y + zq * zq), 2 * (x * y - w * zq), 2 * (x * zq + w * y)],
        [2 * (x * y + w * zq), 1 - 2 * (x * x + zq * zq), 2 * (y * zq - w * x)],
        [2 * (x * zq - w * y), 2 * (y * zq + w * x), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)
    sigma = R @ torch.diag(torch.tensor(scale, dtype=torch.float64) ** 2) @ R.T
    cov = (f / z) ** 2 * sigma[:2, :2] + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    return torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]).float()


def test_unnormalised_quaternion_q19():
    f, z, scale = 40.0, 2.0, (0.2, 0.05, 0.1)
    half = math.radians(22.5)                       # unit quaternion: 45° about the view axis
    unit = (math.cos(half), 0.0, 0.0, math.sin(half))
    tiny = tuple(0.01 * c for c in unit)            # same direction, norm 0.01 (as Q19 produces)
    K = pinhole(f, 16.0, 16.0)
    g = torch.stack([gaussian((0.0, 0.0, z), 0.9, scale, q) for q in (unit, tiny)])
    conic = project_gaussians(g[None], IDENTITY, K, 32, 32).conic[0, 0]
    for i, q in enumerate((unit, tiny)):
        assert torch.allclose(conic[i], _hand_conic(q, scale, f, z), rtol=1e-5, atol=1e-7)
    # The raw tiny quaternion is almost the identity rotation: an axis-aligned footprint, unlike
    # the 45° ellipse of its normalised version (a normalising renderer would draw the same twice).
    assert abs(conic[1, 1].item()) < 0.02 * abs(conic[0, 1].item())
    a = render_gaussians(g[:1][None], IDENTITY, K, 32, 32).alpha
    b = render_gaussians(g[1:][None], IDENTITY, K, 32, 32).alpha
    assert (a - b).abs().max().item() > 0.1


def test_tiles_and_image_borders():
    f, z = 40.0, 2.0
    s = math.sqrt(20.0 - 0.3) * z / f                 # σ² = 20 px², spans 4 tiles
    g = gaussian((0.0, 0.0, z), 0.9, (s,) * 3)[None, None]
    # Centred on the corner shared by 4 tiles: the image must be exactly mirror-symmetric.
    out = render_gaussians(g, IDENTITY, pinhole(f, 15.5, 15.5), 32, 32).alpha[0, 0, 0]
    assert torch.allclose(out, out.flip(0), atol=1e-7) and torch.allclose(out, out.flip(1), atol=1e-7)
    assert out[16, 16].item() == pytest.approx(0.9 * math.exp(-0.5 / (2 * 20.0)), abs=1e-6)
    assert out[16, 4].item() == pytest.approx(0.9 * math.exp(-(11.5 ** 2 + 0.25) / (2 * 20.0)), abs=1e-6)
    assert out[0, 0].item() == 0.0  # α = 5.5e-6 < 1/255 is skipped
    # Centred left of the image: its right half still shows on column 0.
    out = render_gaussians(g, IDENTITY, pinhole(f, -2.5, 16.0), 32, 32).alpha[0, 0, 0]
    assert out[16, 0].item() == pytest.approx(0.9 * math.exp(-2.5 ** 2 / (2 * 20.0)), abs=1e-6)
    # The tile rect cuts a footprint: σ² = 2.2 → radius ceil(3·sqrt(2.2 + sqrt(0.1))) = 5, centre
    # u = 11.5 → rect x in [0, 1) tiles, so column 16 (tile 1) stays background although its α
    # by the formula is above 1/255, while column 15 (tile 0, same distance minus 1) blends.
    s = math.sqrt(2.2 - 0.3) * z / f
    g = gaussian((0.0, 0.0, z), 0.99, (s,) * 3)[None, None]
    K = pinhole(f, 11.5, 8.0)
    assert project_gaussians(g, IDENTITY, K, 32, 32).radius.item() == 5
    out = render_gaussians(g, IDENTITY, K, 32, 32).alpha[0, 0, 0]
    assert 0.99 * math.exp(-4.5 ** 2 / (2 * 2.2)) > ALPHA_MIN
    assert out[8, 16].item() == 0.0
    assert out[8, 15].item() == pytest.approx(0.99 * math.exp(-3.5 ** 2 / (2 * 2.2)), abs=1e-6)


def test_bin_gaussians_sorts_by_depth_with_stable_ties():
    K = pinhole(40.0, 8.0, 8.0)
    depths = [3.0, 2.0, 3.0, 2.5, 2.0]   # ties keep index order
    g = torch.stack([gaussian((0.0, 0.0, z), 0.5, (0.01,) * 3) for z in depths])[None]
    proj = project_gaussians(g, IDENTITY, K, 32, 32)
    binned = bin_gaussians(proj, 32, 32)
    assert binned.tile_count.tolist() == [5, 0, 0, 0]  # all small, all inside tile (0, 0)
    assert binned.gaussian_ids.tolist() == [1, 4, 3, 0, 2]


# ---------------------------------------------------------------------------------------------
# Independent brute force: per view, project each Gaussian on its own with 3×3 matrices, then
# blend Gaussian after Gaussian (globally depth-sorted, which is each tile's order) over all
# pixels inside its tile rect.

def _brute_force_view(gaussians, w2c, K, H, W, bg=1.0):
    fx, fy, cx, cy = K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item()
    Wrot, t = w2c[:3, :3], w2c[:3, 3]
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    items = []
    for i, g in enumerate(gaussians):
        p = Wrot @ g[0:3] + t
        if p[2].item() <= 0.2:
            continue
        w, x, y, z = g[7:11].tolist()
        R = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                          [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                          [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        sigma = R @ torch.diag(g[4:7] ** 2) @ R.T
        limx, limy = 1.3 * W / (2 * fx), 1.3 * H / (2 * fy)
        tx = min(limx, max(-limx, (p[0] / p[2]).item())) * p[2].item()
        ty = min(limy, max(-limy, (p[1] / p[2]).item())) * p[2].item()
        zz = p[2].item()
        J = torch.tensor([[fx / zz, 0.0, -fx * tx / zz ** 2], [0.0, fy / zz, -fy * ty / zz ** 2]])
        cov = J @ Wrot @ sigma @ Wrot.T @ J.T + 0.3 * torch.eye(2)
        det = (cov[0, 0] * cov[1, 1] - cov[0, 1] ** 2).item()
        if det == 0:
            continue
        mid = 0.5 * (cov[0, 0] + cov[1, 1]).item()
        radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
        u, v = fx * p[0].item() / zz + cx, fy * p[1].item() / zz + cy
        gx, gy = (W + 15) // 16, (H + 15) // 16
        x0, x1 = (min(gx, max(0, math.trunc(e / 16))) for e in (u - radius, u + radius + 15))
        y0, y1 = (min(gy, max(0, math.trunc(e / 16))) for e in (v - radius, v + radius + 15))
        if (x1 - x0) * (y1 - y0) == 0:
            continue
        rect = (rows >= 16 * y0) & (rows < 16 * y1) & (cols >= 16 * x0) & (cols < 16 * x1)
        items.append((zz, i, u, v, cov, det, rect))
    T, color = torch.ones(H, W), torch.zeros(3, H, W)
    depth, alpha_sum, done = torch.zeros(H, W), torch.zeros(H, W), torch.zeros(H, W, dtype=torch.bool)
    for zz, i, u, v, cov, det, rect in sorted(items, key=lambda it: (it[0], it[1])):
        a, b, c = cov[1, 1] / det, -cov[0, 1] / det, cov[0, 0] / det
        dx, dy = u - cols, v - rows
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = torch.clamp(gaussians[i, 3] * torch.exp(power), max=0.99)
        use = rect & ~done & (power <= 0) & (alpha >= 1 / 255)
        stop = use & (T * (1 - alpha) < 1e-4)
        done |= stop
        use &= ~stop
        wgt = torch.where(use, alpha * T, torch.zeros(()))
        color += gaussians[i, 11:14, None, None] * wgt
        depth += zz * wgt
        alpha_sum += wgt
        T = torch.where(use, T * (1 - alpha), T)
    return (color + T * bg).clamp(0, 1), alpha_sum, depth, done


@pytest.mark.parametrize("chunk_elements", [1, None])  # 8 Gaussians per chunk vs one chunk
def test_matches_brute_force(chunk_elements):
    H = W = 32
    gen = torch.Generator().manual_seed(3)
    n = 50
    pos = torch.rand(n, 3, generator=gen) * 0.8 - 0.4
    pos[:6] = torch.rand(6, 3, generator=gen) * 0.1     # an opaque clump that terminates pixels
    opacity = torch.rand(n, 1, generator=gen) * 0.9 + 0.1
    opacity[:6] = 1.0
    scale = torch.rand(n, 3, generator=gen) * 0.05 + 0.01
    scale[:6] = 0.2
    # Norms from 0.01 to 1.1: unnormalised on purpose (Q19).
    quat = F.normalize(torch.randn(n, 4, generator=gen), dim=-1) * (torch.rand(n, 1, generator=gen) * 1.09 + 0.01)
    quat[:6] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    rgb = torch.rand(n, 3, generator=gen)
    pos[-1] = torch.tensor([0.65, 0.0, 0.0])              # on the image border
    g = torch.cat([pos, opacity, scale, quat, rgb], -1)
    w2c, K = feedback_cameras(W)
    w2c, K = w2c[[0, 3]], K[[0, 3]]
    proj = project_gaussians(g[None], w2c, K, H, W)
    out = composite_tiles(proj, bin_gaussians(proj, H, W), g[None, :, 11:14], g[None, :, 3], H, W,
                          max_chunk_elements=chunk_elements)
    for view in range(2):
        rgb_ref, alpha_ref, depth_ref, done = _brute_force_view(g, w2c[view], K[view], H, W)
        assert done.sum().item() > 10  # the case really exercises early termination
        # Same fp32 maths in another association (matmuls, per-Gaussian sums): ulp-level.
        assert (out.rgb[0, view] - rgb_ref).abs().max().item() < 1e-5
        assert (out.alpha[0, view, 0] - alpha_ref).abs().max().item() < 1e-5
        assert (out.depth[0, view, 0] - depth_ref).abs().max().item() < 1e-5
    assert (out.alpha == 0).float().mean().item() > 0.02  # and untouched background pixels


def test_camera_from_c2w_matches_rasterizer_projection():
    w2c, K = feedback_cameras(512)
    assert K[0, 0, 0].item() == pytest.approx(711.1111, abs=1e-3)
    assert K[0, 0, 2].item() == 255.5
    data = json.loads(CAMERAS.read_text())
    c2w = torch.tensor(data["c2w"]["data"], dtype=torch.float64).float()
    assert torch.allclose(w2c @ c2w, torch.eye(4).expand(8, 4, 4), atol=1e-6)
    # ndc2Pix of the 3DGS projection: ((x/(z·tanfov) + 1)·W − 1)/2, tanfov = 0.36.
    point = torch.tensor([0.3, -0.2, 0.1, 1.0])
    p = (w2c[1] @ point)[:3]
    tanfov = math.tan(math.radians(data["fov"]["data"][0]) / 2)
    ndc = p[0].item() / (p[2].item() * tanfov)
    g = gaussian(point[:3].tolist(), 0.5, (0.01,) * 3)[None, None]
    u = project_gaussians(g, w2c[1:2], K[1:2], 512, 512).means2d[0, 0, 0, 0].item()
    assert u == pytest.approx(((ndc + 1) * 512 - 1) / 2, abs=1e-3)


def test_tiny_case_renders_in_under_a_second():
    N, size = 4096, 128
    gen = torch.Generator().manual_seed(0)
    g = torch.cat([
        torch.rand(1, N, 3, generator=gen) * 1.2 - 0.6,
        torch.rand(1, N, 1, generator=gen) * 0.8 + 0.1,
        torch.rand(1, N, 3, generator=gen) * 0.025 + 0.005,
        F.normalize(torch.randn(1, N, 4, generator=gen), dim=1),  # over the Gaussian axis (Q19)
        torch.rand(1, N, 3, generator=gen),
    ], -1)
    w2c, K = feedback_cameras(size)
    # Measured as the CPU time of ONE thread: the work itself, not the shared box's load
    # (several test processes on 2 cores make wall-clock and OpenMP timings meaningless).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        render_gaussians(g, w2c, K, size, size)  # warm-up
        cpu, wall = [], []
        for _ in range(3):
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            out = render_gaussians(g, w2c, K, size, size)
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start_wall)
    finally:
        torch.set_num_threads(threads)
    print(f"tiny render (4096 Gaussians, 8 views, 128²), 1 thread: "
          f"best CPU {min(cpu):.3f} s, best wall {min(wall):.3f} s")
    assert out.rgb.shape == (1, 8, 3, size, size)
    assert 0.3 < out.alpha.mean().item() < 1.0 and out.depth.max().item() > 1.0
    assert min(cpu) < 1.0
