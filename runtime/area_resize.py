"""OpenCV's `cv2.resize(..., interpolation=cv2.INTER_AREA)` for float32 images, in numpy.

The reference recentres the input with `kiui.op.recenter`, which resizes with OpenCV's INTER_AREA
and then truncates to uint8 (docs/inference.md#preprocessing, docs/quirks.md#q15). Truncation
turns a last-bit rounding difference into a whole grey level, so this module reproduces OpenCV's
CPU code path step by step in float32, in the same order of operations, instead of an
"equivalent" matrix product.
OpenCV stays out of the runtime dependencies; the tests compare against it when it is installed.

OpenCV's three regimes (imgproc/src/resize.cpp, `hal::resize`):
* both axes shrink by exact integers -> block average (`resizeAreaFast_`);
* both axes shrink (any factor >= 1)  -> exact fractional box filter (`computeResizeAreaTab` +
  `ResizeArea_Invoker`): horizontal pass per source row, then rows weighted and summed;
* otherwise (an axis grows)           -> 2-tap linear interpolation whose weights follow the
  "area" rule `fx = frac((dx+1) - (sx+1)/scale)` (0 when negative), sx = floor(dx*scale).
"""

from __future__ import annotations

import math

import numpy as np

_DBL_EPSILON = np.finfo(np.float64).eps


def resize_area(src: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float32 [H, W] or [H, W, C] image to (height, width) like cv2 INTER_AREA."""
    if src.dtype != np.float32:
        raise TypeError(f"resize_area expects float32, got {src.dtype}")
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    squeeze = src.ndim == 2
    img = src[..., None] if squeeze else src
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) == (height, width):
        out = img.copy()
    else:
        # OpenCV derives the scales from the inverse ratio, and rounds like this.
        scale_x = 1.0 / (width / in_w)
        scale_y = 1.0 / (height / in_h)
        if scale_x >= 1 and scale_y >= 1:
            ix, iy = round(scale_x), round(scale_y)
            if abs(scale_x - ix) < _DBL_EPSILON and abs(scale_y - iy) < _DBL_EPSILON:
                out = _block_average(img, ix, iy, width, height)
            else:
                out = _box_filter(img, scale_x, scale_y, width, height)
        else:
            out = _area_linear(img, width, height)
    return out[..., 0] if squeeze else out


# ----------------------------------------------------------------------------- integer shrink

def _block_average(img: np.ndarray, ix: int, iy: int, width: int, height: int) -> np.ndarray:
    blocks = img[: height * iy, : width * ix].reshape(height, iy, width, ix, -1)
    channels = img.shape[2]
    scalar = _block_sum_scalar(blocks, ix, iy)
    if ix == 2 and iy == 2 and channels in (1, 4):
        # SIMD path, 4 floats per vector: (row0 pair) + (row1 pair), times 0.25. With one channel
        # the last width % 4 outputs of a row fall back to the scalar loop.
        top = blocks[:, 0, :, 0] + blocks[:, 0, :, 1]
        bottom = blocks[:, 1, :, 0] + blocks[:, 1, :, 1]
        simd = (top + bottom) * np.float32(0.25)
        vector_end = width if channels == 4 else width - width % 4
        simd[:, vector_end:] = scalar[:, vector_end:]
        return simd
    return scalar


def _block_sum_scalar(blocks: np.ndarray, ix: int, iy: int) -> np.ndarray:
    """OpenCV's scalar loop: block pixels in row-major order, added four at a time."""
    pixels = [blocks[:, sy, :, sx] for sy in range(iy) for sx in range(ix)]
    total = np.zeros_like(pixels[0])
    k = 0
    while k + 4 <= len(pixels):
        total = total + (((pixels[k] + pixels[k + 1]) + pixels[k + 2]) + pixels[k + 3])
        k += 4
    for rest in pixels[k:]:
        total = total + rest
    return total * np.float32(1.0 / (ix * iy))


# ----------------------------------------------------------------------------- fractional shrink

def _box_taps(src_size: int, dst_size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and float32 weights per output pixel (computeResizeAreaTab), zero-padded."""
    taps: list[list[tuple[int, float]]] = []
    for d in range(dst_size):
        fs1 = d * scale
        fs2 = fs1 + scale
        cell = min(scale, src_size - fs1)
        s1 = math.ceil(fs1)
        s2 = min(math.floor(fs2), src_size - 1)
        s1 = min(s1, s2)
        row = []
        if s1 - fs1 > 1e-3:
            row.append((s1 - 1, (s1 - fs1) / cell))
        row.extend((s, 1.0 / cell) for s in range(s1, s2))
        if fs2 - s2 > 1e-3:
            row.append((s2, min(min(fs2 - s2, 1.0), cell) / cell))
        taps.append(row)
    width = max(len(row) for row in taps)
    index = np.zeros((dst_size, width), dtype=np.int64)
    weight = np.zeros((dst_size, width), dtype=np.float32)
    for d, row in enumerate(taps):
        for j, (s, w) in enumerate(row):
            index[d, j] = s
            weight[d, j] = w  # float64 -> float32, as OpenCV stores the table
    return index, weight


def _box_filter(img: np.ndarray, scale_x: float, scale_y: float, width: int, height: int
                ) -> np.ndarray:
    x_index, x_weight = _box_taps(img.shape[1], width, scale_x)
    y_index, y_weight = _box_taps(img.shape[0], height, scale_y)
    # Horizontal: buf += S[si] * alpha, taps left to right (padding taps add an exact 0).
    rows = np.zeros((img.shape[0], width, img.shape[2]), dtype=np.float32)
    for j in range(x_index.shape[1]):
        rows = rows + img[:, x_index[:, j]] * x_weight[None, :, j, None]
    # Vertical: sum = beta0 * buf0, then sum += beta_j * buf_j, rows top to bottom.
    out = y_weight[:, 0, None, None] * rows[y_index[:, 0]]
    for j in range(1, y_index.shape[1]):
        out = out + y_weight[:, j, None, None] * rows[y_index[:, j]]
    return out


# ----------------------------------------------------------------------------- growing axis

def _linear_taps(src_size: int, dst_size: int, clamp_right: bool):
    """Left index and float32 weights (1-f, f) of OpenCV's area-mode linear interpolation."""
    inv_scale = dst_size / src_size
    scale = 1.0 / inv_scale
    left = np.zeros(dst_size, dtype=np.int64)
    frac = np.zeros(dst_size, dtype=np.float32)
    for d in range(dst_size):
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * inv_scale)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(math.floor(f)))
        if clamp_right and s + 1 >= src_size:
            # Past the last full interval OpenCV copies the last pixel (one tap, weight 1).
            s, f = src_size - 1, np.float32(0.0)
        left[d], frac[d] = s, f
    return left, np.float32(1.0) - frac, frac


def _area_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    in_h, in_w = img.shape[:2]
    x0, ax0, ax1 = _linear_taps(in_w, width, clamp_right=True)
    y0, by0, by1 = _linear_taps(in_h, height, clamp_right=False)
    last = x0 >= in_w - 1
    x1 = np.minimum(x0 + 1, in_w - 1)
    rows = img[:, x0] * ax0[None, :, None] + img[:, x1] * ax1[None, :, None]
    rows[:, last] = img[:, x0[last]]
    top = rows[np.clip(y0, 0, in_h - 1)]
    bottom = rows[np.clip(y0 + 1, 0, in_h - 1)]
    return top * by0[:, None, None] + bottom * by1[:, None, None]
