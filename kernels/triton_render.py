"""The Triton renderer: projection → binning → compositing (+ fused feedback), no host sync.

`render_gaussians_triton` is the drop-in twin of `render.render_gaussians` and can also write the
adapters' feedback maps straight from the compositing kernel. The overlap buffer has a fixed
capacity chosen at set-up (an `OverlapBudget`); a render that needs more drops the overlaps past
the capacity (the deepest Gaussians of the last images), records the need on the device, and
`OverlapBudget.check()` reports it after the run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ort3d.kernels.render import RenderOutput
from ort3d.kernels.triton_binning import bin_gaussians_triton
from ort3d.kernels.triton_composite import composite_triton
from ort3d.kernels.triton_project import project_gaussians_triton

DEFAULT_TILES_PER_GAUSSIAN = 8   # overlap capacity per (image, Gaussian); LGM splats touch ~1–4


class OverlapCapacityError(RuntimeError):
    """A render needed more Gaussian–tile overlaps than the buffer set up for it holds."""


class OverlapBudget:
    """Fixed overlap capacity plus the largest need seen, kept on the device (graph-safe)."""

    def __init__(self, capacity: int, device=None):
        if capacity < 1:
            raise ValueError(f"overlap capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.peak = torch.zeros((), dtype=torch.int64, device=device)

    @classmethod
    def for_scene(cls, images: int, num_gaussians: int, device=None,
                  tiles_per_gaussian: int = DEFAULT_TILES_PER_GAUSSIAN) -> "OverlapBudget":
        return cls(images * num_gaussians * tiles_per_gaussian, device)

    def observe(self, needed: torch.Tensor) -> None:
        torch.maximum(self.peak, needed, out=self.peak)

    def peak_needed(self) -> int:
        """Largest overlap count any observed render needed (reads the device: call after a run)."""
        return int(self.peak)

    def check(self) -> None:
        """Raise OverlapCapacityError if any observed render overflowed (call after the run)."""
        peak = self.peak_needed()
        if peak > self.capacity:
            raise OverlapCapacityError(
                f"Gaussian renderer needed {peak} tile overlaps but its buffer holds "
                f"{self.capacity}; some Gaussians were dropped: set up a larger capacity")


class TritonRender(NamedTuple):
    images: RenderOutput | None       # [B, V, ...] when asked for
    feedback_rgb: torch.Tensor | None  # [B·V, 192, H/8, W/8] when feedback cameras are given
    feedback_ccm: torch.Tensor | None
    needed: torch.Tensor              # 0-dim int64 on the device: overlaps this render needed


def render_gaussians_triton(gaussians: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                            height: int, width: int, background=(1.0, 1.0, 1.0), *,
                            budget: OverlapBudget | None = None, want_images: bool = True,
                            feedback_cameras: tuple[torch.Tensor, torch.Tensor] | None = None,
                            matmul_dtype: torch.dtype = torch.float16,
                            feedback_dtype: torch.dtype = torch.float32) -> TritonRender:
    """Render gaussians [B,N,14] into V views (w2c [V,4,4], K [V,3,3]) at height×width.

    feedback_cameras = (c2w [V,4,4], normalised intrinsics [V,3,3]) adds the adapters' RGB and
    CCM inputs (matmul_dtype float16 = the reference's autocast CCM, Q5). Without a budget the
    capacity is DEFAULT_TILES_PER_GAUSSIAN per (image, Gaussian) and only `needed` reports.
    """
    if gaussians.dim() != 3 or gaussians.shape[-1] != 14:
        raise ValueError(f"gaussians must be [B, N, 14], got {list(gaussians.shape)}")
    if w2c.shape[-2:] != (4, 4) or K.shape[-2:] != (3, 3) or w2c.shape[0] != K.shape[0]:
        raise ValueError(f"w2c must be [V,4,4] and K [V,3,3], got {list(w2c.shape)} and {list(K.shape)}")
    if feedback_cameras is not None and (height % 8 or width % 8):
        raise ValueError(f"feedback maps need height and width divisible by 8, got {height}×{width}")
    if matmul_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"matmul_dtype must be float16 or float32, got {matmul_dtype}")
    B, N, _ = gaussians.shape
    if budget is None:
        budget = OverlapBudget.for_scene(B * w2c.shape[0], N, gaussians.device)
    proj = project_gaussians_triton(gaussians, w2c, K, height, width)
    bins = bin_gaussians_triton(proj, height, width, budget.capacity)
    budget.observe(bins.needed)
    out = composite_triton(proj, bins, height, width, background, want_images=want_images,
                           feedback_cameras=feedback_cameras,
                           ccm_fp16=matmul_dtype == torch.float16, feedback_dtype=feedback_dtype)
    images = RenderOutput(out.rgb, out.alpha, out.depth) if want_images else None
    return TritonRender(images, out.feedback_rgb, out.feedback_ccm, bins.needed)
