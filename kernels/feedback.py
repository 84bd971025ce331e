"""Feedback maps for the adapters: the canonical coordinate map (CCM) and the input layout.

`ccm_from_depth` reproduces the reference `get_position_map` (docs/renderers.md#ccm, docs/quirks.md#q5) exactly:
back-projection with INTEGER pixel indices and NORMALISED intrinsics (no +0.5, depth not
normalised), W = c2w·[X, Y, Z, 1], background forced to 0, then clamp(W·0.001 + 0.5, 0, 1).
The reference runs the c2w matmul under fp16 autocast; `matmul_dtype=torch.float16` emulates it
device-independently: inputs rounded to fp16, fp16×fp16 products (exact in fp32) accumulated in
fp32 in k order like a GEMM, result rounded to fp16, and the scale/offset done in fp16 (each op
computed in fp32 and rounded, as torch does for half tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ort3d.kernels.render import RenderOutput
from ort3d.kernels.render_constants import CCM_OFFSET, CCM_SCALE, UNSHUFFLE


def ccm_from_depth(depth: Tensor, c2w: Tensor, intrinsics_norm: Tensor,
                   matmul_dtype: torch.dtype = torch.float32) -> Tensor:
    """CCM [B,V,3,H,W] in [0,1] (background exactly 0.5) from depth [B,V,1,H,W].

    c2w [V,4,4] camera-to-world (OpenCV); intrinsics_norm [V,3,3] normalised (fx ≈ 1.389, cx = 0.5).
    The result is float32; with matmul_dtype=float16 its values are the reference's fp16 values.
    """
    B, V, _, H, W = depth.shape
    d = depth[:, :, 0].float()                                   # [B,V,H,W]
    mask = d > 0

    def q(x: Tensor) -> Tensor:  # round to the matmul dtype, keep computing in fp32
        return x.to(matmul_dtype).float()

    K = intrinsics_norm.float()[None, :, :, :, None, None]       # [1,V,3,3,1,1]
    u = torch.arange(W, device=d.device, dtype=torch.float32)    # column index, no +0.5 (Q5)
    v = torch.arange(H, device=d.device, dtype=torch.float32)[:, None]
    cam = [(u - K[:, :, 0, 2]) * d / K[:, :, 0, 0],
           (v - K[:, :, 1, 2]) * d / K[:, :, 1, 1],
           d]
    cam = [q(c) for c in cam]
    M = q(c2w.float())[None, :, :, :, None, None]                # [1,V,4,4,1,1]
    world = torch.stack([
        q(M[:, :, r, 0] * cam[0] + M[:, :, r, 1] * cam[1] + M[:, :, r, 2] * cam[2] + M[:, :, r, 3])
        for r in range(3)], dim=2)                               # [B,V,3,H,W], GEMM k order
    world = world * mask[:, :, None]
    return q(q(world * CCM_SCALE) + CCM_OFFSET).clamp(0.0, 1.0)


def pixel_unshuffle_feedback(maps: Tensor) -> Tensor:
    """[N,3,H,W] -> [N,192,H/8,W/8]; channel c·64 + i·8 + j holds channel c at sub-pixel (i, j)."""
    return F.pixel_unshuffle(maps, UNSHUFFLE)


def feedback_maps(render: RenderOutput, c2w: Tensor, intrinsics_norm: Tensor, unshuffle: bool,
                  matmul_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """(rgb, ccm) adapter inputs from a render, flattened to the (batch, view) order.

    Each is [B·V,3,H,W], or [B·V,192,H/8,W/8] with unshuffle=True. matmul_dtype defaults to
    float16 because the reference computes the CCM under fp16 autocast (Q5).
    """
    rgb = render.rgb.flatten(0, 1)
    ccm = ccm_from_depth(render.depth, c2w, intrinsics_norm, matmul_dtype).flatten(0, 1)
    if unshuffle:
        return pixel_unshuffle_feedback(rgb), pixel_unshuffle_feedback(ccm)
    return rgb, ccm
