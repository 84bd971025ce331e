"""Pure-torch reference Gaussian renderer with diff-gaussian-rasterization forward semantics.

This is the exact reference maths (docs/renderers.md, docs/quirks.md#q19) that fused kernels are tested against,
stage by stage: `project_gaussians` (preprocess), `bin_gaussians` (tile lists sorted by depth) and
`composite_tiles` (per-pixel front-to-back blending). Everything runs in float32 and uses explicit
element-wise sums instead of matmuls, so a global TF32 switch can never change the results.

Conventions: Gaussians `[B, N, 14]` = pos(3) opacity(1) scale(3) rot(4: w,x,y,z) rgb(3);
cameras are world->camera 4x4 (OpenCV: x right, y down, z forward) plus 3x3 pixel intrinsics
with pixel centres at integer coordinates (u = fx·x/z + cx).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ort3d.kernels.render_constants import (
    ALPHA_MAX, ALPHA_MIN, DILATION, DISCRIMINANT_FLOOR, JACOBIAN_CLAMP, NEAR_Z, SIGMA_EXTENT, T_MIN, TILE,
)


class RenderOutput(NamedTuple):
    rgb: Tensor    # [B, V, 3, H, W] in [0, 1], background blended in
    alpha: Tensor  # [B, V, 1, H, W] Σ α·T
    depth: Tensor  # [B, V, 1, H, W] Σ z·α·T (not normalised, no background term)


class Projected(NamedTuple):
    means2d: Tensor   # [B, V, N, 2] pixel coordinates (u, v)
    conic: Tensor     # [B, V, N, 3] inverse 2D covariance (a, b, c): power uses a dx², 2b dx dy, c dy²
    radius: Tensor    # [B, V, N] int32 pixels, 0 where culled
    depth: Tensor     # [B, V, N] view-space z
    rect_min: Tensor  # [B, V, N, 2] int32 first tile (x, y) touched
    rect_max: Tensor  # [B, V, N, 2] int32 one past the last tile (x, y)
    valid: Tensor     # [B, V, N] bool: survives culling and touches at least one tile


class Binned(NamedTuple):
    gaussian_ids: Tensor  # [M] int64 flat (b, v, n) index, sorted by (image, tile, depth, n)
    tile_start: Tensor    # [B·V·TY·TX] int64 first entry of each tile in gaussian_ids
    tile_count: Tensor    # [B·V·TY·TX] int64 number of entries of each tile
    tiles_x: int
    tiles_y: int


def camera_from_c2w(c2w: Tensor, fov_deg, size) -> tuple[Tensor, Tensor]:
    """Rasterizer cameras from camera-to-world poses.

    c2w [V,4,4] (OpenCV), fov_deg: full field of view in degrees (float or [V]), size: int or
    (height, width). Returns w2c [V,4,4] = inverse(c2w) in float32 and pixel intrinsics K [V,3,3]
    with fx = W/(2·tan(fov/2)), cx = W/2 − 0.5 (pixel centres at integer coordinates).
    """
    height, width = (size, size) if isinstance(size, int) else size
    w2c = torch.linalg.inv(c2w.float())
    tan_half = torch.tan(torch.as_tensor(fov_deg, dtype=torch.float64) * (math.pi / 360.0))
    tan_half = tan_half.expand(c2w.shape[0])
    K = torch.zeros(c2w.shape[0], 3, 3, dtype=torch.float64)
    K[:, 0, 0] = width / (2.0 * tan_half)
    K[:, 1, 1] = height / (2.0 * tan_half)
    K[:, 0, 2] = width / 2.0 - 0.5
    K[:, 1, 2] = height / 2.0 - 0.5
    K[:, 2, 2] = 1.0
    return w2c, K.float().to(c2w.device)


def covariance_3d(scale: Tensor, quat: Tensor) -> Tensor:
    """Σ = R S Sᵀ Rᵀ [..., 3, 3] from scale [..., 3] and the RAW quaternion [..., 4] (w, x, y, z).

    The quaternion is deliberately not normalised (Q19): the rasterizer's computeCov3D plugs it
    straight into the rotation-matrix formula, and LGM's quaternions are far from unit length.
    """
    w, x, y, z = quat.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).unflatten(-1, (3, 3))
    M = R * scale.unsqueeze(-2)                      # M = R S: column k scaled by s_k
    return (M.unsqueeze(-2) * M.unsqueeze(-3)).sum(-1)  # M Mᵀ without a matmul


def tile_grid(height: int, width: int) -> tuple[int, int]:
    """Number of 16×16 tiles (tiles_x, tiles_y) covering the image."""
    return (width + TILE - 1) // TILE, (height + TILE - 1) // TILE


def project_gaussians(gaussians: Tensor, w2c: Tensor, K: Tensor, height: int, width: int) -> Projected:
    """Preprocess every (batch, view, Gaussian): cull, EWA-project, conic, radius, tile rect.

    gaussians [B,N,14], w2c [V,4,4], K [V,3,3] -> Projected with [B,V,N,...] fields.
    """
    g = gaussians.float()
    pos = g[..., 0:3].unsqueeze(1)                       # [B,1,N,3]
    cov3d = covariance_3d(g[..., 4:7], g[..., 7:11])[:, None]  # [B,1,N,3,3]
    R = w2c[:, :3, :3].float()[None, :, None]            # [1,V,1,3,3]
    t = w2c[:, :3, 3].float()[None, :, None]             # [1,V,1,3]
    p_view = (R[..., 0] * pos[..., 0:1] + R[..., 1] * pos[..., 1:2]
              + R[..., 2] * pos[..., 2:3]) + t            # [B,V,N,3]
    x, y, z = p_view.unbind(-1)
    in_front = z > NEAR_Z
    z = torch.where(in_front, z, torch.ones_like(z))     # keep culled entries finite

    Kf = K.float()[None, :, None]                        # [1,V,1,3,3]
    fx, fy, cx, cy = Kf[..., 0, 0], Kf[..., 1, 1], Kf[..., 0, 2], Kf[..., 1, 2]
    limx = JACOBIAN_CLAMP * (width / (2 * fx))           # 1.3·tanfov_x
    limy = JACOBIAN_CLAMP * (height / (2 * fy))
    tx = torch.minimum(limx, torch.maximum(-limx, x / z)) * z
    ty = torch.minimum(limy, torch.maximum(-limy, y / z)) * z
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -(fx * tx) / (z * z),
                     zero, fy / z, -(fy * ty) / (z * z)], -1).unflatten(-1, (2, 3))
    Tm = (J.unsqueeze(-1) * R.unsqueeze(-3)).sum(-2)     # J W  [B,V,N,2,3]
    U = (Tm.unsqueeze(-1) * cov3d.unsqueeze(-3)).sum(-2)  # J W Σ
    cov2d = (U.unsqueeze(-2) * Tm.unsqueeze(-3)).sum(-1)  # J W Σ Wᵀ Jᵀ  [B,V,N,2,2]
    a = cov2d[..., 0, 0] + DILATION
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + DILATION

    det = a * c - b * b
    nonsingular = det != 0
    det_inv = 1.0 / torch.where(nonsingular, det, torch.ones_like(det))
    conic = torch.stack([c * det_inv, -b * det_inv, a * det_inv], -1)
    mid = 0.5 * (a + c)
    lambda_max = mid + torch.sqrt(torch.clamp(mid * mid - det, min=DISCRIMINANT_FLOOR))  # larger eigenvalue
    radius = torch.ceil(SIGMA_EXTENT * torch.sqrt(lambda_max))
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)

    valid = in_front & nonsingular & torch.isfinite(radius)
    radius = torch.where(valid, radius, torch.zeros_like(radius))
    means2d = torch.where(valid.unsqueeze(-1), means2d, torch.zeros_like(means2d))
    rect_min, rect_max = _tile_rect(means2d, radius, height, width)
    valid &= (rect_max - rect_min).prod(-1) != 0          # an empty rect touches no tile: culled
    keep = valid.unsqueeze(-1)
    return Projected(means2d=means2d * keep, conic=conic * keep, radius=(radius * valid).to(torch.int32),
                     depth=p_view[..., 2] * valid, rect_min=rect_min * keep, rect_max=rect_max * keep,
                     valid=valid)


def _tile_rect(means2d: Tensor, radius: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """getRect: tile rect [min, max) of a square of half-size radius, truncated toward zero."""
    grid = torch.tensor(tile_grid(height, width), device=means2d.device, dtype=torch.float32)
    r = radius.unsqueeze(-1)
    lo = torch.trunc((means2d - r) / TILE)
    hi = torch.trunc((means2d + r + (TILE - 1)) / TILE)
    # Clamp while still float so far-away Gaussians cannot overflow the int32 cast.
    return (torch.minimum(grid, lo.clamp(min=0)).to(torch.int32),
            torch.minimum(grid, hi.clamp(min=0)).to(torch.int32))


def bin_gaussians(projected: Projected, height: int, width: int) -> Binned:
    """One entry per (image, tile, Gaussian) overlap, sorted by (image, tile, depth), ties by n.

    Mirrors the rasterizer's 64-bit key `tile << 32 | float_bits(depth)` and its stable radix sort.
    """
    B, V, N = projected.valid.shape
    tiles_x, tiles_y = tile_grid(height, width)
    rmin = projected.rect_min.reshape(-1, 2).long()
    extent = (projected.rect_max.reshape(-1, 2).long() - rmin)
    counts = torch.where(projected.valid.reshape(-1), extent.prod(-1), torch.zeros_like(extent[:, 0]))
    ids = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(ids.numel(), device=ids.device) - first[ids]  # rank inside the Gaussian's rect
    span_x = extent[ids, 0]
    tile_x = rmin[ids, 0] + k % span_x
    tile_y = rmin[ids, 1] + k // span_x
    tiles_per_image = tiles_x * tiles_y
    tile = (ids // N) * tiles_per_image + tile_y * tiles_x + tile_x
    # View depth > 0.2, so its float bits order like the float itself.
    depth_bits = projected.depth.reshape(-1)[ids].contiguous().view(torch.int32).long()
    order = torch.sort((tile << 32) | depth_bits, stable=True).indices
    num_tiles = B * V * tiles_per_image
    tile_count = torch.bincount(tile, minlength=num_tiles)
    return Binned(gaussian_ids=ids[order], tile_start=torch.cumsum(tile_count, 0) - tile_count,
                  tile_count=tile_count, tiles_x=tiles_x, tiles_y=tiles_y)


def composite_tiles(projected: Projected, binned: Binned, colors: Tensor, opacity: Tensor,
                    height: int, width: int, background=(1.0, 1.0, 1.0),
                    max_chunk_elements: int | None = None) -> RenderOutput:
    """Front-to-back alpha blending of every tile's sorted list (renderCUDA semantics).

    colors [B,N,3], opacity [B,N] -> RenderOutput [B,V,...] (rgb clamped to [0,1]). All tiles are
    processed together, a chunk of their next k Gaussians at a time (k·tiles·256 <= the element
    budget); a cumulative product gives the exact sequential transmittance, and a tile leaves the
    loop when its list is exhausted or all its pixels have terminated.
    """
    B, V, N = projected.valid.shape
    device = colors.device
    if max_chunk_elements is None:
        # CPU: temporaries of a few MB stay in the allocator's heap instead of fresh mmaps (much
        # faster); GPU: large chunks mean fewer launches.
        max_chunk_elements = 1 << 25 if device.type == "cuda" else 1 << 21
    num_tiles = binned.tile_count.numel()
    tiles_x, tiles_y = binned.tiles_x, binned.tiles_y
    pixels = TILE * TILE
    features, means, conic, opacity_bvn = blend_inputs(projected, colors, opacity)
    tile_ids, origin_x, origin_y, inside = tile_origins(num_tiles, tiles_x, tiles_y, height, width,
                                                       device)

    T = torch.ones(num_tiles, pixels, device=device)
    done = ~inside                                    # pixels past the image border never blend
    acc = torch.zeros(num_tiles, 5, pixels, device=device)

    active = tile_ids[binned.tile_count > 0]
    last_entry = max(binned.gaussian_ids.numel() - 1, 0)
    offset = 0
    while active.numel() > 0:
        count = binned.tile_count[active]
        remaining = int((count - offset).max())
        k = min(remaining, max(8, max_chunk_elements // (active.numel() * pixels)))
        rank = offset + torch.arange(k, device=device)
        listed = rank < count[:, None]                                        # [A,k]
        gid = binned.gaussian_ids[(binned.tile_start[active, None] + rank).clamp(max=last_entry)]
        # Padding past a tile's list gets opacity 0, hence α = 0: it changes nothing.
        chunk_opacity = opacity_bvn[gid].masked_fill(~listed, 0.0)
        alpha = _chunk_alpha(means[gid], conic[gid], chunk_opacity, origin_x[active], origin_y[active])

        T0, was_done = T[active], done[active]
        # T_incl[:, j] = T0·(1−α_0)···(1−α_{j−1}); T0 first makes it associate like `T *= 1 − α`.
        # A finished pixel starts from 0, so it blends nothing more.
        T_incl = torch.empty(alpha.shape[0], k + 1, pixels, device=device)
        T_incl[:, 0] = T0.masked_fill(was_done, 0.0)
        torch.sub(1.0, alpha, out=T_incl[:, 1:])
        T_incl.cumprod_(1)
        weight = alpha.mul_(T_incl[:, :-1])                                   # α·T
        T_last = T_incl[:, -1]
        stops = (T_last < T_MIN) & ~was_done
        if bool(stops.any()):
            # T never increases, so "would drop below 1e-4" holds on a suffix: keep the prefix.
            keep = T_incl[:, 1:] >= T_MIN
            weight.masked_fill_(~keep, 0.0)
            kept = keep.sum(1, keepdim=True)
            T_last = torch.where(stops, T_incl.gather(1, kept).squeeze(1), T_last)
        chunk_features = features[gid]                                        # [A,k,4]
        for f in range(4):
            acc[active, f] += (chunk_features[:, :, f, None] * weight).sum(1)
        acc[active, 4] += weight.sum(1)
        T[active] = torch.where(was_done, T0, T_last)
        done[active] = was_done | stops

        offset += k
        alive = (count > offset) & ~done[active].all(1)
        active = active[alive]

    return tiles_to_images(acc, T, background, B, V, tiles_y, tiles_x, height, width)


def blend_inputs(projected: Projected, colors: Tensor, opacity: Tensor):
    """Per flat (b, v, n): features blended with weight α·T [rgb(3), view depth] (alpha is Σ α·T),
    means2d, conic and opacity, as composite_tiles indexes them."""
    B, V, N = projected.valid.shape
    depth = projected.depth.reshape(B, V, N, 1)
    features = torch.cat([colors.float()[:, None].expand(B, V, N, 3), depth], -1).reshape(B * V * N, 4)
    return (features, projected.means2d.reshape(-1, 2), projected.conic.reshape(-1, 3),
            opacity.float()[:, None].expand(B, V, N).reshape(-1))


def tile_origins(num_tiles: int, tiles_x: int, tiles_y: int, height: int, width: int, device):
    """(tile ids, pixel origin x, origin y, [tiles,256] pixel-inside-the-image mask)."""
    tile_ids = torch.arange(num_tiles, device=device)
    local = torch.arange(TILE, device=device)
    origin_x = ((tile_ids % (tiles_x * tiles_y)) % tiles_x) * TILE
    origin_y = ((tile_ids % (tiles_x * tiles_y)) // tiles_x) * TILE
    inside = (((origin_y[:, None] + local) < height)[:, :, None]
              & ((origin_x[:, None] + local) < width)[:, None, :]).reshape(num_tiles, TILE * TILE)
    return tile_ids, origin_x, origin_y, inside


def _chunk_alpha(means: Tensor, conic: Tensor, opacity: Tensor, origin_x: Tensor, origin_y: Tensor) -> Tensor:
    """α [A,k,256] of k Gaussians per tile at the tile's 256 pixels (0 where renderCUDA skips)."""
    local = torch.arange(TILE, device=means.device, dtype=torch.float32)
    dx = means[..., 0:1] - (origin_x[:, None, None] + local)   # [A,k,16] along columns
    dy = means[..., 1:2] - (origin_y[:, None, None] + local)   # [A,k,16] along rows
    ca, cb, cc = conic[..., 0:1], conic[..., 1:2], conic[..., 2:3]
    # power = -0.5·(a·dx·dx + c·dy·dy) − b·dx·dy, with renderCUDA's association.
    power = (ca * dx * dx)[:, :, None, :] + (cc * dy * dy)[:, :, :, None]
    power.mul_(-0.5).sub_((cb * dx)[:, :, None, :] * dy[:, :, :, None])
    power = power.flatten(2)
    positive = power > 0
    alpha = power.exp_().mul_(opacity[..., None]).clamp_(max=ALPHA_MAX)
    return alpha.masked_fill_(positive | (alpha < ALPHA_MIN), 0.0)


def tiles_to_images(acc: Tensor, T: Tensor, background, B: int, V: int, tiles_y: int, tiles_x: int,
                    height: int, width: int) -> RenderOutput:
    """The images from the tile-major accumulators acc [tiles,5,256] (rgb, depth, Σα·T) and the
    final transmittance T [tiles,256]: rgb over `background`, clamped to [0,1]."""
    bg = torch.as_tensor(background, dtype=torch.float32, device=acc.device).reshape(1, 3, 1)
    rgb = (acc[:, 0:3] + T[:, None] * bg).clamp(0.0, 1.0)
    untile = lambda x: _untile(x, B, V, tiles_y, tiles_x, height, width)  # noqa: E731
    return RenderOutput(rgb=untile(rgb), alpha=untile(acc[:, 4:5]), depth=untile(acc[:, 3:4]))


def _untile(x: Tensor, B: int, V: int, tiles_y: int, tiles_x: int, height: int, width: int) -> Tensor:
    """[B·V·TY·TX, C, 256] tile-major values -> [B, V, C, H, W] image."""
    C = x.shape[1]
    img = x.reshape(B, V, tiles_y, tiles_x, C, TILE, TILE).permute(0, 1, 4, 2, 5, 3, 6)
    return img.reshape(B, V, C, tiles_y * TILE, tiles_x * TILE)[..., :height, :width]


def render_gaussians(gaussians: Tensor, w2c: Tensor, K: Tensor, height: int, width: int,
                     background=(1.0, 1.0, 1.0)) -> RenderOutput:
    """Render gaussians [B,N,14] into V views (w2c [V,4,4], K [V,3,3]) at height×width.

    Returns RenderOutput(rgb [B,V,3,H,W] clamped to [0,1], alpha [B,V,1,H,W], depth [B,V,1,H,W]).
    """
    if gaussians.dim() != 3 or gaussians.shape[-1] != 14:
        raise ValueError(f"gaussians must be [B, N, 14], got {list(gaussians.shape)}")
    if w2c.shape[-2:] != (4, 4) or K.shape[-2:] != (3, 3) or w2c.shape[0] != K.shape[0]:
        raise ValueError(f"w2c must be [V,4,4] and K [V,3,3], got {list(w2c.shape)} and {list(K.shape)}")
    projected = project_gaussians(gaussians, w2c, K, height, width)
    binned = bin_gaussians(projected, height, width)
    g = gaussians.float()
    return composite_tiles(projected, binned, g[..., 11:14], g[..., 3], height, width, background)
