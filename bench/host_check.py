"""`python bench/host_check.py`: the C++ host on this machine's device, end to end.

    python bench/host_check.py --device cuda          # on a GPU host (bench/README.md)
    python bench/host_check.py --device cpu           # here: the same steps on the CPU
    python bench/host_check.py --device cpu --prepare # only build the host and the engine set

Builds the host with CMake against this interpreter's torch (a CUDA wheel gives the CUDA build,
with TensorRT when CMake finds it), builds the tiny preset's engine set for the device
(AOTInductor packages, plus TensorRT plans when the `tensorrt` module is here), then runs
`ort3d-host` on --images copies of the example image in each variant this host has:

    aoti           AOTInductor packages, steps run eagerly (--no-cuda-graphs)
    aoti+graphs    AOTInductor packages, the steps' networks as CUDA graphs (CUDA)
    tensorrt+graphs  TensorRT plans for the six networks, CUDA graphs (a host built with TensorRT)

and `ort3d-run --backend aoti` on the same packages as the reference. Reports per variant the
per-image seconds (the first image apart: it warms up, and on CUDA captures) and, for the last
image, the Gaussians' relative difference and the views' PSNR against the reference and against
the eager host. Checks: a variant that fails to run fails the check; the AOTInductor variants must
match the reference within the tolerances of tests/host (1e-4 relative, 40 dB) on the CPU and
1e-3 / 40 dB on CUDA (other kernels, atomics); TensorRT's fp16 plans are reported, not judged
(random tiny weights amplify fp16 rounding over the recursion). Writes
host_check_<device>.json and .txt into --out (default bench/results/). Exit codes: 0 passed,
1 a check failed, 2 bad arguments or no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "coffee.png"
BUILD_TIMEOUT_S = 1200          # a cold two-core build of the host takes a few minutes
TOLERANCES = {"cpu": (1e-4, 40.0), "cuda": (1e-3, 40.0)}   # (Gaussians relative, views dB)
IMAGE_LINE = re.compile(r"^(?P<image>.+?): .*; (?P<format>\w+), \d+ steps (?P<loop>\w+), "
                        r"(?P<seconds>[0-9.]+) s(?:, capture (?P<capture>[0-9.]+) s)?\)$")


class HostCheckError(RuntimeError):
    """A step that could not run: one line with the command's last output lines."""


def run(command, what, timeout=BUILD_TIMEOUT_S, cwd=REPO) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise HostCheckError(f"{what} failed (exit {result.returncode}): "
                             f"{' '.join(map(str, command))}\n{tail}")
    return result.stdout


def build_host(build_dir: Path, python: str = sys.executable) -> str:
    """Configure and build the host (CMakeLists.txt) into build_dir; CMake rebuilds only what
    changed. Returns the configure step's summary line ("ort3d host: ...")."""
    missing = [tool for tool in ("cmake", "ctest", "c++") if shutil.which(tool) is None]
    if missing:
        raise HostCheckError(f"the C++ host needs {', '.join(missing)} on PATH (CMake >= 3.18 with "
                             "ctest and a C++17 compiler; e.g. apt-get install cmake g++ libpng-dev)")
    build_dir.mkdir(parents=True, exist_ok=True)
    configured = run(["cmake", "-S", REPO, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                      f"-DORT3D_PYTHON={python}"], "configuring the C++ host (CMake)")
    run(["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2)], "building the C++ host")
    return next((line.removeprefix("-- ") for line in configured.splitlines() if "ort3d host:" in line), "")


def ply_columns(path) -> np.ndarray:
    from plyfile import PlyData

    data = PlyData.read(str(path))["vertex"].data
    return np.stack([data[name] for name in data.dtype.names], 1).astype(np.float64)


def relative_difference(ply_a, ply_b) -> float:
    """‖a − b‖ / ‖b‖ over every column of two .ply files with the same Gaussians."""
    a, b = ply_columns(ply_a), ply_columns(ply_b)
    if a.shape != b.shape:
        return float("inf")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def views_psnr(grid_a, grid_b, image_size: int) -> float:
    """PSNR in dB of two views grids over the generated views (the input column is skipped)."""
    from PIL import Image

    start = image_size + 4      # 2 px border + the input cell + 2 px padding
    a = np.asarray(Image.open(grid_a), dtype=np.float64)[:, start:]
    b = np.asarray(Image.open(grid_b), dtype=np.float64)[:, start:]
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def finite(value):
    """The report with non-finite numbers as null (identical views have an infinite PSNR)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def build_engines(folder: Path, device: str) -> tuple[dict, object]:
    """The tiny preset's set for `device`, reused network by network through the content keys;
    TensorRT plans too when TensorRT is importable here. Returns (what was built, the models)."""
    import torch

    from ort3d.export.build import BuildOptions, build_artefacts
    from ort3d.export.trt_build import tensorrt_missing_reason
    from ort3d.models.checkpoint import build_models
    from ort3d.models.presets import TINY

    tensorrt_missing = tensorrt_missing_reason() if device == "cuda" else "the CPU runs no TensorRT"
    formats = ("onnx", "aoti") if tensorrt_missing is None else ("aoti",)
    models = build_models(TINY, device=torch.device(device), dtype=torch.float32)
    report = build_artefacts(models, folder, BuildOptions(formats=formats), log=lambda line: None)
    return {"folder": str(folder), "formats": list(formats), "tensorrt_plans": report.engines,
            "tensorrt_missing": tensorrt_missing}, models


def compare(out: Path, reference: Path, stem: str) -> dict:
    """The last image's outputs in `out` against those in `reference`."""
    from ort3d.models.presets import TINY

    return {"gaussians_relative": relative_difference(out / f"{stem}.ply", reference / f"{stem}.ply"),
            "views_psnr_db": views_psnr(out / f"{stem}_views.png", reference / f"{stem}_views.png",
                                        TINY.image_size)}


def host_variants(device: str, cmake_summary: str, engines: dict) -> dict[str, list[str]]:
    """The ort3d-host options of every variant this host and engine set have."""
    variants = {"aoti": ["--format", "aoti", "--no-cuda-graphs"]}
    if device == "cuda":
        variants["aoti+graphs"] = ["--format", "aoti"]
        if "; TensorRT " in cmake_summary and engines["tensorrt_plans"]:   # CMakeLists.txt's summary
            variants["tensorrt+graphs"] = ["--format", "tensorrt"]
    return variants


def describe(name: str, entry: dict) -> str:
    capture = f", capture {entry['capture_s']:.3f} s" if entry["capture_s"] is not None else ""
    later, against = entry["later_images_s"], entry["vs_ort3d_run_aoti"]
    return (f"{name}: first image {entry['first_image_s']:.3f} s{capture}; later images median "
            f"{later['median']:.3f} s ({later['min']:.3f}-{later['max']:.3f}); loop {'/'.join(entry['loop'])}; "
            f"vs ort3d-run aoti: Gaussians {against['gaussians_relative']:.2e} relative, "
            f"views {against['views_psnr_db']:.1f} dB")


def run_host(host: Path, engines: Path, out: Path, images, device: str, steps: int, seed: int,
             extra=()) -> list[dict]:
    command = [host, "--engines", engines, "--out", out, "--device", device, "--steps", steps,
               "--seed", seed, "--ply-raw", *extra, *images]
    lines = run(command, f"ort3d-host {' '.join(extra)}", timeout=1800).splitlines()
    parsed = [m.groupdict() for m in map(IMAGE_LINE.match, lines) if m]
    if len(parsed) != len(images):
        raise HostCheckError(f"ort3d-host printed {len(parsed)} image lines for {len(images)} images:\n"
                             + "\n".join(lines[-10:]))
    return parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/host_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--steps", type=int, default=3, help="denoising steps per image (default 3)")
    p.add_argument("--images", type=int, default=3, help="images per variant, >= 2 (default 3)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--build", type=Path, default=REPO / "build" / "host",
                   help="the host's build folder (default build/host, as tests/host)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--prepare", action="store_true",
                   help="only build (or bring up to date) the host and the engine set, then exit "
                        "(tests/host starts this in the background while other tests run)")
    args = p.parse_args(argv)
    if args.images < 2 or args.steps < 2:
        print("host_check: --images and --steps must be at least 2", file=sys.stderr)
        return 2

    import torch

    from latency_report import environment

    if args.device == "cuda" and not torch.cuda.is_available():
        print("host_check: no CUDA device is visible to PyTorch (use --device cpu here)", file=sys.stderr)
        return 2
    env = environment(torch.device(args.device))
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    build = args.build
    work = REPO / "build" / f"host-check-{args.device}"
    shutil.rmtree(work, ignore_errors=True)
    report = {"environment": env, "steps": args.steps, "images": args.images, "seed": args.seed,
              "variants": {}, "failures": []}
    lines = [f"host_check on {env['device_name']}: tiny preset, {args.steps} steps, {args.images} images"]

    def say(text):
        lines.append(text)
        print(text, flush=True)

    try:
        started = time.perf_counter()
        report["cmake"] = build_host(build)
        say(f"build: {report['cmake']} ({time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
        folder = REPO / "build" / "host-engines" / ("tiny" if args.device == "cpu" else f"tiny-{args.device}")
        engines, _ = build_engines(folder, args.device)
        report["engines"] = engines
        say(f"engines: {','.join(engines['formats'])} in {Path(engines['folder']).relative_to(REPO)} "
            f"({time.perf_counter() - started:.0f} s); TensorRT: "
            f"{'plans built' if engines['tensorrt_plans'] else engines['tensorrt_missing']}")
        if args.prepare:
            return 0
        images = []
        for i in range(args.images):
            images.append(work / "inputs" / f"image{i}.png")
            images[-1].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(EXAMPLE, images[-1])
        last = images[-1].stem

        reference = work / "ort3d-run"
        from ort3d.runtime import cli

        code = cli.main([str(images[-1]), "--backend", "aoti", "--engines", engines["folder"], "--out",
                         str(reference), "--steps", str(args.steps), "--seed", str(args.seed), "--ply-raw",
                         "--no-video", "--quiet", "--device", args.device])
        if code != 0:
            raise HostCheckError(f"ort3d-run --backend aoti exited {code}")

        tolerance, min_psnr = TOLERANCES[args.device]
        for name, extra in host_variants(args.device, report["cmake"], engines).items():
            out = work / name
            try:
                per_image = run_host(build / "ort3d-host", Path(engines["folder"]), out, images, args.device,
                                     args.steps, args.seed, extra)
            except HostCheckError as err:
                report["failures"].append(f"{name}: {err}")
                say(f"{name}: FAILED: {str(err).splitlines()[0]}")
                continue
            later = [float(r["seconds"]) for r in per_image[1:]]
            entry = report["variants"][name] = {
                "first_image_s": float(per_image[0]["seconds"]),
                "capture_s": float(per_image[0]["capture"]) if per_image[0]["capture"] else None,
                "later_images_s": {"median": statistics.median(later), "min": min(later), "max": max(later)},
                "loop": [r["loop"] for r in per_image],
                "vs_ort3d_run_aoti": compare(out, reference, last),
            }
            if name != "aoti" and "aoti" in report["variants"]:
                entry["vs_host_aoti"] = compare(out, work / "aoti", last)
            against = entry["vs_ort3d_run_aoti"]
            verdict = ""
            if name.startswith("aoti"):     # TensorRT's fp16 plans are reported, not judged
                passed = against["gaussians_relative"] <= tolerance and against["views_psnr_db"] >= min_psnr
                verdict = " (ok)" if passed else " (OUTSIDE TOLERANCE)"
                if not passed:
                    report["failures"].append(f"{name}: outside {tolerance:g} relative / {min_psnr:g} dB")
            say(describe(name, entry) + verdict)
    except HostCheckError as err:
        report["failures"].append(str(err))
        say(f"FAILED: {err}")
    say("passed" if not report["failures"] else f"{len(report['failures'])} check(s) failed")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"host_check_{slug}"
    stem.with_suffix(".json").write_text(json.dumps(finite(report), indent=1, allow_nan=False) + "\n")
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
