"""The `graph` backend (runtime/backend_graph.py): eager's modules in their compute dtype, and the
loop shaped for CUDA-graph capture: no host reads in a step, loop state at fixed addresses."""

import functools
import os

import pytest
import torch
from torch.utils._pytree import tree_leaves

from host_sync import NoHostReads, UncheckedLaunch
from ort3d.kernels import triton_binning, triton_composite, triton_project
from ort3d.models.checkpoint import build_models
from ort3d.models.presets import TINY
from ort3d.runtime.backend_graph import (CAPTURE_STAGE, LOOP_TENSORS, CudaGraphSteps,
                                         GraphNetworks, GraphRendererError, graph_dtype)
from ort3d.runtime.networks import BACKENDS, default_renderer, make_networks
from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def models():
    return build_models(TINY)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, TINY.image_size, TINY.image_size,
                      generator=torch.Generator().manual_seed(0)) * 2 - 1


def relative(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_graph_is_a_registered_backend_that_renders_with_triton_on_cuda():
    assert "graph" in BACKENDS and BACKENDS["graph"].unavailable(None) is None
    assert default_renderer("graph", "cuda") == "triton"     # no host reads: capturable
    assert default_renderer("graph", "cpu") == "torch"       # no capture on the CPU
    assert default_renderer("eager", "cuda") == "torch"


def test_graph_equals_eager_in_fp32_after_three_steps(models, image):
    results = {}
    for backend in ("eager", "graph"):
        nets = make_networks(backend, TINY, "cpu", models=models, dtype="fp32")
        results[backend] = RecursivePipeline(nets, "cpu", PipelineOptions(steps=3)).run(image, seed=1)
    # Same modules, same fp32 ops, same order: the bar is the 1e-6 (measured: bit-equal).
    assert relative(results["graph"].views, results["eager"].views) <= 1e-6
    assert relative(results["graph"].gaussians, results["eager"].gaussians) <= 1e-6


def test_the_compute_dtype_per_policy():
    assert graph_dtype("auto", "cuda") == F16 and graph_dtype("fp16", "cuda") == F16
    assert graph_dtype("bf16", "cuda") == BF16 and graph_dtype("fp32", "cuda") == F32
    assert graph_dtype("auto", "cpu") == F32 and graph_dtype("fp16", "cpu") == F16
    with pytest.raises(ValueError, match="dtype must be one of"):
        graph_dtype("int8", "cpu")


def test_fp16_weights_are_held_not_recast_and_shared_models_stay_as_they_were(models):
    nets = make_networks("graph", TINY, "cpu", models=models, dtype="fp16")
    dtypes = lambda module: {p.dtype for p in module.parameters()}   # noqa: E731
    assert dtypes(nets.models.mv) == {F16} and dtypes(nets.models.lgm) == {F16}
    assert dtypes(nets.models.vae) == {BF16}                         # force_upcast: never fp16
    assert nets.models.image_encoder is models.image_encoder         # once per image: as built
    assert nets.autocast_dtype == F16 and nets.feedback_dtype == F16  # fp16 CCM (Q5), fp16 maps
    for module in (models.mv, models.lgm, models.vae):               # the eager row's weights
        assert dtypes(module) == {F32}
    from diffusers.models.attention_processor import AttnProcessor2_0
    processors = {type(m.processor) for m in nets.models.mv.modules() if hasattr(m, "processor")}
    assert processors == {AttnProcessor2_0}                           # attention through SDPA


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reduced_precision_graph_runs_and_stays_near_fp32(models, image, dtype):
    reference = RecursivePipeline(make_networks("eager", TINY, "cpu", models=models, dtype="fp32"),
                                  "cpu", PipelineOptions(steps=2)).run(image, seed=2)
    nets = make_networks("graph", TINY, "cpu", models=models, dtype=dtype)
    result = RecursivePipeline(nets, "cpu", PipelineOptions(steps=2)).run(image, seed=2)
    mse = ((result.views - reference.views) ** 2).mean().item()
    psnr = 10 * torch.log10(torch.tensor(1.0 / mse)).item()
    # Views in [0,1] after 2 steps of random tiny networks whose every op rounds to 8 (bf16) or
    # 11 (fp16) significant bits: well above noise, far below the fp32 drift (~97 dB at 3 steps).
    assert psnr > 25, psnr


def _pipeline_with_state(models, image, steps, renderer="torch"):
    nets = GraphNetworks(models, "cpu", F32, own_models=False)
    pipe = RecursivePipeline(nets, "cpu", PipelineOptions(steps=steps, renderer=renderer))
    return nets, pipe, pipe.prepare(image, seed=0)


def _addresses(state, nets) -> list[int]:
    tensors = [getattr(state, name) for name in LOOP_TENSORS]
    tensors += [state.guard.flags, nets._plucker, nets._context.values, nets._lgm_rays]
    return [t.data_ptr() for t in tree_leaves(tensors)]


def test_every_loop_buffer_keeps_its_address_across_steps_and_images(models, image):
    nets, pipe, state = _pipeline_with_state(models, image, steps=3)
    before = _addresses(state, nets)
    for i in range(3):
        pipe.step(state, i)
        assert _addresses(state, nets) == before, f"a loop buffer moved in step {i}"
    # The next image's per-image constants land in the same buffers (what replayed graphs read).
    other = torch.flip(image, dims=[-1])
    nets.set_conditioning(torch.cat([torch.zeros(1, 1, 32), nets.encode_image(other)]), pipe.cameras)
    assert _addresses(state, nets) == before


def test_a_step_reads_nothing_back_to_the_host(models, image, monkeypatch):
    """Every op the step dispatches is recorded: none may read a device value on the host. The
    Triton renderer's host code is checked too; its kernels run unchecked (the CPU interpreter
    copies tensors to numpy, a GPU launch does not), and compositing is launched but not run (the
    interpreter takes minutes on 8 views; tests/kernels/test_triton_no_sync.py runs it)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the CPU variant runs Triton's interpreter (TRITON_INTERPRET=1)")
    nets, pipe, state = _pipeline_with_state(models, image, steps=2, renderer="triton")
    mode = NoHostReads()
    composite_launches = []

    class CompositeLaunched:   # records the launch; the step's ops around it are still checked
        def __getitem__(self, grid):
            return lambda *args, **kwargs: composite_launches.append(grid)

    for module, name in ((triton_project, "_project_kernel"), (triton_binning, "_emit_kernel")):
        monkeypatch.setattr(module, name, UncheckedLaunch(getattr(module, name), mode))
    monkeypatch.setattr(triton_composite, "_composite_kernel", CompositeLaunched())
    with mode:
        with pytest.raises(AssertionError, match="host read"):
            torch.ones(2).nonzero()                                   # the check is live
        for i in range(2):
            pipe.step(state, i)
    assert len(composite_launches) == 1                               # step 0's feedback render
    assert {"aten::convolution", "aten::_scaled_dot_product_flash_attention_for_cpu"} & set(mode.ops)


def test_the_graph_backend_refuses_a_renderer_it_cannot_capture_on_cuda(models, monkeypatch):
    nets = GraphNetworks(models, "cpu", F32, own_models=False)
    monkeypatch.setattr(nets, "device", torch.device("cuda"))
    pipe = RecursivePipeline.__new__(RecursivePipeline)   # only its options are read
    pipe.options = PipelineOptions(renderer="torch")
    with pytest.raises(GraphRendererError, match="--renderer triton"):
        nets.steps_runner(pipe)


class StepReplay:
    """A captured graph's stand-in on the CPU: replay() runs the captured step again on the state
    it was captured with, whose tensors are the loop's buffers (as a graph's addresses are)."""

    def __init__(self, pipe, state, step):
        self.replay = functools.partial(pipe.step, state, step)


class StepsReplayedOnCpu(CudaGraphSteps):
    """The CUDA runner with its warm-up run in place and Python replays for graphs: what it does
    with the buffers (a new image's inputs, a restart after an overflow) runs on the CPU."""

    def _warm_up(self, state, progress):
        self.pipeline.run_steps_eagerly(state, progress)

    def _capture(self, state):
        return [(StepReplay(self.pipeline, state, i), []) for i in range(self.pipeline.options.steps)]


class OverflowOnce:
    """An overlap budget whose first read after a replay reports more overlaps than it holds."""

    def __init__(self):
        self.peak, self.capacity, self.reads = torch.zeros((), dtype=torch.int64), 1, 0

    def peak_needed(self) -> int:
        self.reads += 1
        return 2 if self.reads == 1 else 0


def test_a_replayed_image_reads_every_input_from_the_loop_buffers(models, image):
    nets = GraphNetworks(models, "cpu", F32, own_models=False)
    options = PipelineOptions(steps=3)
    pipe = RecursivePipeline(nets, "cpu", options)
    runner = pipe.steps_runner = StepsReplayedOnCpu(pipe)
    pipe.run(image, seed=3)                                   # eager run, then "capture"
    other = torch.flip(image, dims=[-1])
    replayed = pipe.run(other, seed=4)
    assert runner.report() | {"capture_s": None} == {
        "graphs": 3, "capture_s": None, "captures": 1, "replayed_images": 1}
    fresh = RecursivePipeline(nets, "cpu", options).run(other, seed=4)
    # A stale buffer (image A's latents, condition latent, constants or features) changes the
    # views entirely; the same fp32 ops in the same order give the same bits.
    assert torch.equal(replayed.views, fresh.views)
    assert torch.equal(replayed.gaussians, fresh.gaussians)

    runner.budget = OverflowOnce()                            # the next replay overflows once
    restarted = pipe.run(other, seed=4)
    assert runner.captures == 2 and runner.replayed_images == 1
    assert torch.equal(restarted.views, fresh.views)          # started again from its inputs
    assert torch.equal(pipe.run(other, seed=4).views, fresh.views) and runner.replayed_images == 2


# ---------------------------------------------------------------------------------------- CUDA

cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (CUDA-graph capture and replay)")


@cuda_only
def test_a_replayed_image_equals_its_eager_run_on_cuda(image):
    """Image A is run eagerly and captured; image B replays the graphs. B again on a fresh
    pipeline (eager steps) must give the same views: the graphs hold the same kernels."""
    nets = make_networks("graph", TINY, "cuda", dtype="auto")
    options = PipelineOptions(steps=3, renderer="triton")
    pipe = RecursivePipeline(nets, "cuda", options)
    other = torch.flip(image, dims=[-1])
    first = pipe.run(image, seed=3)
    replayed = pipe.run(other, seed=4)
    runner = pipe.steps_runner
    assert runner.report()["captures"] == 1 and runner.report()["replayed_images"] == 1
    assert first.timings.once[CAPTURE_STAGE] > 0 and CAPTURE_STAGE not in replayed.timings.once
    fresh = RecursivePipeline(nets, "cuda", options).run(other, seed=4)
    # The same kernels on the same inputs. The bar leaves room for a nondeterministic kernel
    # amplified by the loop (eager vs itself drifts ~1e-5 over 3 steps on CPU threads), and still
    # fails at once if a graph read a stale buffer (image A's constants or latents: ~1e-1).
    assert relative(replayed.views, fresh.views) <= 1e-3
    assert relative(replayed.gaussians, fresh.gaussians) <= 1e-3
    assert set(replayed.timings.steps[0]) >= {"unet", "vae_decode", "lgm", "render", "adapters"}


@cuda_only
def test_replay_does_not_sync_on_cuda(image):
    nets = make_networks("graph", TINY, "cuda", dtype="auto")
    pipe = RecursivePipeline(nets, "cuda", PipelineOptions(steps=3, renderer="triton", timing=False))
    pipe.run(image, seed=0)                                  # eager run + capture
    runner = pipe.steps_runner
    state = pipe.prepare(image, seed=1)
    runner._adopt(state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with NoHostReads():
            runner._replay(state, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(state.decoded).all()
