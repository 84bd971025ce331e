"""Triton twin of `render.bin_gaussians`: Gaussian–tile overlaps sorted by (image, tile, depth).

No count is ever read on the host, so the whole thing can sit inside a CUDA graph:

1. per image, a stable sort of the Gaussians by view depth (culled ones carry +inf and touch
   no tile) gives the front-to-back order, ties by Gaussian index as in the rasterizer;
2. a cumulative sum of the tiles each Gaussian touches, in that order, gives every overlap a
   slot in a buffer of fixed `capacity`; the emit kernel writes (tile key, Gaussian) there and
   simply drops slots at or past the capacity (memory stays safe; `needed` reports the count);
3. a stable sort by tile key alone (int16 when the tile count allows: two radix passes) keeps
   the depth order inside each tile; `searchsorted` turns the sorted keys into tile ranges.

Unused slots hold the key `num_tiles`, which sorts after every real tile.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ort3d.kernels.render import Binned, tile_grid
from ort3d.kernels.triton_project import TritonProjection

BLOCK = 128


class TileBins(NamedTuple):
    gaussian_ids: torch.Tensor  # [capacity] int32 Gaussian index n within its image, tile-sorted
    tile_start: torch.Tensor    # [B·V·TY·TX + 1] int64: tile t owns entries [start[t], start[t+1])
    needed: torch.Tensor        # 0-dim int64 on the device: overlaps this render produced
    capacity: int
    tiles_x: int
    tiles_y: int

    def to_binned(self, num_gaussians: int) -> Binned:
        """The reference layout (flat (b, v, n) ids, per-tile start/count). Reads sizes on the
        host: for tests and checks only, never inside a render step."""
        start = self.tile_start[:-1]
        count = self.tile_start[1:] - start
        total = int(self.tile_start[-1])
        tile_of_entry = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
        image = tile_of_entry // (self.tiles_x * self.tiles_y)
        ids = self.gaussian_ids[:total].long() + image * num_gaussians
        return Binned(gaussian_ids=ids, tile_start=start, tile_count=count,
                      tiles_x=self.tiles_x, tiles_y=self.tiles_y)


@triton.jit
def _emit_kernel(order_ptr, ends_ptr, rect_ptr, keys_ptr, ids_ptr,
                 N, capacity, tiles_x, tiles_per_image, BLOCK: tl.constexpr):
    image = tl.program_id(1)
    rank = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)   # position in the depth order
    live = rank < N
    row = image.to(tl.int64) * N
    n = tl.load(order_ptr + row + rank, mask=live, other=0).to(tl.int32)
    end = tl.load(ends_ptr + row + rank, mask=live, other=0)
    rect = rect_ptr + (row + n) * 4
    x0 = tl.load(rect + 0, mask=live, other=0)
    y0 = tl.load(rect + 1, mask=live, other=0)
    x1 = tl.load(rect + 2, mask=live, other=0)
    y1 = tl.load(rect + 3, mask=live, other=0)
    span = x1 - x0
    count = tl.where(live, span * (y1 - y0), 0)
    start = end - count
    span = tl.maximum(span, 1)
    first_tile = image * tiles_per_image
    # Rows of the rect in order; a block loops as long as its largest Gaussian needs (a while
    # loop: Triton 3.6's interpreter cannot take a reduced tensor as a range bound).
    most = tl.max(count, axis=0)
    k = 0
    while k < most:
        tile = first_tile + (y0 + k // span) * tiles_x + x0 + k % span
        slot = start + k
        ok = (k < count) & (slot < capacity)
        tl.store(keys_ptr + slot, tile.to(keys_ptr.dtype.element_ty), mask=ok)
        tl.store(ids_ptr + slot, n, mask=ok)
        k += 1


def key_dtype(num_tiles: int) -> torch.dtype:
    """Smallest sortable key type holding tile ids 0..num_tiles (num_tiles = the padding key)."""
    return torch.int16 if num_tiles < torch.iinfo(torch.int16).max else torch.int32


def emit_overlaps(order: torch.Tensor, ends: torch.Tensor, rect: torch.Tensor, keys: torch.Tensor,
                  ids: torch.Tensor, tiles_x: int, tiles_per_image: int) -> None:
    """Write (tile key, Gaussian) for every overlap whose slot is below keys.numel() (the capacity);
    order/ends [images, N] depth order and inclusive slot ends, rect [images, N, 4]."""
    images, N = order.shape
    grid = (triton.cdiv(N, BLOCK), images)
    _emit_kernel[grid](order, ends, rect, keys, ids, N, keys.numel(), tiles_x, tiles_per_image,
                       BLOCK=BLOCK)


def bin_gaussians_triton(proj: TritonProjection, height: int, width: int, capacity: int) -> TileBins:
    """Sorted tile lists for all images at once, in a buffer of `capacity` overlaps."""
    images, N = proj.sort_key.shape
    tiles_x, tiles_y = tile_grid(height, width)
    tiles_per_image = tiles_x * tiles_y
    num_tiles = images * tiles_per_image
    device = proj.sort_key.device
    dtype = key_dtype(num_tiles)

    order = torch.sort(proj.sort_key, dim=1, stable=True).indices
    counts = torch.gather(proj.tiles_touched, 1, order)
    ends = torch.cumsum(counts.reshape(-1), 0).view(images, N)   # int64, inclusive, flat order
    keys = torch.full((capacity,), num_tiles, dtype=dtype, device=device)
    ids = torch.empty(capacity, dtype=torch.int32, device=device)
    emit_overlaps(order, ends, proj.rect, keys, ids, tiles_x, tiles_per_image)

    sorted_keys, perm = torch.sort(keys, stable=True)
    tile_ids = torch.arange(num_tiles + 1, dtype=dtype, device=device)
    tile_start = torch.searchsorted(sorted_keys, tile_ids)
    return TileBins(gaussian_ids=ids.index_select(0, perm), tile_start=tile_start,
                    needed=ends[-1, -1], capacity=capacity, tiles_x=tiles_x, tiles_y=tiles_y)
