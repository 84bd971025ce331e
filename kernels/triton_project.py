"""Triton twin of `render.project_gaussians`: cull, EWA projection, conic, radius, tile rect.

One program projects BLOCK Gaussians into one (batch, view) image. The arithmetic follows the
torch reference operation by operation (same association, same clamps) so that the two agree to
float32 rounding; see `kernels/render.py` for the semantics and the rasterizer quirks (Q19: the
quaternion is used raw, never normalised).

Per (image, Gaussian) it writes one packed record of REC floats that the compositing kernel
gathers (u, v, conic a, b, c, opacity, view depth, r, g, b), the tile rect, the number of tiles
touched (0 when culled) and the depth-sort key (+inf when culled, so culled Gaussians sort last).

Every division is correctly rounded (tl.div_rn) and FMA contraction is disabled (cheap kernel):
otherwise a rounding difference could move a Gaussian across a tile boundary relative to the
torch twin running on the same device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ort3d.kernels.render import Projected, tile_grid
from ort3d.kernels.render_constants import (ALPHA_MIN, DILATION, DISCRIMINANT_FLOOR, JACOBIAN_CLAMP,
                                            NEAR_Z, SIGMA_EXTENT, TILE)

REC = 10          # floats per packed record
BLOCK = 128       # Gaussians per program


class TritonProjection(NamedTuple):
    record: torch.Tensor          # [B·V, N, REC] float32
    rect: torch.Tensor            # [B·V, N, 4] int32 tile rect (x0, y0, x1, y1), x1/y1 exclusive
    radius: torch.Tensor          # [B·V, N] int32, 0 where culled
    tiles_touched: torch.Tensor   # [B·V, N] int32, 0 where culled
    sort_key: torch.Tensor        # [B·V, N] float32 view depth, +inf where culled
    batch: int
    views: int

    def to_projected(self) -> Projected:
        """The same data in the torch reference's layout ([B, V, N, ...]) for parity checks."""
        B, V = self.batch, self.views
        N = self.record.shape[1]
        valid = self.tiles_touched > 0
        keep = valid.unsqueeze(-1)
        rec = self.record
        return Projected(
            means2d=(rec[..., 0:2] * keep).reshape(B, V, N, 2),
            conic=(rec[..., 2:5] * keep).reshape(B, V, N, 3),
            radius=self.radius.reshape(B, V, N),
            depth=(rec[..., 6] * valid).reshape(B, V, N),
            rect_min=self.rect[..., 0:2].reshape(B, V, N, 2),
            rect_max=self.rect[..., 2:4].reshape(B, V, N, 2),
            valid=valid.reshape(B, V, N))


@triton.jit
def _project_kernel(g_ptr, w2c_ptr, k_ptr, rec_ptr, rect_ptr, radius_ptr, touched_ptr, key_ptr,
                    N, V, height, width, tiles_x, tiles_y,
                    REC: tl.constexpr, BLOCK: tl.constexpr, CULL_TRANSPARENT: tl.constexpr,
                    NEAR_Z: tl.constexpr, JACOBIAN_CLAMP: tl.constexpr, DILATION: tl.constexpr,
                    DISCRIMINANT_FLOOR: tl.constexpr, SIGMA_EXTENT: tl.constexpr,
                    ALPHA_MIN: tl.constexpr, TILE: tl.constexpr):
    image = tl.program_id(1)                   # flat (b, v)
    b = image // V
    v = image % V
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    g = g_ptr + (b * N + n).to(tl.int64) * 14

    px = tl.load(g + 0, mask=live, other=0.0)
    py = tl.load(g + 1, mask=live, other=0.0)
    pz = tl.load(g + 2, mask=live, other=0.0)
    opacity = tl.load(g + 3, mask=live, other=0.0)
    s0 = tl.load(g + 4, mask=live, other=0.0)
    s1 = tl.load(g + 5, mask=live, other=0.0)
    s2 = tl.load(g + 6, mask=live, other=0.0)
    qw = tl.load(g + 7, mask=live, other=0.0)
    qx = tl.load(g + 8, mask=live, other=0.0)
    qy = tl.load(g + 9, mask=live, other=0.0)
    qz = tl.load(g + 10, mask=live, other=0.0)

    # Σ = M Mᵀ with M = R S; R from the raw quaternion (Q19).
    m00 = (1 - 2 * (qy * qy + qz * qz)) * s0
    m01 = (2 * (qx * qy - qw * qz)) * s1
    m02 = (2 * (qx * qz + qw * qy)) * s2
    m10 = (2 * (qx * qy + qw * qz)) * s0
    m11 = (1 - 2 * (qx * qx + qz * qz)) * s1
    m12 = (2 * (qy * qz - qw * qx)) * s2
    m20 = (2 * (qx * qz - qw * qy)) * s0
    m21 = (2 * (qy * qz + qw * qx)) * s1
    m22 = (1 - 2 * (qx * qx + qy * qy)) * s2
    c00 = m00 * m00 + m01 * m01 + m02 * m02
    c01 = m00 * m10 + m01 * m11 + m02 * m12
    c02 = m00 * m20 + m01 * m21 + m02 * m22
    c11 = m10 * m10 + m11 * m11 + m12 * m12
    c12 = m10 * m20 + m11 * m21 + m12 * m22
    c22 = m20 * m20 + m21 * m21 + m22 * m22

    cam = w2c_ptr + v * 16
    r00 = tl.load(cam + 0)
    r01 = tl.load(cam + 1)
    r02 = tl.load(cam + 2)
    t0 = tl.load(cam + 3)
    r10 = tl.load(cam + 4)
    r11 = tl.load(cam + 5)
    r12 = tl.load(cam + 6)
    t1 = tl.load(cam + 7)
    r20 = tl.load(cam + 8)
    r21 = tl.load(cam + 9)
    r22 = tl.load(cam + 10)
    t2 = tl.load(cam + 11)
    fx = tl.load(k_ptr + v * 9 + 0)
    cx = tl.load(k_ptr + v * 9 + 2)
    fy = tl.load(k_ptr + v * 9 + 4)
    cy = tl.load(k_ptr + v * 9 + 5)

    x = r00 * px + r01 * py + r02 * pz + t0
    y = r10 * px + r11 * py + r12 * pz + t1
    depth = r20 * px + r21 * py + r22 * pz + t2
    in_front = depth > NEAR_Z
    z = tl.where(in_front, depth, 1.0)         # keep culled entries finite

    # EWA Jacobian with x/z, y/z clamped to ±1.3·tanfov.
    limx = JACOBIAN_CLAMP * tl.div_rn(width * 1.0, 2 * fx)
    limy = JACOBIAN_CLAMP * tl.div_rn(height * 1.0, 2 * fy)
    tx = tl.minimum(limx, tl.maximum(-limx, tl.div_rn(x, z))) * z
    ty = tl.minimum(limy, tl.maximum(-limy, tl.div_rn(y, z))) * z
    j00 = tl.div_rn(fx, z)
    j02 = tl.div_rn(-(fx * tx), z * z)
    j11 = tl.div_rn(fy, z)
    j12 = tl.div_rn(-(fy * ty), z * z)
    # T = J W (2×3); the zero entries of J drop out exactly.
    a0 = j00 * r00 + j02 * r20
    a1 = j00 * r01 + j02 * r21
    a2 = j00 * r02 + j02 * r22
    b0 = j11 * r10 + j12 * r20
    b1 = j11 * r11 + j12 * r21
    b2 = j11 * r12 + j12 * r22
    # U = T Σ, then cov2d = U Tᵀ (upper triangle only).
    ua0 = a0 * c00 + a1 * c01 + a2 * c02
    ua1 = a0 * c01 + a1 * c11 + a2 * c12
    ua2 = a0 * c02 + a1 * c12 + a2 * c22
    ub0 = b0 * c00 + b1 * c01 + b2 * c02
    ub1 = b0 * c01 + b1 * c11 + b2 * c12
    ub2 = b0 * c02 + b1 * c12 + b2 * c22
    ca = ua0 * a0 + ua1 * a1 + ua2 * a2 + DILATION
    cb = ua0 * b0 + ua1 * b1 + ua2 * b2
    cc = ub0 * b0 + ub1 * b1 + ub2 * b2 + DILATION

    det = ca * cc - cb * cb
    nonsingular = det != 0
    det_inv = tl.div_rn(1.0, tl.where(nonsingular, det, 1.0))
    mid = 0.5 * (ca + cc)
    # Correctly rounded sqrt (tl.sqrt may be approximate), like every division above.
    lambda_max = mid + tl.sqrt_rn(tl.maximum(mid * mid - det, DISCRIMINANT_FLOOR,
                                             propagate_nan=tl.PropagateNan.ALL))
    radius = tl.ceil(SIGMA_EXTENT * tl.sqrt_rn(lambda_max))
    u = tl.div_rn(fx * x, z) + cx
    w = tl.div_rn(fy * y, z) + cy

    finite = (radius == radius) & (tl.abs(radius) < float("inf"))
    valid = live & in_front & nonsingular & finite
    if CULL_TRANSPARENT:
        # α = min(0.99, o·exp(power)) with power ≤ 0 never exceeds o: below 1/255 it is always
        # skipped, so binning it cannot change any pixel (LGM's background splats are like this).
        valid = valid & (opacity >= ALPHA_MIN)
    radius = tl.where(valid, radius, 0.0)
    su = tl.where(valid, u, 0.0)
    sw = tl.where(valid, w, 0.0)
    # getRect, truncated toward zero; clamped while float so huge radii cannot overflow int32.
    # (·)/TILE is written as ·(1/TILE): identical for a power-of-two tile, and exact on every
    # backend (a GPU's fp32 division may be approximate).
    inv_tile = 1.0 / TILE
    gx = tiles_x * 1.0
    gy = tiles_y * 1.0
    x0 = tl.minimum(tl.maximum((su - radius) * inv_tile, 0.0), gx).to(tl.int32)
    y0 = tl.minimum(tl.maximum((sw - radius) * inv_tile, 0.0), gy).to(tl.int32)
    x1 = tl.minimum(tl.maximum((su + radius + (TILE - 1.0)) * inv_tile, 0.0), gx).to(tl.int32)
    y1 = tl.minimum(tl.maximum((sw + radius + (TILE - 1.0)) * inv_tile, 0.0), gy).to(tl.int32)
    touched = (x1 - x0) * (y1 - y0)
    valid = valid & (touched != 0)
    touched = tl.where(valid, touched, 0)

    slot = image.to(tl.int64) * N + n
    rec = rec_ptr + slot * REC
    tl.store(rec + 0, u, mask=live)
    tl.store(rec + 1, w, mask=live)
    tl.store(rec + 2, cc * det_inv, mask=live)
    tl.store(rec + 3, -cb * det_inv, mask=live)
    tl.store(rec + 4, ca * det_inv, mask=live)
    tl.store(rec + 5, opacity, mask=live)
    tl.store(rec + 6, depth, mask=live)
    tl.store(rec + 7, tl.load(g + 11, mask=live, other=0.0), mask=live)
    tl.store(rec + 8, tl.load(g + 12, mask=live, other=0.0), mask=live)
    tl.store(rec + 9, tl.load(g + 13, mask=live, other=0.0), mask=live)
    zero = tl.zeros_like(x0)
    tl.store(rect_ptr + slot * 4 + 0, tl.where(valid, x0, zero), mask=live)
    tl.store(rect_ptr + slot * 4 + 1, tl.where(valid, y0, zero), mask=live)
    tl.store(rect_ptr + slot * 4 + 2, tl.where(valid, x1, zero), mask=live)
    tl.store(rect_ptr + slot * 4 + 3, tl.where(valid, y1, zero), mask=live)
    tl.store(radius_ptr + slot, tl.where(valid, radius, 0.0).to(tl.int32), mask=live)
    tl.store(touched_ptr + slot, touched, mask=live)
    tl.store(key_ptr + slot, tl.where(valid, depth, float("inf")), mask=live)


def project_gaussians_triton(gaussians: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                             height: int, width: int, cull_transparent: bool = True) -> TritonProjection:
    """Project gaussians [B,N,14] into V views (w2c [V,4,4], K [V,3,3]); see TritonProjection.

    cull_transparent also culls opacity < ALPHA_MIN (1/255), which renders identically with less work;
    False reproduces the reference's culling exactly (and its tile lists).
    """
    g = gaussians.float().contiguous()
    B, N, _ = g.shape
    V = w2c.shape[0]
    tiles_x, tiles_y = tile_grid(height, width)
    device = g.device
    record = torch.empty(B * V, N, REC, device=device, dtype=torch.float32)
    rect = torch.empty(B * V, N, 4, device=device, dtype=torch.int32)
    radius = torch.empty(B * V, N, device=device, dtype=torch.int32)
    touched = torch.empty(B * V, N, device=device, dtype=torch.int32)
    sort_key = torch.empty(B * V, N, device=device, dtype=torch.float32)
    grid = (triton.cdiv(N, BLOCK), B * V)
    _project_kernel[grid](g, w2c.float().contiguous(), K.float().contiguous(), record, rect, radius,
                          touched, sort_key, N, V, height, width, tiles_x, tiles_y,
                          REC=REC, BLOCK=BLOCK, CULL_TRANSPARENT=cull_transparent,
                          NEAR_Z=NEAR_Z, JACOBIAN_CLAMP=JACOBIAN_CLAMP, DILATION=DILATION,
                          DISCRIMINANT_FLOOR=DISCRIMINANT_FLOOR, SIGMA_EXTENT=SIGMA_EXTENT,
                          ALPHA_MIN=ALPHA_MIN, TILE=TILE, enable_fp_fusion=False)
    return TritonProjection(record, rect, radius, touched, sort_key, B, V)
