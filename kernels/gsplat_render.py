"""gsplat as a feedback renderer: ort3d's Gaussians rasterised by gsplat, then the CCM and layout.

gsplat (nerfstudio's rasteriser) is the community peer the fused Triton kernels are measured
against, and a third renderer for the loop. Its conventions differ from the reference renderer
(`render.py`, diff-gaussian-rasterization semantics); this module maps them:

- covariance: gsplat normalises quaternions, LGM's are far from unit length (quirk Q19, see
  docs/quirks.md#q19), so gsplat gets Σ built from the RAW quaternion by `render.covariance_3d`
  (its `covars` input) and never sees quaternions or scales;
- pixel centres: the reference puts them at integer coordinates (cx = W/2 − 0.5), gsplat at
  half-integers, so the principal point moves by +0.5. With cx = W/2, gsplat's Jacobian clamp
  (W − cx)/fx + 0.3·tanfov equals the reference's 1.3·tanfov;
- dilation (0.3 px², gsplat `eps2d`), near plane (z > 0.2), alpha cut 1/255, transmittance cut
  1e-4: the same (gsplat stops a pixel at T ≤ 1e-4, the reference at T < 1e-4);
- depth: gsplat's "RGB+D" mode blends view z as a 4th channel, Σ z·α·T with a zero background:
  the reference's unnormalised depth that the CCM needs (not the normalised "ED" depth);
- white background in the RGB channels; cameras are OpenCV w2c (gsplat `viewmats`) and K.

Two conventions cannot be mapped, and the renders differ there (docs/gsplat.md):
- alpha clamp: gsplat clamps α at 0.999, the reference at 0.99 (only where o·e^(−σ) > 0.99);
- tile coverage: the reference blends a Gaussian only in the tiles of its 3·sqrt(λ_max) square
  (rounded as getRect does, which also drops the first pixel column/row of a tile the square
  barely reaches); gsplat (1.5) covers a per-axis box that holds every pixel with α ≥ 1/255.

The pipeline is gsplat's `rasterization(packed=False, render_mode="RGB+D")` stage by stage
(projection, tile intersection, offsets, compositing), with the stages injected: `cuda_stages()`
are gsplat's CUDA functions (the renderer), `torch_stages()` their pure-torch twins (gsplat's own
`_torch_impl` projection and binning, and `rasterize_to_pixels_torch` below for compositing, as
gsplat's torch compositing needs its CUDA extension), so CPU tests run the same mapping code.
`GsplatFeedbackRenderer` is the feedback renderer of kind `gsplat` (feedback_dispatch.RENDERERS).
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ort3d.kernels.feedback_dispatch import ImageFeedbackRenderer, RenderCameras, RendererUnavailable
from ort3d.kernels.render import RenderOutput, covariance_3d, tile_grid
from ort3d.kernels.render_constants import ALPHA_MIN, DILATION, NEAR_Z, TILE

GSPLAT_MIN_VERSION = (1, 5)   # per-axis radii and opacity-aware tile bounds, as rasterization() uses
GSPLAT_ALPHA_MAX = 0.999      # gsplat's hard-coded alpha clamp (the reference's: render_constants.ALPHA_MAX)
GSPLAT_T_STOP = 1e-4          # a pixel ends when a Gaussian would bring T to <= this (not blended)
UPPER_TRIANGLE = ([0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2])   # gsplat's [..., 6] covariance layout


class GsplatStages(NamedTuple):
    """gsplat's rasterisation stages, CUDA or pure torch, with gsplat's own signatures except
    `project` (means [N,3], covars [N,3,3], opacities [N], viewmats [V,4,4], Ks [V,3,3], width,
    height, eps2d, near_plane) -> (radii, means2d [V,N,2], depths [V,N], conics [V,N,3])."""
    project: Callable
    isect_tiles: Callable
    isect_offset_encode: Callable
    rasterize_to_pixels: Callable


class GsplatInputs(NamedTuple):
    """ort3d's Gaussians and cameras in gsplat's conventions (see the module docstring)."""
    means: Tensor        # [B,N,3]
    covars: Tensor       # [B,N,3,3] from the raw quaternion (Q19)
    opacities: Tensor    # [B,N]
    colors: Tensor       # [B,N,3]
    viewmats: Tensor     # [V,4,4] world->camera (OpenCV)
    Ks: Tensor           # [V,3,3] principal point +0.5 (half-integer pixel centres)
    backgrounds: Tensor  # [V,4] RGB background and 0 for the depth channel


class GsplatProjected(NamedTuple):
    radii: Tensor        # [V,N,2] int32 (0: culled)
    means2d: Tensor      # [V,N,2] gsplat pixel coordinates (reference + 0.5)
    depths: Tensor       # [V,N] view z
    conics: Tensor       # [V,N,3] inverse 2D covariance (a, b, c)


class GsplatBinned(NamedTuple):
    isect_offsets: Tensor  # [V,TY,TX] int32 first entry of each tile in flatten_ids
    flatten_ids: Tensor    # [M] int32 flat (view, Gaussian) index, sorted by (view, tile, depth)


@functools.cache
def gsplat_version() -> tuple[int, ...] | None:
    """The installed gsplat's (major, minor), or None when it is not installed. Cached: reading
    the package metadata scans sys.path, and the one-shot `render_feedback` asks on every call."""
    try:
        text = importlib.metadata.version("gsplat")
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def gsplat_package_problem() -> str | None:
    """Why the installed gsplat cannot be used (missing or too old), or None."""
    version = gsplat_version()
    if version is None:
        return "gsplat is not installed: pip install 'ort3d[gsplat]'"
    if version < GSPLAT_MIN_VERSION:
        need = ".".join(map(str, GSPLAT_MIN_VERSION))
        return f"needs gsplat>={need}, found {'.'.join(map(str, version))}"
    return None


def gsplat_unavailable_reason(device) -> str | None:
    """Why the gsplat renderer cannot run on `device`, or None (the registry's `unavailable`).
    Builds nothing."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "needs a CUDA device (gsplat's rasteriser is CUDA-only)"
    return gsplat_package_problem()


def renderer_unavailable(reason: str) -> RendererUnavailable:
    """The one-line error, in the form feedback_dispatch.create_feedback_renderer gives it."""
    return RendererUnavailable(f"renderer gsplat: {reason}")


def cuda_stages(device="cuda") -> GsplatStages:
    """gsplat's CUDA stages for `device`; RendererUnavailable (one line) if they cannot run there.
    The first call builds gsplat's CUDA extension if it is not built yet (minutes; docs/gsplat.md
    shows how to build it ahead)."""
    reason = gsplat_unavailable_reason(device)
    if reason:
        raise renderer_unavailable(reason)
    return _built_cuda_stages()


@functools.cache
def _built_cuda_stages() -> GsplatStages:
    import gsplat
    try:
        from gsplat.cuda._backend import _C
    except (ImportError, OSError, RuntimeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise renderer_unavailable(f"gsplat's CUDA extension failed to build: {detail}") from None
    if _C is None:
        raise renderer_unavailable("gsplat's CUDA extension is not built and no CUDA toolkit was found "
                                   "to build it (docs/gsplat.md)")

    def project(means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane):
        # Opacities give gsplat's opacity-aware tile bounds, as rasterization() passes them.
        radii, means2d, depths, conics, _ = gsplat.fully_fused_projection(
            means, covars[..., UPPER_TRIANGLE[0], UPPER_TRIANGLE[1]], None, None, viewmats, Ks,
            width, height, eps2d=eps2d, near_plane=near_plane, packed=False, opacities=opacities)
        return radii, means2d, depths, conics

    return GsplatStages(project, gsplat.isect_tiles, gsplat.isect_offset_encode, gsplat.rasterize_to_pixels)


def torch_stages() -> GsplatStages:
    """Pure-torch twins of `cuda_stages()`: gsplat's `_torch_impl` projection and binning (the
    references its test-suite checks the CUDA kernels against) and `rasterize_to_pixels_torch`.
    Needs only the gsplat package; runs on any device (binning loops in Python: small scenes)."""
    problem = gsplat_package_problem()
    if problem:
        raise renderer_unavailable(problem)
    from gsplat.cuda._torch_impl import _fully_fused_projection, _isect_offset_encode, _isect_tiles

    def project(means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane):
        # No opacity-aware bounds here: a 3.33σ box instead, which only adds tiles where α < 1/255.
        radii, means2d, depths, conics, _ = _fully_fused_projection(
            means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane)
        return radii, means2d, depths, conics

    return GsplatStages(project, _isect_tiles, _isect_offset_encode, rasterize_to_pixels_torch)


def gsplat_inputs(gaussians: Tensor, w2c: Tensor, K: Tensor, background=(1.0, 1.0, 1.0)) -> GsplatInputs:
    """Map gaussians [B,N,14] and cameras (w2c [V,4,4], K [V,3,3] with integer pixel centres)."""
    if gaussians.dim() != 3 or gaussians.shape[-1] != 14:
        raise ValueError(f"gaussians must be [B, N, 14], got {list(gaussians.shape)}")
    if w2c.shape[-2:] != (4, 4) or K.shape[-2:] != (3, 3) or w2c.shape[0] != K.shape[0]:
        raise ValueError(f"w2c must be [V,4,4] and K [V,3,3], got {list(w2c.shape)} and {list(K.shape)}")
    g = gaussians.float()
    Ks = K.float().clone()
    Ks[:, 0:2, 2] += 0.5
    rgb = torch.as_tensor(background, dtype=torch.float32, device=g.device).expand(K.shape[0], 3)
    backgrounds = torch.cat([rgb, rgb.new_zeros(K.shape[0], 1)], -1)
    return GsplatInputs(means=g[..., 0:3].contiguous(), covars=covariance_3d(g[..., 4:7], g[..., 7:11]),
                        opacities=g[..., 3].contiguous(), colors=g[..., 11:14].contiguous(),
                        viewmats=w2c.float().contiguous(), Ks=Ks, backgrounds=backgrounds)


def project_stage(stages: GsplatStages, inputs: GsplatInputs, b: int, height: int, width: int) -> GsplatProjected:
    """Batch element b projected into every view."""
    return GsplatProjected(*stages.project(inputs.means[b], inputs.covars[b], inputs.opacities[b],
                                           inputs.viewmats, inputs.Ks, width, height, DILATION, NEAR_Z))


def bin_stage(stages: GsplatStages, projected: GsplatProjected, height: int, width: int) -> GsplatBinned:
    """Tile lists sorted by (view, tile, depth)."""
    tiles_x, tiles_y = tile_grid(height, width)
    views = projected.depths.shape[0]
    _, isect_ids, flatten_ids = stages.isect_tiles(projected.means2d, projected.radii, projected.depths,
                                                   TILE, tiles_x, tiles_y)
    offsets = stages.isect_offset_encode(isect_ids, views, tiles_x, tiles_y)
    return GsplatBinned(offsets.reshape(views, tiles_y, tiles_x), flatten_ids)


def composite_stage(stages: GsplatStages, inputs: GsplatInputs, b: int, projected: GsplatProjected,
                    binned: GsplatBinned, height: int, width: int) -> RenderOutput:
    """Batch element b's images, [1,V,...]: rgb (clamped, as the reference), alpha = 1 − T and
    depth Σ z·α·T (view z blended as a 4th channel over a zero background)."""
    views, n = projected.depths.shape
    features = torch.cat([inputs.colors[b].expand(views, n, 3), projected.depths[..., None]], -1)
    colors, alphas = stages.rasterize_to_pixels(projected.means2d, projected.conics, features,
                                                inputs.opacities[b].expand(views, n), width, height, TILE,
                                                binned.isect_offsets, binned.flatten_ids,
                                                backgrounds=inputs.backgrounds)
    return images_from_rgbd(colors, alphas)


def images_from_rgbd(colors: Tensor, alphas: Tensor) -> RenderOutput:
    """gsplat's "RGB+D" output (colors [V,H,W,4], alphas [V,H,W,1]) as a [1,V,...] RenderOutput."""
    colors = colors.permute(0, 3, 1, 2)[None]
    return RenderOutput(rgb=colors[:, :, 0:3].clamp(0.0, 1.0), alpha=alphas.permute(0, 3, 1, 2)[None],
                        depth=colors[:, :, 3:4])


def render_gaussians_gsplat(gaussians: Tensor, w2c: Tensor, K: Tensor, height: int, width: int,
                            background=(1.0, 1.0, 1.0), stages: GsplatStages | None = None) -> RenderOutput:
    """Render gaussians [B,N,14] into V views with gsplat; same contract as render.render_gaussians.

    stages: None = gsplat's CUDA stages (needs CUDA), or `torch_stages()`.
    """
    stages = stages if stages is not None else cuda_stages(gaussians.device)
    inputs = gsplat_inputs(gaussians, w2c, K, background)
    images = []
    for b in range(gaussians.shape[0]):   # one pass per object (B is 1 in the loop)
        projected = project_stage(stages, inputs, b, height, width)
        binned = bin_stage(stages, projected, height, width)
        images.append(composite_stage(stages, inputs, b, projected, binned, height, width))
    return RenderOutput(*(torch.cat(parts) for parts in zip(*images)))


def render_gaussians_rasterization(gaussians: Tensor, w2c: Tensor, K: Tensor, height: int, width: int,
                                   background=(1.0, 1.0, 1.0)) -> RenderOutput:
    """The same render through gsplat's public `rasterization()`, one call per object (CUDA): the
    check that the stage-by-stage path is gsplat's own pipeline (they agree bit for bit)."""
    cuda_stages(gaussians.device)
    import gsplat
    inputs = gsplat_inputs(gaussians, w2c, K, background)
    images = []
    for b in range(gaussians.shape[0]):
        colors, alphas, _ = gsplat.rasterization(
            inputs.means[b], None, None, inputs.opacities[b], inputs.colors[b], inputs.viewmats, inputs.Ks,
            width, height, near_plane=NEAR_Z, eps2d=DILATION, packed=False, tile_size=TILE,
            backgrounds=inputs.backgrounds[:, 0:3], render_mode="RGB+D", covars=inputs.covars[b])
        images.append(images_from_rgbd(colors, alphas))
    return RenderOutput(*(torch.cat(parts) for parts in zip(*images)))


class GsplatFeedbackRenderer(ImageFeedbackRenderer):
    """The feedback renderer of kind `gsplat`: a gsplat render, then the reference's CCM and
    unshuffle (timed as `render` and `feedback`). gsplat's CUDA extension is built (or loaded) when
    the renderer is created, before the loop. stages: `torch_stages()` instead of gsplat's CUDA
    functions (tests). gsplat's binning reads its overlap count on the host: no CUDA graph."""

    kind = "gsplat"

    def __init__(self, cameras: RenderCameras, *, stages: GsplatStages | None = None, **options):
        super().__init__(cameras, **options)
        self.stages = stages if stages is not None else cuda_stages(cameras.w2c.device)

    def render_images(self, gaussians: Tensor) -> RenderOutput:
        cams = self.cameras
        return render_gaussians_gsplat(gaussians, cams.w2c, cams.K, cams.height, cams.width, self.background,
                                       self.stages)

    def report(self) -> dict:
        return {**super().report(), "gsplat": importlib.metadata.version("gsplat")}


def rasterize_to_pixels_torch(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
                              image_width: int, image_height: int, tile_size: int, isect_offsets: Tensor,
                              flatten_ids: Tensor, backgrounds: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pure-torch twin of gsplat's CUDA `rasterize_to_pixels` forward for unpacked inputs.

    means2d [I,N,2], conics [I,N,3], colors [I,N,D], opacities [I,N], isect_offsets [I,TY,TX],
    flatten_ids [M] -> (colors [I,H,W,D], alphas [I,H,W,1]). As the kernel: pixel centres at
    (j + 0.5, i + 0.5); each tile's list front to back; σ = ½(a·dx² + c·dy²) + b·dx·dy,
    α = min(0.999, o·e^(−σ)), skipped if σ < 0 or α < 1/255; a Gaussian that would bring T to
    <= 1e-4 ends the pixel unblended; colors = Σ c·α·T + T·background, alphas = 1 − T.
    All tiles advance together, one list entry per iteration.
    """
    images = isect_offsets.shape[0]
    tiles_y, tiles_x = isect_offsets.shape[-2:]
    device = means2d.device
    channels = colors.shape[-1]
    means = means2d.reshape(-1, 2).float()
    conic = conics.reshape(-1, 3).float()
    features = colors.reshape(-1, channels).float()
    opacity = opacities.reshape(-1).float()
    start = isect_offsets.reshape(-1).long()
    count = torch.diff(start, append=start.new_tensor([flatten_ids.numel()]))
    num_tiles = start.numel()

    tile = torch.arange(num_tiles, device=device) % (tiles_x * tiles_y)
    local = torch.arange(tile_size, device=device)
    row = (tile // tiles_x)[:, None] * tile_size + local          # [T,16]
    col = (tile % tiles_x)[:, None] * tile_size + local
    py = (row.float() + 0.5)[:, :, None].expand(-1, -1, tile_size).reshape(num_tiles, -1)
    px = (col.float() + 0.5)[:, None, :].expand(-1, tile_size, -1).reshape(num_tiles, -1)
    inside = ((row < image_height)[:, :, None] & (col < image_width)[:, None, :]).reshape(num_tiles, -1)

    T = torch.ones(num_tiles, tile_size * tile_size, device=device)
    done = ~inside
    out = torch.zeros(num_tiles, tile_size * tile_size, channels, device=device)
    last = max(flatten_ids.numel() - 1, 0)
    for k in range(int(count.max()) if num_tiles else 0):
        listed = (k < count)[:, None]
        g = flatten_ids[(start + k).clamp(max=last)].long()
        dx = means[g, 0:1] - px
        dy = means[g, 1:2] - py
        sigma = 0.5 * (conic[g, 0:1] * dx * dx + conic[g, 2:3] * dy * dy) + conic[g, 1:2] * dx * dy
        alpha = torch.clamp(opacity[g, None] * torch.exp(-sigma), max=GSPLAT_ALPHA_MAX)
        considered = listed & ~done & (sigma >= 0) & (alpha >= ALPHA_MIN)
        next_T = T * (1.0 - alpha)
        ends = considered & (next_T <= GSPLAT_T_STOP)
        blend = considered & ~ends
        out += torch.where(blend, alpha * T, torch.zeros_like(T))[..., None] * features[g][:, None, :]
        T = torch.where(blend, next_T, T)
        done |= ends

    if backgrounds is not None:
        bg = backgrounds.float().reshape(images, 1, 1, channels).expand(-1, tiles_y * tiles_x, 1, -1)
        out = out + T[..., None] * bg.reshape(num_tiles, 1, channels)

    def untile(x: Tensor) -> Tensor:  # [I·TY·TX, 256, C] -> [I, H, W, C]
        c = x.shape[-1]
        img = x.reshape(images, tiles_y, tiles_x, tile_size, tile_size, c).permute(0, 1, 3, 2, 4, 5)
        return img.reshape(images, tiles_y * tile_size, tiles_x * tile_size, c)[:, :image_height, :image_width]

    return untile(out), untile((1.0 - T)[..., None])
