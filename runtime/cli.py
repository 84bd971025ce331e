"""`ort3d-run IMAGE [IMAGE ...]`: one image in; 8 views, 3D Gaussians (.ply), an orbit video out.

Per input `<stem>`: `<stem>_views.png` (input + 8 views), `<stem>.ply` (3DGS layout),
`<stem>_orbit.mp4`, `<stem>_run.json` (settings, versions, per-step per-stage timings).
Bad input gives one line on stderr and exit code 2; other inputs still run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT = 0, 1, 2
DTYPES = ("auto", "fp32", "fp16", "bf16")


def build_parser() -> argparse.ArgumentParser:
    from ort3d.models.cli_args import add_weight_arguments
    from ort3d.models.version import __version__

    p = argparse.ArgumentParser(
        prog="ort3d-run",
        description="Ouroboros3D inference: one image in, 8 consistent views and 3D Gaussians out. "
                    "Without --checkpoint/--svd it runs the built-in tiny model (random weights).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="input image(s); alpha is used as the mask")
    p.add_argument("--out", default="ort3d_out", help="output folder (default: ./ort3d_out)")
    add_weight_arguments(p)
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    add_device_arguments(p)
    p.add_argument("--backend", choices=("eager", "ort", "trt"), default="eager",
                   help="eager: the PyTorch reference; ort: exported ONNX graphs in ONNX Runtime; "
                        "trt: TensorRT engines (both read --engines)")
    p.add_argument("--engines", metavar="DIR", default=os.environ.get("ORT3D_ENGINES"),
                   help="artefact folder from `python export/build_engines.py` (manifest.json), "
                        "for --backend ort/trt (env ORT3D_ENGINES)")
    p.add_argument("--renderer", choices=("torch", "triton"), default="torch",
                   help="feedback renderer: torch (reference) or triton (fused kernels; GPU, or "
                        "CPU through TRITON_INTERPRET=1, slowly)")
    p.add_argument("--q1-compat", action="store_true",
                   help="reproduce diffusers 0.25's CFG temporal-context interleaving (SPEC Q1)")
    p.add_argument("--exact-final-decode", action="store_true",
                   help="decode the final latents again instead of reusing the last step's decode")
    p.add_argument("--rembg", metavar="MODEL",
                   help="remove the background with rembg using this LOCAL model file "
                        "(never downloaded); default: use the image's alpha or take it as cut out")
    p.add_argument("--overlap-tiles", type=int, default=8, metavar="N",
                   help="triton renderer: tile overlaps reserved per Gaussian and view (default 8)")
    p.add_argument("--elevation", type=float, default=0.0, help="orbit video elevation in degrees")
    p.add_argument("--orbit-frames", type=int, default=180, help="orbit video frames (30 fps)")
    p.add_argument("--no-video", action="store_true", help="skip the orbit video")
    p.add_argument("--check-every-stage", action="store_true",
                   help="sync after every stage to stop at the first NaN/Inf (slower on GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    p.add_argument("--version", action="version", version=f"ort3d {__version__}")
    return p


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --device and --dtype, read by resolve_device / resolve_dtypes (also used by bench/)."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="auto: fp32 weights under fp16 autocast on CUDA (the reference's "
                             "policy, SPEC §2.8), fp32 on CPU; fp16/bf16: weights and autocast in "
                             "that dtype; fp32: fp32 without autocast")


class UsageError(Exception):
    """A setting that cannot work; reported as one line, exit code 2."""


def _fail(message: str) -> None:
    print(f"ort3d-run: error: {message}", file=sys.stderr)


def _check_out_dir(path: pathlib.Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ort3d-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None


def resolve_device(name: str):
    """The torch.device for --device (auto: CUDA when available); UsageError if unusable."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtypes(name: str, device):
    """(weight dtype, autocast dtype or None) for the --dtype setting (SPEC §2.8)."""
    import torch

    if name == "auto":
        return (torch.float32, torch.float16) if device.type == "cuda" else (torch.float32, None)
    if name == "fp32":
        return torch.float32, None
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
    return dtype, dtype


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.steps < 1:
            raise UsageError(f"--steps must be at least 1 (got {args.steps})")
        if args.backend != "eager" and not args.engines:
            raise UsageError(f"--backend {args.backend} needs --engines DIR "
                             "(made by `python export/build_engines.py`)")
        if args.overlap_tiles < 1:
            raise UsageError(f"--overlap-tiles must be at least 1 (got {args.overlap_tiles})")
        if args.orbit_frames < 1:
            raise UsageError(f"--orbit-frames must be at least 1 (got {args.orbit_frames})")
        out_dir = pathlib.Path(args.out)
        _check_out_dir(out_dir)
        device = resolve_device(args.device)
        if (args.renderer == "triton" and device.type != "cuda"
                and os.environ.get("TRITON_INTERPRET") != "1"):
            raise UsageError("--renderer triton needs a CUDA device (or TRITON_INTERPRET=1 for "
                             "Triton's slow CPU interpreter)")
        runner = _build_runner(args, device)
    except Exception as exc:   # noqa: BLE001 - every setup failure is one line, exit 2
        from ort3d.models.checkpoint import CheckpointError

        # CheckpointError and the export package's ExportError are ValueErrors too.
        if isinstance(exc, (UsageError, CheckpointError, ValueError)):
            _fail(str(exc))
            return EXIT_INPUT
        raise

    status = EXIT_OK
    for image_path in args.images:
        code = runner.process(pathlib.Path(image_path), out_dir)
        status = max(status, code)
    return status


def _build_runner(args, device):
    from ort3d.runtime.run import Runner

    return Runner.from_args(args, device, resolve_dtypes(args.dtype, device))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("ort3d", "torch", "triton", "diffusers", "transformers", "onnxruntime", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())
