"""`python bench/latency.py`: per-step, per-stage latency of the recursive loop for every backend
available here, side by side with the eager reference, with the quality of each row against it.

    python bench/latency.py --preset tiny --steps 3 --warmup 1 --repeats 2 --json out.json
    python bench/latency.py --preset full --dtype fp16 --steps 3 --backends eager,trt --artefacts DIR

A row is a backend of `ort3d.runtime.networks.BACKENDS` (row name = backend name, reference
renderer) plus `eager-triton` (the eager networks with the Triton feedback renderer); a backend
added to BACKENDS becomes a row with no change here. Without --checkpoint/--svd the networks get
deterministic random weights at the preset's real architecture (timing does not depend on weight
values; the renderer's does, see bench/README.md). Each row runs `--warmup` whole pipeline runs
(discarded), then `--repeats` measured ones; stages are pooled over the measured runs (the n rule
is in bench/README.md). Rows that cannot run here are reported as skipped with the reason; one
that fails is reported with its error and the others still run. Bad settings: one line on
stderr, exit code 2; exit code 1 when the eager reference itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ort3d.export.atomic import atomic_path
from ort3d.export.manifest import MANIFEST_NAME
from ort3d.kernels.render_constants import FEEDBACK_CHANNELS
from ort3d.models.checkpoint import build_models
from ort3d.models.scheduler import MIN_STEPS
from ort3d.runtime.backend_graph import CAPTURE_STAGE
from ort3d.runtime.cli_common import (EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, UsageError,
                                      add_device_arguments, add_temporal_context_argument,
                                      add_weight_arguments, default_preset, exit_on_interrupt,
                                      fail, input_error_types, resolve_device)
from ort3d.runtime.networks import (BACKENDS, REFERENCE_BACKEND, default_renderer, has_module,
                                    make_networks, precision_policy, unavailable_reason)
from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline
from ort3d.runtime.preprocess import preprocess
from ort3d.runtime.timing import ONCE_STAGES, STEP_STAGES, TimingReport, summarize_ms

import latency_report   # bench/latency_report.py: run as a script, bench/ is sys.path[0]

PROG = "latency.py"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "examples" / "coffee.png"
BUILD_HINT = "ort3d-build --preset {preset} --out DIR"
TRITON_ROW = "eager-triton"
PROFILED_STEP = 1       # the second step: step 0 pays the first-call costs


# ------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class Row:
    """What one column of the table times: a runtime.networks backend with a feedback renderer."""

    name: str
    backend: str       # a runtime.networks.BACKENDS name
    renderer: str      # PipelineOptions.renderer


def bench_rows(device="cpu") -> dict[str, Row]:
    """Every BACKENDS entry with its default renderer on `device`, and eager-triton right after eager."""
    rows = {}
    for name in BACKENDS:
        rows[name] = Row(name, name, default_renderer(name, device))
        if name == REFERENCE_BACKEND:
            rows[TRITON_ROW] = Row(TRITON_ROW, name, "triton")
    return rows


def renderer_unavailable(renderer: str, device: torch.device) -> str | None:
    if renderer != "triton":
        return None
    if device.type != "cuda":
        return "the Triton renderer is timed on CUDA only (on CPU Triton runs in its interpreter)"
    if not has_module("triton"):
        return "triton is not installed"
    return None


@dataclass
class Bench:
    """What every row shares: the settings, the device and the eager models, built once."""

    args: argparse.Namespace
    device: torch.device
    models: object                 # ort3d.models.checkpoint.Models
    flops: dict = field(default_factory=dict)   # the reference's FLOP counts, or "error"

    def network_settings(self) -> dict:
        return {"models": self.models, "engines": self.args.artefacts, "dtype": self.args.dtype,
                "temporal_context": self.args.temporal_context}

    def row_unavailable(self, row: Row) -> str | None:
        return (unavailable_reason(row.backend, self.models.preset, self.device, **self.network_settings())
                or renderer_unavailable(row.renderer, self.device))


def _engine_log(line: str) -> None:
    """Progress of an exported backend building its artefacts into the user cache (no --artefacts)."""
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ settings
def build_parser() -> argparse.ArgumentParser:
    rows = ",".join(bench_rows())
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_weight_arguments(p)
    p.add_argument("--backends", default=REFERENCE_BACKEND,
                   help=f"comma-separated, from {rows}; eager (the reference) always runs first")
    p.add_argument("--artefacts", type=Path,
                   help=f"artefact folder of the exported backends (`{BUILD_HINT.format(preset='P')}`, "
                        "same weights); "
                        "without it they build theirs once into the user cache, saying so on stderr")
    p.add_argument("--steps", type=int, default=25, help="denoising steps per run (default 25)")
    p.add_argument("--warmup", type=int, default=1, help="discarded whole runs per backend (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="measured whole runs per backend (default 3)")
    add_device_arguments(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=42, help="noise seed, the same for every backend")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="input image (default: the example)")
    p.add_argument("--orbit-frames", type=int, default=0,
                   help="also time rendering an orbit video of this many frames (default 0: no)")
    p.add_argument("--exact-final-decode", action="store_true", help="decode the final latents again (Q12)")
    add_temporal_context_argument(p)
    p.add_argument("--json", type=Path, help="write the results as JSON (bench/schema/latency.schema.json)")
    p.add_argument("--csv", type=Path, help="upsert one row per backend, keyed by (preset, backend, dtype, device)")
    p.add_argument("--plot", type=Path, help="write a PNG bar chart of the per-stage medians")
    p.add_argument("--profile", type=Path, help="torch.profiler chrome trace of one step per backend "
                   "(the eager one at PATH, others at PATH with -<backend> before the suffix)")
    return p


def check_args(args, device="cpu") -> list[Row]:
    """Validates the settings (UsageError); returns the rows in run order, eager first."""
    for name, low in (("steps", MIN_STEPS), ("warmup", 0), ("repeats", 1), ("orbit_frames", 0),
                      ("threads", 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {low} (got {getattr(args, name)})")
    rows = bench_rows(device)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise UsageError(f"--backends: unknown backend {unknown[0]!r}; choose from {','.join(rows)}")
    if not args.image.is_file():
        raise UsageError(f"--image: {args.image}: file not found")
    if bool(args.checkpoint) != bool(args.svd):
        raise UsageError("--checkpoint and --svd go together (real weights need both)")
    if args.artefacts is not None and not (args.artefacts / MANIFEST_NAME).is_file():
        hint = BUILD_HINT.format(preset=default_preset(args).name)
        raise UsageError(f"--artefacts: no {MANIFEST_NAME} in {args.artefacts}; build it with `{hint}`")
    for option in ("json", "csv", "plot", "profile"):   # fail now, not after minutes of timing
        path = getattr(args, option)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UsageError(f"--{option}: cannot create {path.parent}: {error.strerror}") from None
    return [rows[n] for n in dict.fromkeys([REFERENCE_BACKEND, *names])]


def check_device(name: str) -> torch.device:
    """`ort3d-run`'s --device resolution, limited to the devices the timers support."""
    device = resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


# ------------------------------------------------------------------------ measurement
# Each run is what a user's call costs: preprocess the image file (CPU), `pipeline.run` (the
# pipeline's own StageTimer: CUDA events and NVTX ranges on GPU, perf_counter on CPU), then copy
# the views and Gaussians to the host ("outputs"). The per-step stages of the measured runs are
# pooled, so a stage's n is repeats × the steps that run it.
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
    """How many samples a stage has (the rule documented in bench/README.md): render, feedback
    and adapters do not run in the last step, whose feedback would feed no further step."""
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
            if CAPTURE_STAGE in result.timings.once:   # paid once per pipeline, in its first run
                m.add_once(CAPTURE_STAGE, result.timings.once[CAPTURE_STAGE])
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
    return {"reference": REFERENCE_BACKEND, "views_psnr_db": psnr, "views_identical": psnr is None,
            "gaussians_rel_error": relative_error(m.gaussians, reference.gaussians),
            "finite": finite}


def count_flops(nets, pipeline) -> dict[str, float]:
    """FLOPs of one `unet` call (CFG batch) and one `vae_decode` (F frames), counted by
    torch.utils.flop_counter on these networks with the loop's shapes (runtime/networks.py).
    Needs the conditioning of a previous run (set_conditioning) and a backend made of torch ops."""
    from torch.utils.flop_counter import FlopCounterMode

    preset, device = pipeline.preset, pipeline.device
    views, s = preset.num_views, preset.latent_size
    counts = {}
    with torch.inference_mode():
        zeros = torch.zeros((views, FEEDBACK_CHANNELS, s, s), device=device)
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
    """Chrome trace of step PROFILED_STEP of an extra, untimed run, driven through the pipeline's
    prepare/step API. Returns the step profiled."""
    from torch.profiler import ProfilerActivity, profile

    device = pipeline.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        state = pipeline.prepare(preprocess(image_path, pipeline.preset.image_size).image, seed)
        for i in range(PROFILED_STEP):
            pipeline.step(state, i)
        _sync(device)
        with profile(activities=activities) as prof:
            pipeline.step(state, PROFILED_STEP)
            _sync(device)
    with atomic_path(path) as tmp:
        prof.export_chrome_trace(str(tmp))
    return PROFILED_STEP


# ------------------------------------------------------------------------ one row, all rows
def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _profile_path(path: Path, row: str) -> Path:
    return path if row == REFERENCE_BACKEND else path.with_name(f"{path.stem}-{row}{path.suffix}")


def run_row(row: Row, bench: Bench) -> dict:
    """Times one row; returns its JSON entry (status ok, with the raw measurement, or failed)."""
    args, device = bench.args, bench.device
    entry = {"name": row.name, "status": "failed", "reason": None, "renderer": row.renderer}
    nets = pipeline = None
    try:
        started = time.perf_counter()
        nets = make_networks(row.backend, bench.models.preset, device, **bench.network_settings(),
                             log=_engine_log)
        options = PipelineOptions(steps=args.steps, renderer=row.renderer,
                                  exact_final_decode=args.exact_final_decode)
        pipeline = RecursivePipeline(nets, device, options)
        setup_s = time.perf_counter() - started
        m = measure(pipeline, args.image, args.seed, args.warmup, args.repeats, args.orbit_frames)
        if row.name == REFERENCE_BACKEND:
            try:
                bench.flops.update(count_flops(nets, pipeline))
            except Exception as error:   # noqa: BLE001 - counting is a nicety; say why it is missing
                bench.flops["error"] = _first_line(error)
        profile = None
        if args.profile:
            path = _profile_path(args.profile, row.name)
            profile = {"path": str(path), "step": profile_one_step(pipeline, args.image, args.seed, path)}
        entry.update(status="ok", setup_s=setup_s, measurement=m)
        if profile:
            entry["profile"] = profile
    except Exception as error:   # noqa: BLE001 - one row failing must not lose the others
        traceback.print_exc(file=sys.stderr)
        entry["reason"] = _first_line(error)
    finally:
        del nets, pipeline
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return entry


def finish_entries(entries: list[dict], flops: dict, peak: float | None) -> None:
    """Turns measurements into the JSON fields: stage statistics, speed-ups, TFLOP/s, quality."""
    measured = [(e, e.pop("measurement")) for e in entries if "measurement" in e]
    for e, m in measured:
        e["stages"] = step_summary(m)
        e["once"] = once_summary(m)
        e["end_to_end"] = summarize_ms(m.end_to_end)
        e["peak_memory"] = m.peak_memory
        parts = sum(v["median_ms"] for k, v in e["stages"].items() if k != "step")
        e["step_untimed_ms"] = e["stages"]["step"]["median_ms"] - parts
        e["achieved_tflops"] = {}
        for stage in ("unet", "vae_decode"):
            if stage in flops and stage in e["stages"]:
                tflops = flops[stage] / (e["stages"][stage]["median_ms"] * 1e-3) / 1e12
                e["achieved_tflops"][stage] = {
                    "tflops": tflops, "fraction_of_peak": None if peak is None else tflops / peak}
    reference = next(((e, m) for e, m in measured if e["name"] == REFERENCE_BACKEND), None)
    for e, m in measured:
        if reference is None:
            e["speedup_vs_eager"] = e["quality"] = None
            continue
        ref, ref_m = reference
        e["speedup_vs_eager"] = {
            "step": ref["stages"]["step"]["median_ms"] / e["stages"]["step"]["median_ms"],
            "end_to_end": ref["end_to_end"]["median_ms"] / e["end_to_end"]["median_ms"]}
        e["quality"] = None if e is ref else quality(m, ref_m)


# ------------------------------------------------------------------------ the document
def _dtype_name(dtype) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _shown_path(path: Path) -> str:
    """Paths inside the repository are recorded relative to it (results are compared across hosts)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def flops_block(flops: dict, preset_name: str) -> dict | None:
    if "unet" not in flops:
        return None
    return {"unet": {"tflop": flops["unet"] / 1e12}, "vae_decode": {"tflop": flops["vae_decode"] / 1e12},
            "source": "torch.utils.flop_counter on the eager networks, one call each",
            "reference_tflop": latency_report.REFERENCE_FULL_TFLOP if preset_name == "full" else None}


def document(bench: Bench, entries: list[dict], build_s: float, env: dict, peak: tuple) -> dict:
    args, device, preset = bench.args, bench.device, bench.models.preset
    weight_dtype, autocast_dtype = precision_policy(args.dtype, device)
    return {
        "schema_version": latency_report.SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {
            "preset": preset.name, "dtype": args.dtype, "weight_dtype": _dtype_name(weight_dtype),
            "autocast_dtype": _dtype_name(autocast_dtype), "steps": args.steps, "warmup": args.warmup,
            "repeats": args.repeats, "seed": args.seed, "device": str(device), "image": _shown_path(args.image),
            "artefacts": None if args.artefacts is None else _shown_path(args.artefacts),
            "weights": (f"checkpoint {args.checkpoint}" if args.checkpoint
                        else f"random (seed {preset.seed})"),
            "orbit_frames": args.orbit_frames, "exact_final_decode": args.exact_final_decode,
            "temporal_context": args.temporal_context,
            "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
            "build_models_s": build_s,
        },
        "environment": env,
        "peak": {"tflops": peak[0], "note": peak[1]},
        "flops": flops_block(bench.flops, preset.name),
        "flops_error": bench.flops.get("error"),
        "backends": entries,
    }


def main(argv: list[str] | None = None) -> int:
    with exit_on_interrupt(PROG):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = check_device(args.device)
        rows = check_args(args, device)
        if args.threads:
            torch.set_num_threads(args.threads)
        preset = default_preset(args)
        weight_dtype, _ = precision_policy(args.dtype, device)
        started = time.perf_counter()
        models = build_models(preset, checkpoint_dir=args.checkpoint, svd_dir=args.svd,
                              device=device, dtype=weight_dtype)
    except input_error_types() as error:
        fail(PROG, str(error))
        return EXIT_INPUT
    build_s = time.perf_counter() - started
    print(f"{PROG}: built the {preset.name} models in {build_s:.1f} s", file=sys.stderr)
    bench = Bench(args, device, models)
    env = latency_report.environment(device)
    peak = latency_report.device_peak_tflops(env["device_name"], args.dtype)

    entries = []
    for row in rows:
        reason = bench.row_unavailable(row)
        if reason:
            entries.append({"name": row.name, "status": "skipped", "reason": reason, "renderer": row.renderer})
            continue
        print(f"{PROG}: timing {row.name} ...", file=sys.stderr)
        entries.append(run_row(row, bench))
    finish_entries(entries, bench.flops, peak[0])

    doc = document(bench, entries, build_s, env, peak)
    print(latency_report.format_table(doc))
    if args.json:
        latency_report.write_json(args.json, doc)
    if args.csv:
        latency_report.upsert_csv(args.csv, latency_report.csv_rows(doc))
    if args.plot:
        if any(e["status"] == "ok" for e in entries):
            latency_report.write_plot(doc, args.plot)
        else:
            print(f"{PROG}: no backend ran: no plot written", file=sys.stderr)
    return EXIT_OK if entries[0]["status"] == "ok" else EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
