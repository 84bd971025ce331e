"""The Triton renderer: projection → binning → compositing (+ fused feedback), no host sync.

`render_gaussians_triton` is the drop-in twin of `render.render_gaussians` and can also write the
adapters' feedback maps straight from the compositing kernel. The overlap buffer has a capacity
fixed per render (an `OverlapBudget`): that is what keeps a render free of host reads and
capturable in a CUDA graph. A render that needs more drops the overlaps past the capacity (the
deepest Gaussians of the last images) and records the need on the device.

`TritonFeedbackRenderer` is the loop's renderer of kind `triton` (see `feedback_dispatch`): it
sizes the capacity from the run's first render and grows it between steps, so an overflow never
makes a run fail; `OverlapBudget.check()` reports an overflow nobody redid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ort3d.kernels.feedback_dispatch import (FeedbackOutput, FeedbackRenderError, FeedbackRenderer,
                                             RenderCameras, timed)
from ort3d.kernels.render import RenderOutput
from ort3d.kernels.render_constants import UNSHUFFLE
from ort3d.kernels.triton_binning import bin_gaussians_triton
from ort3d.kernels.triton_composite import composite_triton
from ort3d.kernels.triton_project import project_gaussians_triton

DEFAULT_TILES_PER_GAUSSIAN = 8         # fixed budgets (one-off renders, bench): LGM-like splats
                                       # touch ~1–4 tiles at 512²
FIRST_RENDER_TILES_PER_GAUSSIAN = 16   # a run's first render, before it is measured: the authors'
                                       # tiny LGM output needs ~15 at 128² (482,688 for 8 × 4,096)


CAPACITY_QUANTUM = 16


def with_headroom(needed: int) -> int:
    """The capacity set for a measured need: 1.5× it, rounded up to a multiple of 16 (at least 16).

    Triton specialises an int argument on divisibility by 16 (and on == 1), so capacities that are
    all multiples of 16 keep one compiled variant of the binning kernel: growing the buffer
    mid-run then costs no compile (kernels/triton_targets.py compiles exactly that variant)."""
    wanted = (3 * needed + 1) // 2
    return max(CAPACITY_QUANTUM, -(-wanted // CAPACITY_QUANTUM) * CAPACITY_QUANTUM)


class OverlapCapacityError(FeedbackRenderError):
    """A render needed more Gaussian–tile overlaps than the buffer set up for it holds."""


class OverlapBudget:
    """The overlap capacity of the next renders plus the largest need seen, kept on the device
    (graph-safe). The capacity may change between renders, never during one."""

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
        """Largest overlap count any observed render needed (reads the device: between steps or
        after a run, never inside a step)."""
        return int(self.peak)

    def check(self) -> None:
        """Raise OverlapCapacityError if any observed render overflowed (call after the run)."""
        peak = self.peak_needed()
        if peak > self.capacity:
            raise OverlapCapacityError(
                f"Gaussian renderer needed {peak} tile overlaps but its buffer holds "
                f"{self.capacity}; some Gaussians were dropped (a larger capacity, or the feedback "
                f"renderer's after_step between steps, avoids it)")


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
    if feedback_cameras is not None and (height % UNSHUFFLE or width % UNSHUFFLE):
        raise ValueError(f"feedback maps need height and width divisible by {UNSHUFFLE}, "
                         f"got {height}×{width}")
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


class TritonFeedbackRenderer(FeedbackRenderer):
    """The feedback renderer of kind `triton`: one fused render per step, timed as `render`, with
    no host reads; its overlap capacity adapts between steps so that no render stays incomplete.

    overlap_tiles (per Gaussian and view) fixes the initial capacity; None (auto) starts the run's
    first render at FIRST_RENDER_TILES_PER_GAUSSIAN and, once `after_step` has measured it, sets
    the capacity to 1.5× its need. A later render that still overflows grows the capacity to 1.5×
    its need and makes `after_step` return True: the loop renders that step's Gaussians again.
    A CUDA graph captured around a render holds the capacity it was captured with: capture after
    the first step, and again after an `after_step` that returned True.
    budget: a given OverlapBudget (fixed start capacity) instead of one made at the first render.
    """

    kind = "triton"

    def __init__(self, cameras: RenderCameras, *, overlap_tiles: int | None = None,
                 budget: OverlapBudget | None = None, **options):
        super().__init__(cameras, **options)
        if overlap_tiles is not None and overlap_tiles < 1:
            raise ValueError(f"overlap_tiles must be at least 1, got {overlap_tiles}")
        self.overlap_tiles = overlap_tiles
        self.auto = overlap_tiles is None and budget is None
        self.given_budget = budget
        self.start_run()

    def start_run(self) -> None:
        self.budget = self.given_budget   # None: made at the first render, when its size is known
        self.unchecked = False            # a render happened since the last after_step
        self.first_render_needed: int | None = None
        self.initial_capacity: int | None = None
        self.growths: list[dict] = []
        self.rerendered_steps: list[int] = []

    def render(self, gaussians, want_images=False, timer=None, step=None) -> FeedbackOutput:
        cams = self.cameras
        if self.budget is None:   # images × Gaussians from sizes only: no host read
            tiles = self.overlap_tiles or FIRST_RENDER_TILES_PER_GAUSSIAN
            self.budget = OverlapBudget(gaussians.numel() // 14 * cams.w2c.shape[0] * tiles,
                                        gaussians.device)
        with timed(timer, "render", step):
            out = render_gaussians_triton(
                gaussians, cams.w2c, cams.K, cams.height, cams.width, self.background,
                budget=self.budget, want_images=want_images,
                feedback_cameras=(cams.c2w, cams.intrinsics_norm), matmul_dtype=self.matmul_dtype,
                feedback_dtype=self.dtype)
        self.unchecked = True
        return FeedbackOutput(out.feedback_rgb, out.feedback_ccm, out.images, out.needed)

    def after_step(self, step: int) -> bool:
        if not self.unchecked:
            return False
        self.unchecked = False
        needed = self.budget.peak_needed()       # the one device read, between steps
        ran_with = self.budget.capacity
        if self.first_render_needed is None:     # the run's first render: size the capacity
            self.first_render_needed = needed
            if self.auto:
                self.budget.capacity = with_headroom(needed)
            self.initial_capacity = self.budget.capacity
        if needed <= ran_with:
            return False
        if needed > self.budget.capacity:
            self.budget.capacity = with_headroom(needed)
            self.growths.append({"step": step, "needed": needed, "capacity": self.budget.capacity})
        self.rerendered_steps.append(step)
        return True

    def check(self) -> None:
        if self.budget is not None:
            self.budget.check()

    def report(self) -> dict:
        return {"kind": self.kind, "overlap_capacity": {
            "mode": "auto" if self.auto else "fixed",
            "tiles_per_gaussian": self.overlap_tiles,
            "first_render_needed": self.first_render_needed,
            "initial": self.initial_capacity,
            "growths": list(self.growths),
            "rerendered_steps": list(self.rerendered_steps),
        }}
