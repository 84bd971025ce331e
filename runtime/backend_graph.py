"""The `graph` backend: the eager modules run as a deployment runtime runs them, and on CUDA the
whole denoising loop replayed as CUDA graphs (docs/precision.md#graph-backend).

Networks (`GraphNetworks`): the same modules and weights as `eager`, held in the dtype they compute
in instead of recast op by op under autocast: UNet, adapters and LGM in fp16 (`--dtype auto` or
`fp16` on CUDA; bf16 with `--dtype bf16`; fp32 with `--dtype fp32` and on the CPU), the VAE in
bf16 or fp32 as its `force_upcast` asks (`networks.vae_precision`), the once-per-image CLIP
encoder as built. Attention goes through SDPA (diffusers' AttnProcessor2_0, torch's flash /
memory-efficient kernels). Per-image constants (Plücker embeddings, single-token cross-attention
outputs, LGM rays) are computed once per image into buffers that keep their addresses.

Loop (`CudaGraphSteps`, CUDA only): one CUDA graph per step index, all in one memory pool.
A pipeline's first image runs its steps eagerly on a side stream (the warm-up: Triton compiles,
cuDNN/cuBLAS initialise, the feedback renderer sizes its overlap buffer), then every step is
captured once; each later image copies its inputs into the loop's static buffers and replays the
graphs. Per-step graphs rather than one graph replayed 25 times with the step index in a device
tensor: each step's stage times are CUDA events inside its own graph, so they are all read once
after the loop (one graph replayed 25 times overwrites its events and needs a host sync per step
to read them), the finite-check flags keep their per-step rows, and the scheduler tables are
indexed as in eager. The price is 25 captures instead of 1 (capture time is reported) and no
difference at replay: the same kernels run. The capture time is the once-stage `graph_capture`
of the run that captured (run.json, bench/latency.py). On the CPU, and with `check_every_stage`
(a sync per stage cannot be captured), the steps run eagerly: the same code, no capture.

Switches measured on a GPU only (off unless set to 1): ORT3D_GRAPH_CHANNELS_LAST (channels-last
UNet, VAE and LGM convolutions), ORT3D_GRAPH_CUDNN_BENCHMARK (cuDNN autotuning; a process-wide
setting).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace

import torch
from torch.utils._pytree import tree_map

from ort3d.kernels.feedback_dispatch import RendererUnavailable
from ort3d.models.cameras import FeedbackCameras
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT, check_temporal_context
from ort3d.runtime.networks import autocast_context, default_renderer, precision_policy, vae_precision
from ort3d.runtime.pipeline import write_into
from ort3d.runtime.timing import FiniteGuard, StageTimer

CAPTURE_STAGE = "graph_capture"   # the once-stage timing a capture of the loop (run.json, bench)


class GraphRendererError(RendererUnavailable):
    """The chosen feedback renderer cannot be captured in a CUDA graph; one-line message (the
    CLIs report it as bad settings, exit 2)."""


def graph_dtype(dtype: str, device) -> torch.dtype:
    """The dtype the graph backend's loop networks hold and compute in, for a `--dtype` name: the
    eager policy's autocast dtype (`auto` on CUDA: fp16), held as weights; fp32 where it has none."""
    _, autocast_dtype = precision_policy(dtype, device)
    return autocast_dtype or torch.float32


@dataclass(frozen=True)
class GraphSettings:
    channels_last: bool = False      # channels-last convolutions (CUDA)
    cudnn_benchmark: bool = False    # cuDNN autotuning (CUDA, process-wide)

    @classmethod
    def from_environment(cls) -> "GraphSettings":
        def flag(name: str) -> bool:
            value = os.environ.get(name, "0")
            if value not in ("0", "1"):
                raise ValueError(f"{name} must be 0 or 1, got {value!r}")
            return value == "1"
        return cls(channels_last=flag("ORT3D_GRAPH_CHANNELS_LAST"),
                   cudnn_benchmark=flag("ORT3D_GRAPH_CUDNN_BENCHMARK"))


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def cast_module(module: torch.nn.Module, dtype: torch.dtype, copy_first: bool) -> torch.nn.Module:
    """module with floating parameters and buffers in dtype: cast in place, or (copy_first) a copy
    whose tensors are made straight in dtype (no transient full-precision copy of the weights)."""
    if module_dtype(module) == dtype:
        return module
    if not copy_first:
        return torch.nn.Module.to(module, dtype)   # nn.Module.to: diffusers' .to() warns needlessly
    memo = {}
    for tensor in (*module.parameters(), *module.buffers()):
        cast = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach().clone()
        memo[id(tensor)] = torch.nn.Parameter(cast, requires_grad=False) if isinstance(
            tensor, torch.nn.Parameter) else cast
    return copy.deepcopy(module, memo)


def use_sdpa(module: torch.nn.Module) -> None:
    """Route every diffusers Attention of module through AttnProcessor2_0 (torch SDPA)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for sub in module.modules():
        if hasattr(sub, "set_processor") and not isinstance(getattr(sub, "processor", None), AttnProcessor2_0):
            sub.set_processor(AttnProcessor2_0())


def to_channels_last(module: torch.nn.Module) -> None:
    """Channels-last 2-D convolution weights (the VAE's temporal Conv3d weights keep theirs:
    nn.Module.to(memory_format=...) would refuse them)."""
    for param in module.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)


def copy_or_keep(buffer, value):
    """`value` written into `buffer` (same nested structure of tensors) when there is one, else
    `value` becomes the buffer: what keeps per-image constants at the addresses a graph reads."""
    if buffer is None:
        return value
    write_into(buffer, value)
    return buffer


class GraphNetworks:
    """The `graph` backend's networks: eager's modules, in their compute dtype, no autocast."""

    name = "graph"

    def __init__(self, models, device, dtype: torch.dtype, *, own_models: bool,
                 temporal_context: str = DEFAULT_TEMPORAL_CONTEXT,
                 settings: GraphSettings = GraphSettings()):
        from ort3d.models.checkpoint import Models
        from ort3d.models.vae import vae_decode, vae_encode_mode

        self.device = torch.device(device)
        self.dtype = dtype
        self.feedback_dtype = dtype            # the renderer writes the adapters' inputs in it
        # The CCM follows the dtype the loop computes in, as the reference's follows its autocast.
        self.autocast_dtype = None if dtype == torch.float32 else dtype
        self.temporal_context = check_temporal_context(temporal_context)
        self.settings = settings
        cuda = self.device.type == "cuda"
        copy_first = not own_models            # shared models (bench) stay as the eager row has them
        vae_dtype, _ = vae_precision(dtype, None, self.device, models.vae.config.force_upcast)
        mv = cast_module(models.mv, dtype, copy_first)
        lgm = cast_module(models.lgm, dtype, copy_first)
        vae = cast_module(models.vae, vae_dtype, copy_first)
        for module in (mv, vae):
            use_sdpa(module)
        if cuda and settings.channels_last:
            for module in (mv, vae, lgm):
                to_channels_last(module)
        if cuda and settings.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.models = Models(models.preset, mv, lgm, vae, models.image_encoder, models.schedule,
                             models.sources)
        self.preset = models.preset
        self.schedule_config = models.schedule
        self._vae_decode, self._vae_encode_mode = vae_decode, vae_encode_mode
        self._plucker = self._context = self._lgm_rays = None
        self._cameras: FeedbackCameras | None = None

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.models.image_encoder(image)

    def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
        vae = self.models.vae
        return self._vae_encode_mode(vae, image.to(vae.dtype)).float()

    def set_conditioning(self, clip_cfg: torch.Tensor, cameras: FeedbackCameras) -> None:
        """Per-image constants, computed as eager does (under autocast in the compute dtype: once
        per image, so recasting costs nothing), then written into the buffers the graphs read."""
        mv, lgm, dtype = self.models.mv, self.models.lgm, self.dtype
        self._cameras = cameras
        index = lgm.view_indices(len(cameras.fov_deg))
        with autocast_context(self.device, self.autocast_dtype):
            plucker = mv.plucker_embeddings(cameras.intrinsics, cameras.c2w, self.preset.latent_size)
            context = mv.context_constants(clip_cfg, temporal_context=self.temporal_context)
            rays = lgm.rays(cameras.c2w[index], cameras.fov_deg[index])
        context.values = tree_map(lambda t: t.to(dtype), context.values)
        if self._context is not None:
            context.values = copy_or_keep(self._context.values, context.values)
        self._plucker = copy_or_keep(self._plucker, [p.to(dtype) for p in plucker])
        self._context = context
        self._lgm_rays = copy_or_keep(self._lgm_rays, rays.to(dtype))

    def unet(self, sample, timestep, added_time_ids, features):
        return self.models.mv(sample.to(self.dtype), timestep, None, added_time_ids,
                              adapter_features=features, plucker=self._plucker,
                              context=self._context, temporal_context=self.temporal_context)

    def adapters(self, rgb, ccm):
        return [adapter.forward_unshuffled(maps.to(self.dtype))
                for adapter, maps in zip(self.models.mv.cond_encoder, (rgb, ccm))]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.models.vae
        return self._vae_decode(vae, latents.to(vae.dtype), num_frames=latents.shape[0]).float()

    def lgm(self, images: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        cams = self._cameras
        return self.models.lgm.forward_gaussians(images.to(self.dtype), timestep, cams.c2w,
                                                 cams.fov_deg, rays=self._lgm_rays).float()

    def steps_runner(self, pipeline):
        """How `pipeline` runs its steps: replayed CUDA graphs on CUDA, eagerly elsewhere (no
        capture, so any feedback renderer)."""
        if self.device.type != "cuda":
            return pipeline.run_steps_eagerly
        needed = default_renderer(self.name, self.device)
        if pipeline.options.renderer != needed:
            raise GraphRendererError(
                f"the graph backend on CUDA needs a feedback renderer without host reads: "
                f"--renderer {needed} (got {pipeline.options.renderer})")
        return CudaGraphSteps(pipeline)


class CudaGraphSteps:
    """A pipeline's steps as per-step CUDA graphs in one pool, captured on its first image and
    replayed for every later one (module docstring)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.stream = None           # the side stream of the warm-up and the captures
        self.graphs: list[tuple[torch.cuda.CUDAGraph, list]] = []   # (graph, its timed stages)
        self.buffers = None          # the LoopState whose tensors the graphs read and write
        self.budget = None           # the feedback renderer's overlap budget the graphs hold
        self.capture_s: float | None = None
        self.captures = 0            # how many times the loop was captured in this process
        self.replayed_images = 0

    def __call__(self, state, progress=None) -> None:
        with torch.no_grad():   # a caller without inference_mode: no autograd records in the graphs
            self._run(state, progress)

    def _run(self, state, progress) -> None:
        pipe = self.pipeline
        if pipe.options.check_every_stage:
            pipe.run_steps_eagerly(state, progress)
            return
        if self.graphs:
            start = self._adopt(state)
            self._replay(state, progress)
            if not self._overflowed():
                self.replayed_images += 1
                return
            # A render needed more tile overlaps than the captured buffer holds: start this image
            # again eagerly (the renderer grows its buffer between steps) and capture anew.
            self._restore(state, start)
        self._run_and_capture(state, progress)

    def report(self) -> dict:
        return {"graphs": len(self.graphs), "capture_s": self.capture_s, "captures": self.captures,
                "replayed_images": self.replayed_images}

    # ------------------------------------------------------------------ capture
    def _run_and_capture(self, state, progress) -> None:
        self.graphs = []
        self._warm_up(state, progress)
        started = time.perf_counter()
        self.graphs = self._capture(state)
        self.capture_s = time.perf_counter() - started
        self.captures += 1
        self.buffers = state
        self.budget = getattr(self.pipeline.renderer, "budget", None)

    def _warm_up(self, state, progress) -> None:
        """This image's steps run eagerly on the side stream: its result, and the warm-up."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=self.pipeline.device)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.pipeline.run_steps_eagerly(state, progress)
        torch.cuda.current_stream().wait_stream(self.stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()     # the eager run's cached blocks: the graphs get their own pool

    def _capture(self, state) -> list:
        """One graph per step index, sharing one pool, each with the stages timed inside it.

        Timed as a once-stage on the idle default stream (so its events span the host's capture
        work). capture_begin/end rather than torch.cuda.graph(), which collects garbage and
        empties the cache around each of the 25 captures."""
        pipe, graphs = self.pipeline, []
        pool = torch.cuda.graph_pool_handle()
        with state.timer.stage(CAPTURE_STAGE), torch.cuda.stream(self.stream):
            for i in range(pipe.options.steps):
                graph = torch.cuda.CUDAGraph()
                with state.timer.capture() as stages:
                    graph.capture_begin(pool=pool)
                    try:
                        pipe.step(state, i)
                    finally:
                        graph.capture_end()
                graphs.append((graph, stages))
        torch.cuda.current_stream().wait_stream(self.stream)
        torch.cuda.synchronize()
        return graphs

    # ------------------------------------------------------------------ replay
    def _adopt(self, state) -> dict:
        """Copy a new image's loop inputs into the captured buffers and point `state` at them;
        returns the inputs (for a restart)."""
        buffers, renderer = self.buffers, self.pipeline.renderer
        start = {name: getattr(state, name) for name in LOOP_TENSORS}
        for name in LOOP_TENSORS:
            setattr(state, name, copy_or_keep(getattr(buffers, name), getattr(state, name)))
        buffers.guard.flags.zero_()
        state.guard.flags = buffers.guard.flags
        if self.budget is not None:          # the graphs record into the captured budget
            self.budget.peak.zero_()
            renderer.budget = self.budget
        return start

    def _replay(self, state, progress) -> None:
        for i, (graph, _) in enumerate(self.graphs):
            graph.replay()
            if progress is not None:
                progress(i)
        for _, stages in self.graphs:       # each graph ran once: its events hold this image's times
            state.timer.replayed(stages)

    def _overflowed(self) -> bool:
        return self.budget is not None and self.budget.peak_needed() > self.budget.capacity

    def _restore(self, state, start: dict) -> None:
        pipe = self.pipeline
        for name, value in start.items():
            setattr(state, name, copy_or_keep(getattr(self.buffers, name), value))
        state.timer = StageTimer(pipe.device, enabled=pipe.options.timing)
        state.guard = FiniteGuard(pipe.options.steps, pipe.device)
        state.guard.flags = self.buffers.guard.flags.zero_()
        pipe.renderer.start_run()


# The loop tensors a step reads or writes (pipeline.LoopState fields), copied in for each image.
LOOP_TENSORS = ("latents", "latent_cfg", "time_ids", "features", "gaussians", "decoded")


def create_graph_networks(request) -> GraphNetworks:
    """The BACKENDS entry: own fp32 models cast once, or copies of the caller's shared models."""
    dtype = graph_dtype(request.dtype, request.device)
    own = request.models is None
    models = replace(request, dtype="fp32").weights() if own else request.models
    return GraphNetworks(models, request.device, dtype, own_models=own,
                         temporal_context=request.temporal_context,
                         settings=GraphSettings.from_environment())


__all__ = ["CAPTURE_STAGE", "CudaGraphSteps", "GraphNetworks", "GraphRendererError", "GraphSettings",
           "create_graph_networks", "graph_dtype"]
