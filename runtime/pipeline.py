"""The recursive denoising loop of Ouroboros3D (docs/inference.md#the-loop), over any backend's
networks.

One step: UNet (CFG batch 2×F) -> guidance + Euler/EDM step -> VAE-decode x0 -> LGM -> render the
F feedback views -> CCM + pixel-unshuffle -> adapters (once, shared by both CFG halves) -> next
step. Buffers are allocated once per run, shapes are static, the step scalars come from tables on
the device, and nothing inside a step reads a value back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_leaves

from ort3d.kernels.feedback_dispatch import (FeedbackRenderError, create_feedback_renderer,
                                             prepare_render_cameras)
from ort3d.kernels.render import camera_from_c2w, render_gaussians
from ort3d.kernels.render_constants import FEEDBACK_CHANNELS
from ort3d.models.cameras import ORBIT_FOV_DEG, load_feedback_cameras, orbit_c2w
from ort3d.models.scheduler import EDMEulerSchedule
from ort3d.models.svd import added_time_ids
from ort3d.runtime.networks import ccm_matmul_dtype
from ort3d.runtime.timing import FiniteGuard, RunError, StageTimer, TimingReport


@dataclass
class PipelineOptions:
    steps: int = 25
    guidance: tuple[float, float] = (1.0, 3.0)     # per-view scale linspace over the F views
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    renderer: str = "torch"                         # a kernels.feedback_dispatch.RENDERERS kind
    overlap_tiles_per_gaussian: int | None = None   # triton: initial overlap capacity per Gaussian
                                                    # and view; None: sized from the first render
    exact_final_decode: bool = False                # Q12: decode the final latents again
    check_every_stage: bool = False                 # sync after each stage to stop at the first NaN
    timing: bool = True


@dataclass
class LoopState:
    """The per-run buffers of the loop (allocated once in `prepare`)."""
    latents: torch.Tensor        # [1,F,4,s,s] fp32
    latent_cfg: torch.Tensor     # [2,F,4,s,s] VAE condition latent, zeros for the uncond half
    time_ids: torch.Tensor       # [2,3]
    features: list               # adapter features for the next UNet call (backend-specific)
    gaussians: torch.Tensor      # [1,N,14] persistent buffer (docs/architecture.md#gaussian-buffer)
    decoded: torch.Tensor        # [F,3,S,S] the last decoded x0
    timer: StageTimer
    guard: FiniteGuard


@dataclass
class RunResult:
    views: torch.Tensor          # [F,3,S,S] in [0,1]
    gaussians: torch.Tensor      # [N,14], the last step's (docs/architecture.md#gaussian-buffer)
    timings: TimingReport


def write_into(buffers, values) -> None:
    """Copy `values` into `buffers`, tensor by tensor (the same nesting of lists/dicts): loop state
    keeps its addresses from step to step, as a captured CUDA graph needs."""
    for dst, src in zip(tree_leaves(buffers), tree_leaves(values), strict=True):
        dst.copy_(src)


class RecursivePipeline:
    def __init__(self, nets, device, options: PipelineOptions | None = None):
        self.nets = nets
        self.preset = nets.preset
        self.device = torch.device(device)
        self.options = options or PipelineOptions()
        self.schedule = EDMEulerSchedule.create(self.options.steps, nets.schedule_config, self.device)
        views = self.preset.num_views
        self.latent_unscale = 1 / self.preset.vae["scaling_factor"]   # a Python float, as the reference
        lo, hi = self.options.guidance
        self.guidance = torch.linspace(lo, hi, views, device=self.device).view(1, views, 1, 1, 1)
        # The reference's CCM matmul runs under autocast (fp16 on CUDA: Q5); follow the backend.
        self.ccm_dtype = ccm_matmul_dtype(nets.autocast_dtype)
        self.cameras = load_feedback_cameras().to(self.device)
        size = self.preset.image_size
        # The renderer owns its cameras (inverted here, once: that syncs on CUDA), its overlap
        # capacity, its stage timing and its checks between steps and after the run.
        self.renderer = create_feedback_renderer(
            self.options.renderer,
            prepare_render_cameras(self.cameras.c2w, self.cameras.fov_deg, self.cameras.intrinsics,
                                   size, size, self.device),
            matmul_dtype=self.ccm_dtype, overlap_tiles=self.options.overlap_tiles_per_gaussian,
            dtype=getattr(nets, "feedback_dtype", torch.float32))   # the adapters' input dtype
        # A backend may run the steps its own way (graph: replayed CUDA graphs of `step`; its
        # runner's report() says what it captured and replayed).
        make_runner = getattr(nets, "steps_runner", None)
        self.steps_runner = make_runner(self) if make_runner is not None else self.run_steps_eagerly

    # ---------------------------------------------------------------- once per image
    def prepare(self, image: torch.Tensor, seed: int) -> "LoopState":
        """Once-per-image work (CLIP, VAE condition latent, hoisted constants) and the static
        buffers of the loop. image: [1,3,S,S] in [-1,1] (preprocessed)."""
        opts, nets, preset = self.options, self.nets, self.preset
        views, s, size = preset.num_views, preset.latent_size, preset.image_size
        timer = StageTimer(self.device, enabled=opts.timing)
        guard = FiniteGuard(opts.steps, self.device, eager=opts.check_every_stage)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        image = image.to(self.device, torch.float32)

        # RNG order as the reference (docs/inference.md#seeding): condition noise first, then the
        # initial latents.
        noise = torch.randn(image.shape, generator=generator, device=self.device)
        with timer.stage("image_encoder"):
            embedding = nets.encode_image(image)
            guard.check("image_encoder", None, embedding)
        with timer.stage("vae_encoder"):
            cond_latent = nets.encode_latent(image + opts.noise_aug_strength * noise)
            guard.check("vae_encoder", None, cond_latent)
        clip_cfg = torch.cat([torch.zeros_like(embedding), embedding])
        cond_latent = cond_latent.unsqueeze(1).repeat(1, views, 1, 1, 1)
        nets.set_conditioning(clip_cfg, self.cameras)
        latents = torch.randn((1, views, 4, s, s), generator=generator, device=self.device)

        # Q6: step 0 is conditioned on all-zero feedback images (zero in the unshuffled layout too).
        zeros = torch.zeros((views, FEEDBACK_CHANNELS, s, s), device=self.device)
        self.renderer.start_run()
        return LoopState(
            latents=latents * self.schedule.init_noise_sigma,
            latent_cfg=torch.cat([torch.zeros_like(cond_latent), cond_latent]),
            time_ids=added_time_ids(opts.fps, opts.motion_bucket_id, opts.noise_aug_strength,
                                    batch=2).to(self.device),
            features=nets.adapters(zeros, zeros),
            gaussians=torch.empty((1, preset.num_gaussians, 14), device=self.device),
            decoded=torch.empty((views, 3, size, size), device=self.device),
            timer=timer, guard=guard,
        )

    # ---------------------------------------------------------------- the loop
    def step(self, state: "LoopState", i: int) -> None:
        """Denoising step i: static shapes, table lookups on the device, no host reads."""
        nets, sched, timer, guard = self.nets, self.schedule, state.timer, state.guard
        with timer.stage("step", i):
            t = sched.timesteps[i]
            with timer.stage("unet", i):
                model_in = sched.scale_input(torch.cat([state.latents, state.latents]), i)
                model_in = torch.cat([model_in, state.latent_cfg], dim=2)
                out = nets.unet(model_in, t, state.time_ids, state.features)
                guard.check("unet", i, out)
            with timer.stage("guidance+scheduler", i):
                uncond, cond = out.chunk(2)
                velocity = uncond + self.guidance * (cond - uncond)   # (c - u) in out's dtype: Q17
                latents_next, x0 = sched.step(velocity, state.latents, i)
                guard.check("guidance+scheduler", i, latents_next)
            with timer.stage("vae_decode", i):
                state.decoded.copy_(nets.vae_decode(x0.flatten(0, 1) * self.latent_unscale))
                guard.check("vae_decode", i, state.decoded)
            with timer.stage("lgm", i):
                state.gaussians.copy_(nets.lgm(state.decoded.unsqueeze(0), t))
                guard.check("lgm", i, state.gaussians)
            if i + 1 < self.options.steps:   # the last step's feedback would feed no further step
                rgb, ccm = self._feedback(state.gaussians, timer, guard, i)
                with timer.stage("adapters", i):
                    write_into(state.features, nets.adapters(rgb, ccm))
            state.latents.copy_(latents_next)

    def finish(self, state: "LoopState") -> RunResult:
        """Final views (Q12: the last step's decode unless exact_final_decode) and the checks
        deferred from the loop (the one host sync of the run)."""
        decoded = state.decoded
        if self.options.exact_final_decode:
            with state.timer.stage("final_decode"):
                decoded = self.nets.vae_decode(state.latents.flatten(0, 1) * self.latent_unscale)
                state.guard.check("final_decode", None, decoded)
        state.guard.raise_if_any()
        try:
            self.renderer.check()   # a render left incomplete (not redone by `run`)
        except FeedbackRenderError as exc:
            raise RunError(str(exc)) from None
        views = (decoded / 2 + 0.5).clamp(0, 1)
        # A copy: the Gaussian buffer is the loop's, which a captured loop rewrites for the next image.
        return RunResult(views=views, gaussians=state.gaussians[0].clone(), timings=state.timer.report())

    def run(self, image: torch.Tensor, seed: int, progress=None) -> RunResult:
        """prepare → steps → finish. progress: optional callable(step_index) after each step."""
        state = self.prepare(image, seed)
        self.steps_runner(state, progress)
        return self.finish(state)

    def run_steps_eagerly(self, state: "LoopState", progress=None) -> None:
        """Every step in turn from Python (the default; the graph backend captures these)."""
        for i in range(self.options.steps):
            self.step(state, i)
            if self.renderer.after_step(i):   # between steps: may read one device value
                self._redo_feedback(state, i)
            if progress is not None:
                progress(i)

    def _feedback(self, gaussians, timer, guard, step):
        """The F feedback views as the adapters' unshuffled RGB and CCM (the renderer times its
        own stages: `render`, and `feedback` where the CCM is a separate pass)."""
        rgb, ccm = self.renderer(gaussians, timer, step)
        guard.check("feedback", step, rgb, ccm)
        return rgb, ccm

    def _redo_feedback(self, state: "LoopState", step: int) -> None:
        """Step `step`'s feedback again from the Gaussians still in the persistent buffer, after
        the renderer fixed an incomplete render (a grown overlap buffer). Untimed: the step's
        stage times stay those of its first attempt; the renderer's report records the redo."""
        rgb, ccm = self._feedback(state.gaussians, None, state.guard, step)
        write_into(state.features, self.nets.adapters(rgb, ccm))

    # ---------------------------------------------------------------- outputs
    def render_orbit(self, gaussians: torch.Tensor, num_frames: int, elevation_deg: float = 0.0,
                     chunk: int = 8) -> torch.Tensor:
        """RGB frames [T,3,S,S] in [0,1] of an orbit around the Gaussians (docs/inference.md#orbit-video)."""
        size = self.preset.image_size
        c2w = orbit_c2w(num_frames, radius=1.5, elevation_deg=elevation_deg).to(self.device)
        fov = torch.full((num_frames,), ORBIT_FOV_DEG, device=self.device)
        w2c, K = camera_from_c2w(c2w, fov, size)
        frames = []
        for start in range(0, num_frames, chunk):
            out = render_gaussians(gaussians.unsqueeze(0), w2c[start:start + chunk],
                                   K[start:start + chunk], size, size)
            frames.append(out.rgb[0])
        return torch.cat(frames).clamp(0, 1)
