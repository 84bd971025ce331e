"""Timing one backend: whole pipeline runs, warm-up discarded, stages pooled over the measured runs.

Each run is what a user's call costs: preprocess the image file (CPU), `pipeline.run` (the
pipeline's own StageTimer: CUDA events and NVTX ranges on GPU, perf_counter on CPU), then copy
the views and Gaussians to the host ("outputs"). The per-step stages of the measured runs are
pooled, so a stage's n is repeats × the steps that run it (render, feedback and adapters do not
run in the last step: it feeds no further step).
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ort3d.runtime.preprocess import preprocess
from ort3d.runtime.timing import ONCE_STAGES, STEP_STAGES, TimingReport, summarize_ms


@dataclass
class Measurement:
    steps: list[dict[str, float]] = field(default_factory=list)   # pooled per-step stage ms
    once: dict[str, list[float]] = field(default_factory=dict)     # stage -> ms per run
    end_to_end: list[float] = field(default_factory=list)          # ms per run
    views: torch.Tensor | None = None          # last measured run, on the host
    gaussians: torch.Tensor | None = None
    peak_memory: dict | None = None

    def add_once(self, name: str, ms: float) -> None:
        self.once.setdefault(name, []).append(ms)


def expected_n(stage: str, steps: int, repeats: int) -> int:
    """How many samples a stage has (the rule documented in bench/README.md)."""
    if stage in ("render", "feedback", "adapters"):
        return repeats * (steps - 1)
    if stage in STEP_STAGES or stage == "step":
        return repeats * steps
    return repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _wall(device, sink: list[float]):
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    sink.append((time.perf_counter() - start) * 1e3)


def one_run(pipeline, image_path: Path, seed: int, orbit_frames: int):
    """(RunResult, host views, host gaussians, {once stage: ms}, end-to-end ms)."""
    device, size = pipeline.device, pipeline.preset.image_size
    once: dict[str, list[float]] = {"preprocess": [], "outputs": [], "orbit_render": []}
    total: list[float] = []
    with _wall(device, total), torch.inference_mode():
        with _wall(device, once["preprocess"]):
            image = preprocess(image_path, size).image
        result = pipeline.run(image, seed)
        if orbit_frames:
            with _wall(device, once["orbit_render"]):
                pipeline.render_orbit(result.gaussians, orbit_frames)
        with _wall(device, once["outputs"]):
            views, gaussians = result.views.float().cpu(), result.gaussians.float().cpu()
    times = {k: v[0] for k, v in once.items() if v}
    return result, views, gaussians, times, total[0]


def measure(pipeline, image_path: Path, seed: int, warmup: int, repeats: int,
            orbit_frames: int = 0) -> Measurement:
    device = pipeline.device
    resident = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = int(torch.cuda.memory_allocated(device))
    m = Measurement()
    for index in range(warmup + repeats):
        result, views, gaussians, once, total = one_run(pipeline, image_path, seed, orbit_frames)
        if index < warmup:
            continue
        report: TimingReport = result.timings
        m.steps.extend(report.steps)
        for name, ms in {**report.once, **once}.items():
            m.add_once(name, ms)
        m.end_to_end.append(total)
        m.views, m.gaussians = views, gaussians
    m.peak_memory = peak_memory(device, resident)
    return m


def peak_memory(device: torch.device, resident_before: int | None = None) -> dict:
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)),
                "kind": "cuda_max_memory_allocated", "resident_before_bytes": resident_before,
                "note": "torch allocator peak during this backend's runs, including everything "
                        "resident (the eager models stay loaded as the reference)"}
    # ru_maxrss is in KiB on Linux; it is the whole process's peak and cannot be reset.
    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "kind": "process_max_rss", "resident_before_bytes": None,
            "note": "peak resident memory of the whole bench process so far (not per backend)"}


# ------------------------------------------------------------------------ statistics
def step_summary(m: Measurement) -> dict[str, dict]:
    """STEP_STAGES in the loop's order, then "step" (the whole step)."""
    out = {}
    for name in (*STEP_STAGES, "step"):
        values = [s[name] for s in m.steps if name in s]
        if values:
            out[name] = summarize_ms(values)
    return out


def once_summary(m: Measurement) -> dict[str, dict]:
    names = [n for n in ONCE_STAGES if n in m.once] + sorted(set(m.once) - set(ONCE_STAGES))
    return {name: summarize_ms(m.once[name]) for name in names}


# ------------------------------------------------------------------------ quality
def psnr_db(views: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR of images in [0,1]; None when they are identical (infinite PSNR)."""
    mse = torch.mean((views.double() - reference.double()) ** 2).item()
    return None if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def relative_error(values: torch.Tensor, reference: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ (the parity measure of docs/precision.md#parity-tolerances)."""
    diff = torch.linalg.vector_norm((values.double() - reference.double()).flatten())
    return (diff / torch.linalg.vector_norm(reference.double().flatten()).clamp_min(1e-30)).item()


def quality(m: Measurement, reference: Measurement) -> dict:
    psnr = psnr_db(m.views, reference.views)
    finite = bool(torch.isfinite(m.views).all() and torch.isfinite(m.gaussians).all())
    return {"reference": "eager", "views_psnr_db": psnr, "views_identical": psnr is None,
            "gaussians_rel_error": relative_error(m.gaussians, reference.gaussians),
            "finite": finite}


# ------------------------------------------------------------------------ FLOPs and profile
def count_flops(nets, pipeline) -> dict[str, float]:
    """FLOPs of one `unet` call (CFG batch) and one `vae_decode` (F frames), counted by
    torch.utils.flop_counter on these networks with the loop's shapes (networks.py docstring).
    Needs the conditioning of a previous run (set_conditioning) and a backend made of torch ops."""
    from torch.utils.flop_counter import FlopCounterMode

    preset, device = pipeline.preset, pipeline.device
    views, s = preset.num_views, preset.latent_size
    counts = {}
    with torch.inference_mode():
        zeros = torch.zeros((views, 192, s, s), device=device)   # the unshuffled feedback layout
        features = nets.adapters(zeros, zeros)
        sample = torch.zeros((2, views, 8, s, s), device=device)
        time_ids = torch.zeros((2, 3), device=device)
        t = pipeline.schedule.timesteps[0]
        with FlopCounterMode(display=False) as counter:
            nets.unet(sample, t, time_ids, features)
        counts["unet"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            nets.vae_decode(torch.zeros((views, 4, s, s), device=device))
        counts["vae_decode"] = float(counter.get_total_flops())
    return counts


def profile_one_step(pipeline, image_path: Path, seed: int, path: Path) -> int:
    """Chrome trace of one step (step 1, or 0 with a single step) of an extra, untimed run,
    driven through the pipeline's prepare/step API. Returns the step profiled."""
    from torch.profiler import ProfilerActivity, profile

    device = pipeline.device
    target = 1 if pipeline.options.steps > 1 else 0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        state = pipeline.prepare(preprocess(image_path, pipeline.preset.image_size).image, seed)
        for i in range(target):
            pipeline.step(state, i)
        _sync(device)
        with profile(activities=activities) as prof:
            pipeline.step(state, target)
            _sync(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return target
