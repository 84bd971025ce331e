"""The reference renderer's maths with static shapes and no host reads, for ahead-of-time export.

`render.render_gaussians` bins Gaussians into per-tile lists whose lengths depend on the data
(repeat_interleave, host-side loop bounds), which an exported graph cannot hold. This formulation
computes the same thing with every shape fixed by (N, V, H, W):

* projection is `render.project_gaussians` itself (already static);
* each tile's list is every Gaussian whose tile rect covers the tile, in the rasterizer's order
  (view depth, ties by index): one stable sort of the depths per view, then one stable sort per
  tile that moves the members to the front while keeping that order;
* compositing walks the lists in fixed chunks of `chunk` entries with `render._chunk_alpha` and
  the same cumulative-product transmittance and 1e-4 cut as `render.composite_tiles`. Entries
  past a tile's list get opacity 0 (α = 0, they change nothing). The chunks run in a
  `while_loop` that stops when no tile needs another one (every list exhausted or every pixel
  terminated), so the cost follows the longest list instead of N, with one compiled body.

The results equal the reference up to float rounding: chunk boundaries differ, so the running
transmittance products associate differently (tests/kernels/test_render_static.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._higher_order_ops import while_loop

from ort3d.kernels.render import (T_MIN, TILE, RenderOutput, _chunk_alpha, blend_inputs,
                                  project_gaussians, tile_grid, tile_origins, tiles_to_images)

DEFAULT_CHUNK = 128


def tile_lists(projected, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(members [B·V·T, N] flat (b, v, n) ids, each tile's list first, then padding;
    count [B·V·T] list lengths). Lists are ordered like the rasterizer's sort key."""
    B, V, N = projected.valid.shape
    tiles_x, tiles_y = tile_grid(height, width)
    device = projected.depth.device
    far = torch.full_like(projected.depth, float("inf"))
    by_depth = torch.sort(torch.where(projected.valid, projected.depth, far), dim=-1,
                          stable=True).indices                                 # [B,V,N]
    rect_min = projected.rect_min.gather(2, by_depth[..., None].expand(B, V, N, 2))
    rect_max = projected.rect_max.gather(2, by_depth[..., None].expand(B, V, N, 2))
    valid = projected.valid.gather(2, by_depth)
    tx = torch.arange(tiles_x, device=device, dtype=torch.int32)
    ty = torch.arange(tiles_y, device=device, dtype=torch.int32)
    cover_x = (rect_min[..., None, 0] <= tx) & (tx < rect_max[..., None, 0])     # [B,V,N,TX]
    cover_y = (rect_min[..., None, 1] <= ty) & (ty < rect_max[..., None, 1])     # [B,V,N,TY]
    member = (cover_y[..., :, None] & cover_x[..., None, :] & valid[..., None, None])
    member = member.flatten(-2).transpose(-1, -2)                               # [B,V,T,N]
    # Stable sort on "not a member" keeps the depth order among members and puts them first.
    front = torch.sort((~member).to(torch.uint8), dim=-1, stable=True).indices
    flat = (torch.arange(B * V, device=device).reshape(B, V, 1, 1) * N
            + by_depth[:, :, None, :].expand_as(front).gather(-1, front))
    return flat.reshape(-1, N), member.sum(-1).reshape(-1)


def composite_static(projected, colors: Tensor, opacity: Tensor, height: int, width: int,
                     background=(1.0, 1.0, 1.0), chunk: int = DEFAULT_CHUNK) -> RenderOutput:
    """`render.composite_tiles` with fixed chunks; colors [B,N,3], opacity [B,N]."""
    B, V, N = projected.valid.shape
    device = colors.device
    tiles_x, tiles_y = tile_grid(height, width)
    members, count = tile_lists(projected, height, width)
    num_tiles, pixels = members.shape[0], TILE * TILE
    features, means, conic, opacity_bvn = blend_inputs(projected, colors, opacity)
    _, origin_x, origin_y, inside = tile_origins(num_tiles, tiles_x, tiles_y, height, width, device)

    padded = torch.cat([members, members[:, :1].expand(-1, chunk)], 1)   # reads past N stay in range

    def unfinished(offset: Tensor, T: Tensor, done: Tensor, acc: Tensor) -> Tensor:
        # A tile still needs the next chunk when its list reaches into it and a pixel is open.
        return ((count > offset) & ~done.all(1)).any()

    def blend(offset: Tensor, T: Tensor, done: Tensor, acc: Tensor):
        rank = offset + torch.arange(chunk, device=device)
        gid = padded.gather(1, rank.expand(num_tiles, chunk))                     # [T,k]
        listed = rank < count[:, None]
        chunk_opacity = opacity_bvn[gid].masked_fill(~listed, 0.0)
        alpha = _chunk_alpha(means[gid], conic[gid], chunk_opacity, origin_x, origin_y)
        # As composite_tiles: T_incl[:, j] = T0·(1−α_0)···(1−α_{j−1}); finished pixels start at 0.
        T_incl = torch.cat([T.masked_fill(done, 0.0)[:, None], 1.0 - alpha], 1).cumprod(1)
        keep = T_incl[:, 1:] >= T_MIN           # T never increases: a kept prefix per pixel
        weight = alpha * T_incl[:, :-1] * keep
        stops = (T_incl[:, -1] < T_MIN) & ~done
        T_last = torch.where(stops, T_incl.gather(1, keep.sum(1, keepdim=True)).squeeze(1),
                             T_incl[:, -1])
        chunk_features = features[gid]                                           # [T,k,4]
        acc = acc + torch.cat([(chunk_features[..., None] * weight[:, :, None]).sum(1),
                               weight.sum(1)[:, None]], 1)
        return offset + chunk, torch.where(done, T, T_last), done | stops, acc

    state = (torch.zeros((), dtype=torch.int64, device=device),
             torch.ones(num_tiles, pixels, device=device), ~inside,
             torch.zeros(num_tiles, 5, pixels, device=device))
    _, T, done, acc = while_loop(unfinished, blend, state)

    return tiles_to_images(acc, T, background, B, V, tiles_y, tiles_x, height, width)


def render_gaussians_static(gaussians: Tensor, w2c: Tensor, K: Tensor, height: int, width: int,
                            background=(1.0, 1.0, 1.0), chunk: int = DEFAULT_CHUNK) -> RenderOutput:
    """`render.render_gaussians` (gaussians [B,N,14], w2c [V,4,4], K [V,3,3]) in static shapes."""
    projected = project_gaussians(gaussians, w2c, K, height, width)
    g = gaussians.float()
    return composite_static(projected, g[..., 11:14], g[..., 3], height, width, background, chunk)
