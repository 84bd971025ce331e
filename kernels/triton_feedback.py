"""Triton epilogue helpers: the CCM (docs/renderers.md#ccm) and the adapters' pixel-unshuffled layout.

Called per pixel from the compositing kernel, so the depth never leaves registers.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _position_channel(m0, m1, m2, m3, X, Y, Z, covered, FP16: tl.constexpr,
                      SCALE: tl.constexpr, OFFSET: tl.constexpr):
    """One world coordinate of the CCM: clamp(mask·(c2w[i]·[X,Y,Z,1])·SCALE + OFFSET, 0, 1)
    (render_constants.CCM_SCALE = 0.001, CCM_OFFSET = 0.5).

    FP16 reproduces the reference under autocast (quirk Q5): the inputs of the matmul are fp16,
    products of fp16 numbers are exact in fp32 and summed there, the result is rounded to fp16,
    and the scale/offset are fp16 operations (computed in fp32, rounded after each op).
    """
    if FP16:
        acc = (m0.to(tl.float16).to(tl.float32) * X.to(tl.float16).to(tl.float32)
               + m1.to(tl.float16).to(tl.float32) * Y.to(tl.float16).to(tl.float32)
               + m2.to(tl.float16).to(tl.float32) * Z.to(tl.float16).to(tl.float32)
               + m3.to(tl.float16).to(tl.float32))
        world = tl.where(covered, acc.to(tl.float16).to(tl.float32), 0.0)
        scaled = (world * SCALE).to(tl.float16).to(tl.float32)
        shifted = (scaled + OFFSET).to(tl.float16).to(tl.float32)
    else:
        world = tl.where(covered, m0 * X + m1 * Y + m2 * Z + m3, 0.0)
        shifted = world * SCALE + OFFSET
    return tl.minimum(tl.maximum(shifted, 0.0), 1.0)


@triton.jit
def ccm_channels(depth, row, col, c2w_ptr, intr_ptr, view, FP16: tl.constexpr,
                 SCALE: tl.constexpr, OFFSET: tl.constexpr):
    """CCM (x, y, z) at pixels (row, col) of one view from its composited depth.

    Back-projection with the integer pixel indices and the NORMALISED intrinsics (Q5):
    X = (u − cx)·D / fx, Y = (v − cy)·D / fy, Z = D; background (D ≤ 0) maps to 0.5.
    """
    intr = intr_ptr + view * 9
    fx = tl.load(intr + 0)
    cx = tl.load(intr + 2)
    fy = tl.load(intr + 4)
    cy = tl.load(intr + 5)
    X = tl.div_rn((col.to(tl.float32) - cx) * depth, fx)
    Y = tl.div_rn((row.to(tl.float32) - cy) * depth, fy)
    covered = depth > 0.0
    m = c2w_ptr + view * 16
    x = _position_channel(tl.load(m + 0), tl.load(m + 1), tl.load(m + 2), tl.load(m + 3),
                          X, Y, depth, covered, FP16, SCALE, OFFSET)
    y = _position_channel(tl.load(m + 4), tl.load(m + 5), tl.load(m + 6), tl.load(m + 7),
                          X, Y, depth, covered, FP16, SCALE, OFFSET)
    z = _position_channel(tl.load(m + 8), tl.load(m + 9), tl.load(m + 10), tl.load(m + 11),
                          X, Y, depth, covered, FP16, SCALE, OFFSET)
    return x, y, z


@triton.jit
def store_unshuffled(ptr, image, channel, row, col, value, mask, height, width, F: tl.constexpr):
    """Store a pixel value of `channel` into [images, 3·F², H/F, W/F] as torch's PixelUnshuffle(F)
    (F = render_constants.UNSHUFFLE = 8): channel c·F² + (row % F)·F + (col % F) at
    (row // F, col // F)."""
    sub = channel * (F * F) + (row % F) * F + (col % F)
    at = ((image.to(tl.int64) * (3 * F * F) + sub) * (height // F) + row // F) * (width // F) + col // F
    tl.store(ptr + at, value.to(ptr.dtype.element_ty), mask=mask)
