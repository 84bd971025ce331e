"""The feedback renderer: Gaussians → the adapters' two feedback inputs, one object per run.

A `FeedbackRenderer` owns what rendering the feedback views needs across a run: its cameras
(prepared once by `prepare_render_cameras`: the matrix inverse syncs on CUDA, so it never runs
inside a step), its stage timing, any buffer it sizes, the check between steps and the check
after the run, and a record of what it did (`report()`). Kinds, in `RENDERERS`:

* `torch`: the reference (`render.render_gaussians` → `feedback.feedback_maps`), timed as the
  stages `render` and `feedback`;
* `triton`: the fused kernels (`triton_render.TritonFeedbackRenderer`), writing both maps straight
  into the adapters' layout with no host read, so a step can sit inside a CUDA graph; timed as
  `render` only. Its tile-overlap buffer is sized from the first render and grown between steps.

Adding a kind is one `RENDERERS` entry (its module is imported only when it is chosen, so Triton
and other optional packages load only then). The loop calls:

    renderer = create_feedback_renderer(kind, prepare_render_cameras(...), matmul_dtype=...)
    rgb, ccm = renderer(gaussians, timer, step)   # inside a step: no host reads
    if renderer.after_step(step): ...              # between steps: True = render that step again
    renderer.check()                               # after the run: FeedbackRenderError
    renderer.report()                              # for run.json

`render_feedback(...)` is the one-shot form (tests, benchmarks).
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, ContextManager, NamedTuple, Protocol

import torch

from ort3d.kernels.feedback import feedback_maps
from ort3d.kernels.render import RenderOutput, camera_from_c2w, render_gaussians
from ort3d.kernels.render_constants import UNSHUFFLE


class UnknownRendererError(ValueError):
    """`renderer` is not one of RENDERERS."""


class RendererUnavailable(RuntimeError):
    """The renderer cannot run here (a missing package or device); one-line message."""


class FeedbackRenderError(RuntimeError):
    """A run's feedback renders were incomplete (reported after the run); one-line message."""


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


class StageClock(Protocol):
    """What a renderer needs of the loop's timer (runtime.timing.StageTimer has it)."""

    def stage(self, name: str, step: int | None = None) -> ContextManager: ...


def timed(timer: StageClock | None, name: str, step: int | None) -> ContextManager:
    """The timer's stage, or nothing when the call is not timed."""
    return timer.stage(name, step) if timer is not None else contextlib.nullcontext()


def prepare_render_cameras(c2w: torch.Tensor, fov_deg, intrinsics_norm: torch.Tensor,
                           height: int, width: int, device=None) -> RenderCameras:
    """Cameras for a feedback renderer from c2w [V,4,4] (OpenCV), the full field of view in degrees
    (float or [V]) and normalised intrinsics [V,3,3] (docs/renderers.md), on `device` (default:
    c2w's). Call once per run: the inverse is computed on the CPU and copied to the device."""
    if height % UNSHUFFLE or width % UNSHUFFLE:
        raise ValueError(f"feedback maps need height and width divisible by {UNSHUFFLE}, "
                         f"got {height}×{width}")
    device = device if device is not None else c2w.device
    c2w = c2w.float().cpu()
    w2c, K = camera_from_c2w(c2w, torch.as_tensor(fov_deg, dtype=torch.float64).cpu(), (height, width))
    return RenderCameras(w2c.to(device), K.to(device), c2w.to(device),
                         intrinsics_norm.float().to(device), height, width)


class FeedbackRenderer(abc.ABC):
    """Gaussians [B,N,14] → the adapters' (rgb, ccm), each [B·V,192,H/8,W/8] in `dtype`.

    matmul_dtype float16 reproduces the reference's autocast CCM (Q5); background is the RGB
    blended behind the Gaussians. overlap_tiles: the initial tile-overlap capacity per Gaussian
    and view of kinds with a fixed overlap buffer (triton; None = sized from the first render);
    kinds without one ignore it.
    """

    kind = ""

    def __init__(self, cameras: RenderCameras, *, matmul_dtype: torch.dtype = torch.float16,
                 dtype: torch.dtype = torch.float32, background=(1.0, 1.0, 1.0),
                 overlap_tiles: int | None = None):
        self.cameras = cameras
        self.matmul_dtype = matmul_dtype
        self.dtype = dtype
        self.background = tuple(float(c) for c in background)

    def __call__(self, gaussians: torch.Tensor, timer: StageClock | None = None,
                 step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb, ccm) for the adapters; timed under `step` when a timer is given. No host reads
        for kinds that promise none (triton)."""
        out = self.render(gaussians, timer=timer, step=step)
        return out.rgb, out.ccm

    @abc.abstractmethod
    def render(self, gaussians: torch.Tensor, want_images: bool = False,
               timer: StageClock | None = None, step: int | None = None) -> FeedbackOutput:
        """The feedback maps, and the plain render too if want_images."""

    def start_run(self) -> None:
        """Forget the previous run's records (called once per image, before its first step)."""

    def after_step(self, step: int) -> bool:
        """Between steps, never inside one (it may read one device value): True when the renders
        of `step` were incomplete and the renderer has fixed the cause, so rendering that step's
        Gaussians again gives the full result. Kinds that cannot fall short: always False."""
        return False

    def check(self) -> None:
        """After the run: FeedbackRenderError if any render was incomplete and not redone."""

    def report(self) -> dict:
        """What this run's renderer did, JSON-ready (for run.json)."""
        return {"kind": self.kind}


class ImageFeedbackRenderer(FeedbackRenderer):
    """A kind that renders plain images, then the reference's CCM and unshuffle
    (`feedback.feedback_maps`); timed as the stages `render` and `feedback`."""

    @abc.abstractmethod
    def render_images(self, gaussians: torch.Tensor) -> RenderOutput:
        """The plain [B,V,...] rgb/alpha/depth render."""

    def render(self, gaussians, want_images=False, timer=None, step=None) -> FeedbackOutput:
        cams = self.cameras
        with timed(timer, "render", step):
            images = self.render_images(gaussians)
        with timed(timer, "feedback", step):
            rgb, ccm = feedback_maps(images, cams.c2w, cams.intrinsics_norm, True, self.matmul_dtype)
        return FeedbackOutput(rgb.to(self.dtype), ccm.to(self.dtype), images if want_images else None, None)


class TorchFeedbackRenderer(ImageFeedbackRenderer):
    """The reference renderer. Its tile lists are data-dependent, so it reads sizes on the host."""

    kind = "torch"

    def render_images(self, gaussians):
        cams = self.cameras
        return render_gaussians(gaussians, cams.w2c, cams.K, cams.height, cams.width, self.background)


@dataclass(frozen=True)
class RendererKind:
    name: str
    summary: str                                            # one line for --help
    unavailable: Callable[[torch.device], str | None]       # None: it can run on that device
    create: Callable[..., FeedbackRenderer]                 # (cameras, **options) -> renderer


def imported_on_use(module: str, name: str) -> Callable[..., FeedbackRenderer]:
    """A renderer constructor that imports its module on the first call."""
    def create(cameras: RenderCameras, **options) -> FeedbackRenderer:
        return getattr(importlib.import_module(module), name)(cameras, **options)
    return create


def _triton_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "needs a CUDA device (or TRITON_INTERPRET=1 for Triton's slow CPU interpreter)"
    return None


RENDERERS: dict[str, RendererKind] = {k.name: k for k in (
    RendererKind("torch", "the reference renderer (PyTorch)", lambda device: None, TorchFeedbackRenderer),
    RendererKind("triton", "fused Triton kernels, no host reads (GPU)", _triton_unavailable,
                 imported_on_use("ort3d.kernels.triton_render", "TritonFeedbackRenderer")),
    RendererKind("gsplat", "nerfstudio's gsplat rasteriser fed the raw-quaternion covariance (GPU)",
                 lambda device: importlib.import_module("ort3d.kernels.gsplat_render").gsplat_unavailable_reason(device),
                 imported_on_use("ort3d.kernels.gsplat_render", "GsplatFeedbackRenderer")),
)}


def renderer_kind(kind: str) -> RendererKind:
    try:
        return RENDERERS[kind]
    except KeyError:
        raise UnknownRendererError(f"renderer must be one of {', '.join(RENDERERS)}; got {kind!r}") from None


def create_feedback_renderer(kind: str, cameras: RenderCameras, **options) -> FeedbackRenderer:
    """The loop's renderer of `kind` for these cameras; RendererUnavailable (one line) when that
    kind cannot run on the cameras' device. options: those of FeedbackRenderer."""
    entry = renderer_kind(kind)
    reason = entry.unavailable(cameras.w2c.device)
    if reason is not None:
        raise RendererUnavailable(f"renderer {kind}: {reason}")
    return entry.create(cameras, **options)


def render_feedback(gaussians: torch.Tensor, cameras: RenderCameras, renderer: str = "torch",
                    want_images: bool = False, *, budget=None, background=(1.0, 1.0, 1.0),
                    matmul_dtype: torch.dtype = torch.float16,
                    dtype: torch.dtype = torch.float32) -> FeedbackOutput:
    """One render of gaussians [B,N,14] into the cameras' V views: the adapters' inputs.

    rgb/ccm are [B·V, 192, H/8, W/8] in `dtype` (PixelUnshuffle(8) order); `images` holds the
    plain render only if want_images. matmul_dtype float16 reproduces the reference's autocast
    CCM (Q5). budget: triton only, an `OverlapBudget` fixing the overlap capacity and recording
    overflows (default: a fresh one per call; check `needed` or the budget afterwards).
    """
    options = {} if budget is None else {"budget": budget}
    kind = renderer_kind(renderer)
    return kind.create(cameras, background=background, matmul_dtype=matmul_dtype, dtype=dtype,
                       **options).render(gaussians, want_images)
