"""Triton twin of `render.composite_tiles`, with the feedback maps fused into its epilogue.

One program blends one 16×16 tile of one image front to back, its 256 pixels as one vector,
walking the tile's depth-sorted list exactly like renderCUDA (and the torch twin's left-to-right
product), so T, the weights and the sums are the reference's sequential ones:

* α = min(0.99, o·exp(power)), skipped where power > 0 or α < 1/255;
* a pixel stops before the first Gaussian that would push T below 1e-4;
* the list is read BATCH entries per loop iteration (unrolled, so the loads of a batch are
  issued together), and the tile leaves the loop once its list is exhausted or every pixel has
  stopped — the reference's early termination.

The epilogue writes, on request, the plain images (RGB with the background blended in and
clamped to [0, 1], alpha, depth) and/or the adapters' two inputs in the pixel-unshuffled layout
(RGB and the CCM of `triton_feedback`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ort3d.kernels.render_constants import (ALPHA_MAX, ALPHA_MIN, CCM_OFFSET, CCM_SCALE,
                                            FEEDBACK_CHANNELS, T_MIN, TILE, UNSHUFFLE)
from ort3d.kernels.triton_binning import TileBins
from ort3d.kernels.triton_feedback import ccm_channels, store_unshuffled
from ort3d.kernels.triton_project import REC, TritonProjection

BATCH = 8         # Gaussians per loop iteration (unrolled); the tile-done test runs once per batch
NUM_WARPS = 4     # 2 pixels per thread; ~96 registers on sm_90 (5 programs per SM)


class CompositeOutput(NamedTuple):
    rgb: torch.Tensor | None        # [B, V, 3, H, W] clamped to [0, 1]
    alpha: torch.Tensor | None      # [B, V, 1, H, W]
    depth: torch.Tensor | None      # [B, V, 1, H, W]
    feedback_rgb: torch.Tensor | None  # [B·V, 192, H/8, W/8]
    feedback_ccm: torch.Tensor | None  # [B·V, 192, H/8, W/8]


@triton.jit
def _composite_kernel(rec_ptr, ids_ptr, tile_start_ptr,
                      rgb_ptr, alpha_ptr, depth_ptr, fb_rgb_ptr, fb_ccm_ptr, c2w_ptr, intr_ptr,
                      N, V, height, width, tiles_x, tiles_per_image, bg_r, bg_g, bg_b,
                      REC: tl.constexpr, BATCH: tl.constexpr, WANT_IMAGES: tl.constexpr,
                      WANT_FEEDBACK: tl.constexpr, CCM_FP16: tl.constexpr, TILE: tl.constexpr,
                      ALPHA_MAX: tl.constexpr, ALPHA_MIN: tl.constexpr, T_MIN: tl.constexpr,
                      CCM_SCALE: tl.constexpr, CCM_OFFSET: tl.constexpr, UNSHUFFLE: tl.constexpr):
    tile = tl.program_id(0)
    image = tl.program_id(1)
    pix = tl.arange(0, TILE * TILE)
    row = (tile // tiles_x) * TILE + pix // TILE
    col = (tile % tiles_x) * TILE + pix % TILE
    inside = (row < height) & (col < width)
    pix_x = col.to(tl.float32)
    pix_y = row.to(tl.float32)

    tile_id = image * tiles_per_image + tile
    start = tl.load(tile_start_ptr + tile_id)
    end = tl.load(tile_start_ptr + tile_id + 1)
    records = rec_ptr + image.to(tl.int64) * N * REC

    T = tl.full((TILE * TILE,), 1.0, tl.float32)
    alive = inside.to(tl.int32)
    acc_r = tl.zeros((TILE * TILE,), tl.float32)
    acc_g = tl.zeros((TILE * TILE,), tl.float32)
    acc_b = tl.zeros((TILE * TILE,), tl.float32)
    acc_d = tl.zeros((TILE * TILE,), tl.float32)
    acc_a = tl.zeros((TILE * TILE,), tl.float32)

    i = start
    while (i < end) & (tl.max(alive, axis=0) > 0):
        # Unrolled so the scalar loads of the whole batch can be issued before the blending.
        for j in tl.static_range(BATCH):
            listed = i + j < end
            n = tl.load(ids_ptr + i + j, mask=listed, other=0)
            rec = records + n.to(tl.int64) * REC
            gu = tl.load(rec + 0, mask=listed, other=0.0)
            gv = tl.load(rec + 1, mask=listed, other=0.0)
            ca = tl.load(rec + 2, mask=listed, other=0.0)
            cb = tl.load(rec + 3, mask=listed, other=0.0)
            cc = tl.load(rec + 4, mask=listed, other=0.0)
            opacity = tl.load(rec + 5, mask=listed, other=0.0)
            dx = gu - pix_x
            dy = gv - pix_y
            power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
            alpha = tl.minimum(opacity * tl.exp(power), ALPHA_MAX)
            # Entries past the list end load opacity 0, so α = 0 < ALPHA_MIN skips them.
            use = (power <= 0.0) & (alpha >= ALPHA_MIN) & (alive > 0)
            t_after = T * (1.0 - alpha)
            stop = use & (t_after < T_MIN)
            use = use & (t_after >= T_MIN)
            weight = tl.where(use, alpha * T, 0.0)
            acc_r += tl.load(rec + 7, mask=listed, other=0.0) * weight
            acc_g += tl.load(rec + 8, mask=listed, other=0.0) * weight
            acc_b += tl.load(rec + 9, mask=listed, other=0.0) * weight
            acc_d += tl.load(rec + 6, mask=listed, other=0.0) * weight
            acc_a += weight
            T = tl.where(use, t_after, T)
            alive = tl.where(stop, 0, alive)
        i += BATCH

    out_r = tl.minimum(tl.maximum(acc_r + T * bg_r, 0.0), 1.0)
    out_g = tl.minimum(tl.maximum(acc_g + T * bg_g, 0.0), 1.0)
    out_b = tl.minimum(tl.maximum(acc_b + T * bg_b, 0.0), 1.0)
    if WANT_IMAGES:
        plane = height * width
        at = image.to(tl.int64) * plane + row * width + col
        tl.store(alpha_ptr + at, acc_a, mask=inside)
        tl.store(depth_ptr + at, acc_d, mask=inside)
        rgb_at = image.to(tl.int64) * 3 * plane + row * width + col
        tl.store(rgb_ptr + rgb_at, out_r, mask=inside)
        tl.store(rgb_ptr + rgb_at + plane, out_g, mask=inside)
        tl.store(rgb_ptr + rgb_at + 2 * plane, out_b, mask=inside)
    if WANT_FEEDBACK:
        store_unshuffled(fb_rgb_ptr, image, 0, row, col, out_r, inside, height, width, UNSHUFFLE)
        store_unshuffled(fb_rgb_ptr, image, 1, row, col, out_g, inside, height, width, UNSHUFFLE)
        store_unshuffled(fb_rgb_ptr, image, 2, row, col, out_b, inside, height, width, UNSHUFFLE)
        ccm_x, ccm_y, ccm_z = ccm_channels(acc_d, row, col, c2w_ptr, intr_ptr, image % V, CCM_FP16,
                                           CCM_SCALE, CCM_OFFSET)
        store_unshuffled(fb_ccm_ptr, image, 0, row, col, ccm_x, inside, height, width, UNSHUFFLE)
        store_unshuffled(fb_ccm_ptr, image, 1, row, col, ccm_y, inside, height, width, UNSHUFFLE)
        store_unshuffled(fb_ccm_ptr, image, 2, row, col, ccm_z, inside, height, width, UNSHUFFLE)


def composite_triton(proj: TritonProjection, bins: TileBins, height: int, width: int,
                     background=(1.0, 1.0, 1.0), *, want_images: bool = True,
                     feedback_cameras: tuple[torch.Tensor, torch.Tensor] | None = None,
                     ccm_fp16: bool = True, feedback_dtype: torch.dtype = torch.float32,
                     batch: int = BATCH, num_warps: int = NUM_WARPS) -> CompositeOutput:
    """Blend every tile; images [B,V,...] if `want_images`; feedback maps if `feedback_cameras`
    = (c2w [V,4,4], normalised intrinsics [V,3,3]) is given (H and W must be multiples of 8)."""
    B, V = proj.batch, proj.views
    images, N = proj.sort_key.shape
    device = proj.record.device
    want_feedback = feedback_cameras is not None
    rgb = alpha = depth = fb_rgb = fb_ccm = None
    if want_images:
        rgb = torch.empty(B, V, 3, height, width, device=device, dtype=torch.float32)
        alpha = torch.empty(B, V, 1, height, width, device=device, dtype=torch.float32)
        depth = torch.empty(B, V, 1, height, width, device=device, dtype=torch.float32)
    if want_feedback:
        c2w, intrinsics = (t.float().contiguous() for t in feedback_cameras)
        fb_shape = (images, FEEDBACK_CHANNELS, height // UNSHUFFLE, width // UNSHUFFLE)
        fb_rgb = torch.empty(fb_shape, device=device, dtype=feedback_dtype)
        fb_ccm = torch.empty(fb_shape, device=device, dtype=feedback_dtype)
    else:
        c2w = intrinsics = proj.record     # never read: WANT_FEEDBACK is a compile-time False
    dummy = proj.record
    grid = (bins.tiles_x * bins.tiles_y, images)
    _composite_kernel[grid](
        proj.record, bins.gaussian_ids, bins.tile_start,
        rgb if want_images else dummy, alpha if want_images else dummy,
        depth if want_images else dummy, fb_rgb if want_feedback else dummy,
        fb_ccm if want_feedback else dummy, c2w, intrinsics,
        N, V, height, width, bins.tiles_x, bins.tiles_x * bins.tiles_y,
        float(background[0]), float(background[1]), float(background[2]),
        REC=REC, BATCH=batch, WANT_IMAGES=want_images, WANT_FEEDBACK=want_feedback,
        CCM_FP16=ccm_fp16, TILE=TILE, ALPHA_MAX=ALPHA_MAX, ALPHA_MIN=ALPHA_MIN, T_MIN=T_MIN,
        CCM_SCALE=CCM_SCALE, CCM_OFFSET=CCM_OFFSET, UNSHUFFLE=UNSHUFFLE, num_warps=num_warps)
    return CompositeOutput(rgb, alpha, depth, fb_rgb, fb_ccm)
