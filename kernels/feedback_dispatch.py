"""The renderer switch: Gaussians → the adapters' two feedback inputs, with either renderer.

`torch` is the reference (`render.render_gaussians` → `feedback.feedback_maps`); `triton` runs the
fused kernels, writing both maps straight into the adapters' layout with no host sync, so it can
sit inside a CUDA graph. Triton is imported only when the triton renderer is used.

Camera preparation (a matrix inverse, which syncs on CUDA) happens once, outside the loop:
`prepare_render_cameras(...)`, then `render_feedback(gaussians, cameras, renderer=...)` per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ort3d.kernels.feedback import feedback_maps
from ort3d.kernels.render import RenderOutput, camera_from_c2w, render_gaussians

RENDERERS = ("torch", "triton")


class UnknownRendererError(ValueError):
    """`renderer` is not one of RENDERERS."""


class RenderCameras(NamedTuple):
    w2c: torch.Tensor              # [V,4,4] rasterizer world->camera
    K: torch.Tensor                # [V,3,3] pixel intrinsics from the field of view
    c2w: torch.Tensor              # [V,4,4] for the CCM
    intrinsics_norm: torch.Tensor  # [V,3,3] normalised intrinsics for the CCM (Q5)
    height: int
    width: int


class FeedbackOutput(NamedTuple):
    rgb: torch.Tensor              # [B·V, 192, H/8, W/8] adapter input 0 (rendered RGB)
    ccm: torch.Tensor              # [B·V, 192, H/8, W/8] adapter input 1 (CCM)
    images: RenderOutput | None    # plain [B,V,...] rgb/alpha/depth when asked for
    needed: torch.Tensor | None    # triton: 0-dim device count of tile overlaps (see OverlapBudget)


def prepare_render_cameras(c2w: torch.Tensor, fov_deg, intrinsics_norm: torch.Tensor,
                           height: int, width: int, device=None) -> RenderCameras:
    """Cameras for `render_feedback` from c2w [V,4,4] (OpenCV), the full field of view in degrees
    (float or [V]) and normalised intrinsics [V,3,3] (docs/renderers.md). Call once per run."""
    if height % 8 or width % 8:
        raise ValueError(f"feedback maps need height and width divisible by 8, got {height}×{width}")
    c2w = c2w.float().cpu()
    w2c, K = camera_from_c2w(c2w, torch.as_tensor(fov_deg, dtype=torch.float64).cpu(), (height, width))
    device = device if device is not None else c2w.device
    return RenderCameras(w2c.to(device), K.to(device), c2w.to(device),
                         intrinsics_norm.float().to(device), height, width)


def render_feedback(gaussians: torch.Tensor, cameras: RenderCameras, renderer: str = "torch",
                    want_images: bool = False, *, budget=None, background=(1.0, 1.0, 1.0),
                    matmul_dtype: torch.dtype = torch.float16,
                    dtype: torch.dtype = torch.float32) -> FeedbackOutput:
    """Render gaussians [B,N,14] into the cameras' V views and return the adapters' inputs.

    rgb/ccm are [B·V, 192, H/8, W/8] in `dtype` (PixelUnshuffle(8) order); `images` holds the
    plain render only if want_images. matmul_dtype float16 reproduces the reference's autocast
    CCM (Q5). budget: triton only, an `OverlapBudget` fixing the overlap capacity and recording
    overflows (default: a fresh one per call; check `needed` or the budget after the run).
    """
    H, W = cameras.height, cameras.width
    if renderer == "torch":
        images = render_gaussians(gaussians, cameras.w2c, cameras.K, H, W, background)
        rgb, ccm = feedback_maps(images, cameras.c2w, cameras.intrinsics_norm, True, matmul_dtype)
        return FeedbackOutput(rgb.to(dtype), ccm.to(dtype), images if want_images else None, None)
    if renderer == "triton":
        from ort3d.kernels.triton_render import render_gaussians_triton
        out = render_gaussians_triton(
            gaussians, cameras.w2c, cameras.K, H, W, background, budget=budget,
            want_images=want_images, feedback_cameras=(cameras.c2w, cameras.intrinsics_norm),
            matmul_dtype=matmul_dtype, feedback_dtype=dtype)
        return FeedbackOutput(out.feedback_rgb, out.feedback_ccm, out.images, out.needed)
    raise UnknownRendererError(f"renderer must be one of {', '.join(RENDERERS)}; got {renderer!r}")
