"""`python bench/latency.py`: per-step, per-stage latency of the recursive loop for every backend
available here, side by side with the eager reference, with the quality of each row against it.

    python bench/latency.py --preset tiny --steps 3 --warmup 1 --repeats 2 --json out.json
    python bench/latency.py --preset full --dtype fp16 --steps 3 --backends eager,trt --artefacts DIR

Without --checkpoint/--svd the networks get deterministic random weights at the preset's real
architecture (timing does not depend on weight values; the renderer's does, see bench/README.md).
Each backend runs `--warmup` whole pipeline runs (discarded), then `--repeats` measured ones;
stages are pooled over the measured runs (the n rule is in bench/README.md). Backends that cannot
run here are reported as skipped with the reason; one that fails is reported with its error and
the others still run. Bad settings: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # bench/ is not a package: its modules are imported as siblings
    sys.path.insert(0, str(HERE))

from latency_backends import BACKENDS, REFERENCE  # noqa: E402
from ort3d.runtime.cli_common import (UsageError, add_device_arguments,  # noqa: E402
                                      add_temporal_context_argument, resolve_device)
from ort3d.runtime.networks import precision_policy  # noqa: E402
from ort3d.runtime.timing import summarize_ms  # noqa: E402

EXIT_OK, EXIT_REFERENCE_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_IMAGE = HERE.parent / "examples" / "coffee.png"


class BenchError(Exception):
    """A setting that cannot work: one line on stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/latency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("tiny", "full"), default=None,
                   help="model shapes (default: full with --checkpoint/--svd, tiny without)")
    p.add_argument("--checkpoint", help="Ouroboros3D folder (mv_model_unet.pth, recon_model.pth)")
    p.add_argument("--svd", help="SVD img2vid base folder in diffusers layout")
    p.add_argument("--backends", default=REFERENCE,
                   help=f"comma-separated, from {','.join(BACKENDS)}; eager (the reference) always runs first")
    p.add_argument("--artefacts", type=Path, help="artefact folder of the ort/trt backends "
                   "(python export/build_engines.py --out DIR, same weights)")
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


def check_args(args) -> list[str]:
    """Validates the settings (BenchError); returns the backends in run order, eager first."""
    for name, low in (("steps", 1), ("warmup", 0), ("repeats", 1), ("orbit_frames", 0), ("threads", 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise BenchError(f"--{name.replace('_', '-')} must be at least {low} (got {getattr(args, name)})")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise BenchError(f"--backends: unknown backend {unknown[0]!r}; choose from {','.join(BACKENDS)}")
    if not args.image.is_file():
        raise BenchError(f"--image: {args.image}: file not found")
    if bool(args.checkpoint) != bool(args.svd):
        raise BenchError("--checkpoint and --svd go together (real weights need both folders)")
    for option in ("json", "csv", "plot", "profile"):   # fail now, not after minutes of timing
        path = getattr(args, option)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise BenchError(f"--{option}: cannot create {path.parent}: {error.strerror}") from None
    return list(dict.fromkeys([REFERENCE, *names]))


def check_device(name: str):
    """`ort3d-run`'s --device resolution, limited to the devices the timers support."""
    try:
        device = resolve_device(name)
    except UsageError as error:
        raise BenchError(f"--device: {error}") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name}: only cpu and cuda are supported")
    return device


def _dtype_name(dtype) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _shown_path(path: Path) -> str:
    """Paths inside the repository are recorded relative to it (results are compared across hosts)."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _profile_path(path: Path, backend: str) -> Path:
    return path if backend == REFERENCE else path.with_name(f"{path.stem}-{backend}{path.suffix}")


def run_backend(backend, ctx, args, measure_mod, flops_holder: dict) -> dict:
    """Times one backend; returns its JSON entry (status ok, with the raw measurement, or failed)."""
    import torch

    from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline

    entry = {"name": backend.name, "status": "failed", "reason": None, "renderer": backend.renderer}
    nets = pipeline = None
    try:
        started = time.perf_counter()
        nets = backend.create(ctx)
        options = PipelineOptions(steps=args.steps, renderer=backend.renderer,
                                  exact_final_decode=args.exact_final_decode)
        pipeline = RecursivePipeline(nets, ctx.device, options)
        setup_s = time.perf_counter() - started
        m = measure_mod.measure(pipeline, args.image, args.seed, args.warmup, args.repeats,
                                args.orbit_frames)
        if backend.name == REFERENCE:
            try:
                flops_holder.update(measure_mod.count_flops(nets, pipeline))
            except Exception as error:   # noqa: BLE001 - counting is a nicety; say why it is missing
                flops_holder["error"] = _first_line(error)
        profile = None
        if args.profile:
            path = _profile_path(args.profile, backend.name)
            profile = {"path": str(path),
                       "step": measure_mod.profile_one_step(pipeline, args.image, args.seed, path)}
        entry.update(status="ok", setup_s=setup_s, measurement=m)
        if profile:
            entry["profile"] = profile
    except Exception as error:   # noqa: BLE001 - one backend failing must not lose the others' rows
        traceback.print_exc(file=sys.stderr)
        entry["reason"] = _first_line(error)
    finally:
        del nets, pipeline
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return entry


def finish_entries(entries: list[dict], flops: dict, peak: float | None, measure_mod) -> None:
    """Turns measurements into the JSON fields: stage statistics, speed-ups, TFLOP/s, quality."""
    measured = [(e, e.pop("measurement")) for e in entries if "measurement" in e]
    for e, m in measured:
        e["stages"] = measure_mod.step_summary(m)
        e["once"] = measure_mod.once_summary(m)
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
    reference = next(((e, m) for e, m in measured if e["name"] == REFERENCE), None)
    for e, m in measured:
        if reference is None:
            e["speedup_vs_eager"] = e["quality"] = None
            continue
        ref, ref_m = reference
        e["speedup_vs_eager"] = {
            "step": ref["stages"]["step"]["median_ms"] / e["stages"]["step"]["median_ms"],
            "end_to_end": ref["end_to_end"]["median_ms"] / e["end_to_end"]["median_ms"]}
        e["quality"] = None if e is ref else measure_mod.quality(m, ref_m)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = check_args(args)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        device = check_device(args.device)
        weight_dtype, autocast_dtype = precision_policy(args.dtype, device)
    except BenchError as error:
        print(f"latency.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    import latency_measure
    import latency_report
    from latency_backends import BenchContext
    from ort3d.models.checkpoint import CheckpointError, build_models
    from ort3d.models.presets import get_preset

    preset = get_preset(args.preset or ("full" if args.checkpoint else "tiny"))
    started = time.perf_counter()
    try:
        models = build_models(preset, checkpoint_dir=args.checkpoint, svd_dir=args.svd,
                              device=device, dtype=weight_dtype)
    except CheckpointError as error:
        print(f"latency.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    build_s = time.perf_counter() - started
    print(f"latency.py: built the {preset.name} models in {build_s:.1f} s", file=sys.stderr)
    env = latency_report.device_description(device)
    env["versions"] = latency_report.versions()
    peak, peak_note = latency_report.device_peak_tflops(env["device_name"], args.dtype)
    ctx = BenchContext(models, device, autocast_dtype, args.artefacts, args.temporal_context)

    entries, flops = [], {}
    for name in names:
        backend = BACKENDS[name]
        reason = backend.unavailable(ctx)
        if reason:
            entries.append({"name": name, "status": "skipped", "reason": reason, "renderer": backend.renderer})
            continue
        print(f"latency.py: timing {name} ...", file=sys.stderr)
        entries.append(run_backend(backend, ctx, args, latency_measure, flops))
    finish_entries(entries, flops, peak, latency_measure)

    flops_doc = None
    if "unet" in flops:
        flops_doc = {k: {"tflop": flops[k] / 1e12} for k in ("unet", "vae_decode") if k in flops}
        flops_doc["source"] = "torch.utils.flop_counter on the eager networks, one call each"
        flops_doc["spec_tflop"] = latency_report.SPEC_FULL_TFLOP if preset.name == "full" else None
    doc = {
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
        "peak": {"tflops": peak, "note": peak_note},
        "flops": flops_doc,
        "flops_error": flops.get("error"),
        "backends": entries,
    }
    print(latency_report.format_table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    if args.csv:
        latency_report.upsert_csv(args.csv, latency_report.csv_rows(doc))
    if args.plot:
        if any(e["status"] == "ok" for e in entries):
            from latency_plot import write_plot

            write_plot(doc, args.plot)
        else:
            print("latency.py: no backend ran: no plot written", file=sys.stderr)
    reference_ok = entries[0]["status"] == "ok"
    return EXIT_OK if reference_ok else EXIT_REFERENCE_FAILED


if __name__ == "__main__":
    sys.exit(main())
