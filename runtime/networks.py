"""The per-network interface the recursive loop runs on, and the one factory that builds it.

Every backend provides the same calls with the same tensor shapes (`Networks`), so the loop in
`pipeline.py` never branches on the backend. Shapes for a preset with F views, image S², latent
s = S/8, CFG batch 2:

    encode_image(image [1,3,S,S])                      -> clip embedding [1,1,D]
    encode_latent(image [1,3,S,S])                     -> VAE posterior mean [1,4,s,s] (unscaled)
    set_conditioning(clip_cfg [2,1,D], cameras)        -> None (hoists per-image constants)
    unet(sample [2,F,8,s,s], timestep 0-d, added_time_ids [2,3], features) -> [2,F,4,s,s]
    adapters(rgb [F,192,s,s], ccm [F,192,s,s])         -> features (opaque to the loop)
    vae_decode(latents [F,4,s,s], already / scaling)   -> images [F,3,S,S] float32
    lgm(images [1,F,3,S,S], timestep 0-d)              -> gaussians [1,N,14] float32

`make_networks(backend, ...)` is the only place a backend is chosen: `ort3d-run`, `ort3d-build`'s
checks, `bench/latency.py` and the tests all call it. Adding a backend is one `BACKENDS` entry.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from ort3d.models.cameras import FeedbackCameras
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT, check_temporal_context
from ort3d.models.presets import Preset
from ort3d.models.scheduler import ScheduleConfig

DTYPES = ("auto", "fp32", "fp16", "bf16")


class Networks(Protocol):
    """What the loop calls; see the module docstring for the shapes.

    Two optional hooks a backend may add (runtime/pipeline.py reads them with getattr):
    `feedback_dtype`, the dtype its adapters take the feedback maps in (default float32), and
    `steps_runner(pipeline)`, a callable(state, progress) that runs the steps its own way (graph:
    replayed CUDA graphs)."""

    name: str
    preset: Preset
    schedule_config: ScheduleConfig
    device: torch.device
    autocast_dtype: torch.dtype | None   # the reference's CCM matmul follows it (docs/quirks.md#q5)
    temporal_context: str                # Q1 mode the UNet runs with (docs/quirks.md#q1)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...
    def encode_latent(self, image: torch.Tensor) -> torch.Tensor: ...
    def set_conditioning(self, clip_cfg: torch.Tensor, cameras: FeedbackCameras) -> None: ...
    def unet(self, sample, timestep, added_time_ids, features) -> torch.Tensor: ...
    def adapters(self, rgb: torch.Tensor, ccm: torch.Tensor): ...
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    def lgm(self, images: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (a missing package, device or artefact); one-line message."""


def precision_policy(dtype: str, device) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, autocast dtype or None) for a `--dtype` name (docs/precision.md).

    auto is the reference's policy: fp32 weights under fp16 autocast on CUDA, plain fp32 on CPU.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        cuda = torch.device(device).type == "cuda"
        return (torch.float32, torch.float16) if cuda else (torch.float32, None)
    if dtype == "fp32":
        return torch.float32, None
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return half, half


def bf16_supported(device) -> bool:
    device = torch.device(device)
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def vae_precision(vae_dtype: torch.dtype, autocast_dtype: torch.dtype | None, device,
                  force_upcast: bool) -> tuple[torch.dtype, torch.dtype | None]:
    """(VAE weight dtype, VAE autocast dtype or None) for a VAE whose weights are `vae_dtype` in a
    loop run under `autocast_dtype` (docs/precision.md#vae-precision).

    diffusers' `force_upcast` marks a VAE whose activations overflow fp16: fp16 weights are then
    replaced by bf16 (fp32 where the device lacks bf16), run under that dtype's autocast (none
    for fp32), never plain fp16. Any other combination is kept: the authors' policy (fp32
    weights under fp16 autocast, whose fp32 normalisations avoid the overflow), fp32, bf16.
    """
    if vae_dtype != torch.float16 or not force_upcast:
        return vae_dtype, autocast_dtype
    if bf16_supported(device):
        return torch.bfloat16, torch.bfloat16
    return torch.float32, None


def ccm_matmul_dtype(compute_dtype: torch.dtype | None) -> torch.dtype:
    """The CCM matmul's dtype for networks computing in `compute_dtype` (docs/precision.md#ccm-dtype).

    fp16 reproduces the reference, whose CCM runs under fp16 autocast (docs/quirks.md#q5); every
    other dtype (None, fp32, bf16) computes it in fp32: the reference has no bf16 CCM to
    reproduce, and the maps are rounded to the adapters' input dtype after it either way.
    """
    return torch.float16 if compute_dtype == torch.float16 else torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """The reference runs MVModel, VAE decode and LGM under fp16 autocast (docs/precision.md)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class EagerNetworks:
    """Our PyTorch modules (`ort3d.models`), the reference every other backend is measured against."""

    name = "eager"

    def __init__(self, models, device, autocast_dtype: torch.dtype | None = None,
                 temporal_context: str = DEFAULT_TEMPORAL_CONTEXT):
        from ort3d.models.vae import vae_decode, vae_encode_mode

        self.models = models
        self.preset = models.preset
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.temporal_context = check_temporal_context(temporal_context)
        self.schedule_config = models.schedule
        self._vae_decode, self._vae_encode_mode = vae_decode, vae_encode_mode
        vae_dtype, self.vae_autocast_dtype = vae_precision(
            models.vae.dtype, autocast_dtype, self.device, models.vae.config.force_upcast)
        if models.vae.dtype != vae_dtype:   # fp16 weights of a force_upcast VAE: bf16 or fp32
            # nn.Module.to: diffusers' own .to() warns about keep-in-fp32 modules this VAE lacks.
            torch.nn.Module.to(models.vae, vae_dtype)
        self._plucker = self._context = self._lgm_rays = None
        self._cameras: FeedbackCameras | None = None

    def _autocast(self):
        return autocast_context(self.device, self.autocast_dtype)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.models.image_encoder(image)          # fp32, outside autocast (docs/precision.md)

    def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
        vae = self.models.vae   # outside autocast, in the VAE's own dtype (docs/precision.md)
        return self._vae_encode_mode(vae, image.to(vae.dtype)).float()

    def set_conditioning(self, clip_cfg: torch.Tensor, cameras: FeedbackCameras) -> None:
        mv, lgm = self.models.mv, self.models.lgm
        self._cameras = cameras
        index = lgm.view_indices(len(cameras.fov_deg))
        # The reference computes these inside the autocast region (its einsum/matmul run in fp16:
        # Q4), so they are hoisted under the same context.
        with self._autocast():
            self._plucker = mv.plucker_embeddings(cameras.intrinsics, cameras.c2w,
                                                   self.preset.latent_size)
            self._context = mv.context_constants(clip_cfg, temporal_context=self.temporal_context)
            self._lgm_rays = lgm.rays(cameras.c2w[index], cameras.fov_deg[index])

    def unet(self, sample, timestep, added_time_ids, features):
        with self._autocast():
            return self.models.mv(sample, timestep, None, added_time_ids,
                                  adapter_features=features, plucker=self._plucker,
                                  context=self._context, temporal_context=self.temporal_context)

    def adapters(self, rgb, ccm):
        with self._autocast():
            return [adapter.forward_unshuffled(maps)
                    for adapter, maps in zip(self.models.mv.cond_encoder, (rgb, ccm))]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.vae_autocast_dtype):
            return self._vae_decode(self.models.vae, latents, num_frames=latents.shape[0]).float()

    def lgm(self, images: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        cams = self._cameras
        with self._autocast():
            return self.models.lgm.forward_gaussians(images, timestep, cams.c2w, cams.fov_deg,
                                                     rays=self._lgm_rays).float()


# ------------------------------------------------------------------------------------ factory

@dataclass(frozen=True)
class NetworkRequest:
    """Everything a backend may need to build its networks; each reads what it uses."""

    preset: Preset
    device: torch.device
    dtype: str = "auto"                           # DTYPES, for the backends that run our modules
    checkpoint: str | None = None                 # Ouroboros3D folder or hub id (None: random)
    svd: str | None = None                        # SVD base folder or hub id
    engines: Path | None = None                   # artefact folder; None: the per-user cache
    temporal_context: str = DEFAULT_TEMPORAL_CONTEXT
    models: object | None = None                  # prebuilt ort3d.models.checkpoint.Models
    log: Callable[[str], None] | None = None      # progress lines (engine builds)

    def weights(self):
        """The PyTorch models for this request (built once by the caller, or here)."""
        if self.models is not None:
            return self.models
        from ort3d.models.checkpoint import build_models

        weight_dtype, _ = precision_policy(self.dtype, self.device)
        return build_models(self.preset, checkpoint_dir=self.checkpoint, svd_dir=self.svd,
                            device=self.device, dtype=weight_dtype)


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str                                              # one line for --help
    unavailable: Callable[[NetworkRequest], str | None]       # None: it can run here
    create: Callable[[NetworkRequest], Networks]
    cuda_renderer: str | None = None   # the feedback renderer it needs on CUDA (None: any)


def default_renderer(backend: str, device) -> str:
    """The feedback renderer `backend` runs with unless one is chosen: the one it needs on CUDA
    (graph: triton, whose render has no host reads), else the torch reference."""
    needed = BACKENDS[backend].cuda_renderer
    return needed if needed is not None and torch.device(device).type == "cuda" else "torch"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _eager(request: NetworkRequest) -> Networks:
    _, autocast_dtype = precision_policy(request.dtype, request.device)
    return EagerNetworks(request.weights(), request.device, autocast_dtype=autocast_dtype,
                         temporal_context=request.temporal_context)


def _graph(request: NetworkRequest) -> Networks:
    from ort3d.runtime.backend_graph import create_graph_networks

    return create_graph_networks(request)


def _ort_unavailable(request: NetworkRequest) -> str | None:
    if not has_module("onnxruntime"):
        return "onnxruntime is not installed (pip install 'ort3d[onnx]')"
    if request.device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return (f"onnxruntime-gpu is not installed (onnxruntime {onnxruntime.__version__} has "
                    "no CUDAExecutionProvider); install 'ort3d[gpu]' instead of onnxruntime")
    return None


def _ort(request: NetworkRequest) -> Networks:
    from ort3d.runtime.backend_ort import OrtNetworks
    from ort3d.runtime.engine_folder import engine_folder

    folder = engine_folder(request, formats=("onnx",))
    return OrtNetworks(folder, request.preset, device=request.device,
                       temporal_context=request.temporal_context)


def _trt_unavailable(request: NetworkRequest) -> str | None:
    if not has_module("tensorrt"):
        return "TensorRT is not installed (NVIDIA's `tensorrt` wheel, on a CUDA host)"
    if request.device.type != "cuda":
        return "TensorRT engines run on a CUDA device (use --device cuda)"
    return None


def _trt(request: NetworkRequest) -> Networks:
    from ort3d.runtime.backend_trt import TrtNetworks
    from ort3d.runtime.engine_folder import engine_folder

    folder = engine_folder(request, formats=("onnx", "engine"))
    return TrtNetworks(folder, request.preset, device=request.device,
                       temporal_context=request.temporal_context)


def _aoti(request: NetworkRequest) -> Networks:
    from ort3d.runtime.backend_aoti import AotiNetworks
    from ort3d.runtime.engine_folder import engine_folder

    folder = engine_folder(request, formats=("aoti",))
    return AotiNetworks(folder, request.preset, device=request.device,
                        temporal_context=request.temporal_context)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("eager", "our PyTorch modules: the reference", lambda request: None, _eager),
    Backend("graph", "our modules in fp16 (VAE bf16), the loop replayed as CUDA graphs on CUDA "
            "(with the triton renderer)", lambda request: None, _graph, cuda_renderer="triton"),
    Backend("ort", "exported ONNX graphs in ONNX Runtime", _ort_unavailable, _ort),
    Backend("trt", "TensorRT engines", _trt_unavailable, _trt),
    Backend("aoti", "AOTInductor packages, the C++ host's engine files", lambda request: None, _aoti),
)}
REFERENCE_BACKEND = "eager"


def make_networks(backend: str, preset: Preset, device, *, models=None, checkpoint=None, svd=None,
                  dtype: str = "auto", engines=None,
                  temporal_context: str = DEFAULT_TEMPORAL_CONTEXT,
                  log: Callable[[str], None] | None = None) -> Networks:
    """The networks of `backend` (a BACKENDS name).

    models: prebuilt eager models to reuse (bench builds them once for every backend); otherwise
    they are built from checkpoint/svd (random tiny weights when both are None). engines: the
    exported backends' artefact folder; None uses a content-keyed folder under the user cache
    and builds what is missing there (runtime/engine_folder.py).
    Raises BackendUnavailable (with the reason) when the backend cannot run here.
    """
    entry, request = _backend_request(backend, preset, device, models=models, checkpoint=checkpoint,
                                      svd=svd, dtype=dtype, engines=engines,
                                      temporal_context=temporal_context, log=log)
    reason = entry.unavailable(request)
    if reason is not None:
        raise BackendUnavailable(f"backend {backend}: {reason}")
    return entry.create(request)


def unavailable_reason(backend: str, preset: Preset, device, **settings) -> str | None:
    """Why `backend` cannot run here, or None (bench reports skipped rows with it); settings as
    make_networks takes them."""
    entry, request = _backend_request(backend, preset, device, **settings)
    return entry.unavailable(request)


def _backend_request(backend: str, preset: Preset, device, *, engines=None,
                     temporal_context: str = DEFAULT_TEMPORAL_CONTEXT,
                     **settings) -> tuple[Backend, NetworkRequest]:
    entry = BACKENDS.get(backend)
    if entry is None:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    request = NetworkRequest(preset=preset, device=torch.device(device),
                             engines=Path(engines) if engines is not None else None,
                             temporal_context=check_temporal_context(temporal_context), **settings)
    return entry, request


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "DTYPES", "EagerNetworks", "NetworkRequest",
           "Networks", "REFERENCE_BACKEND", "autocast_context", "bf16_supported", "ccm_matmul_dtype",
           "default_renderer",
           "make_networks", "precision_policy", "unavailable_reason", "vae_precision"]
