"""What ort3d's command-line tools share: exit codes, one-line errors, the weight / device / dtype
/ Q1 options and their resolution, interrupt handling and `versions()`.

Used by `ort3d-run` (runtime/cli.py), `ort3d-build` (runtime/build_cli.py) and bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT    # 130, what shells report for Ctrl-C


class UsageError(Exception):
    """A setting that cannot work; reported as one line, exit code 2."""


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)


def add_weight_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --svd (defaults from env ORT3D_CHECKPOINT / ORT3D_SVD) and --preset."""
    parser.add_argument("--checkpoint", default=os.environ.get("ORT3D_CHECKPOINT"),
                        help="Ouroboros3D weights: a folder with mv_model_unet.pth and "
                             "recon_model.pth, or a Hugging Face Hub repo id such as "
                             "huanngzh/Ouroboros3D-SVD-LGM (env ORT3D_CHECKPOINT)")
    parser.add_argument("--svd", default=os.environ.get("ORT3D_SVD"),
                        help="SVD img2vid base model: a folder in diffusers layout, or a hub repo "
                             "id such as stabilityai/stable-video-diffusion-img2vid (env ORT3D_SVD)")
    parser.add_argument("--preset", choices=("tiny", "full"), default=None,
                        help="model shapes; default: full with a checkpoint, tiny without")


def add_temporal_context_argument(parser: argparse.ArgumentParser) -> None:
    from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT, TEMPORAL_CONTEXTS

    parser.add_argument("--temporal-context", choices=TEMPORAL_CONTEXTS,
                        default=DEFAULT_TEMPORAL_CONTEXT,
                        help="how the UNet's temporal cross-attention sees the two CFG halves: "
                             "interleaved (default) is the authors' released behaviour "
                             "(diffusers 0.25); per-half gives each half its own context "
                             "(diffusers >= 0.28). See docs/quirks.md#q1")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, read by resolve_device and runtime.networks.precision_policy."""
    from ort3d.runtime.networks import DTYPES

    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="auto: fp32 weights under fp16 autocast on CUDA (the reference's "
                             "policy, docs/precision.md), fp32 on CPU; fp16/bf16: weights and "
                             "autocast in that dtype (the VAE in bf16 or fp32, as its "
                             "force_upcast asks); fp32: fp32 without autocast")


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


def default_preset(args):
    """--preset, or full with a checkpoint and tiny without."""
    from ort3d.models.presets import get_preset

    return get_preset(args.preset or ("full" if (args.checkpoint or args.svd) else "tiny"))


def input_error_types() -> tuple[type[Exception], ...]:
    """The errors that mean bad input or settings (one line, exit 2), as opposed to ort3d bugs."""
    from ort3d.export.errors import ExportError
    from ort3d.kernels.feedback_dispatch import RendererUnavailable
    from ort3d.models.checkpoint import CheckpointError
    from ort3d.runtime.networks import BackendUnavailable

    return UsageError, CheckpointError, ExportError, BackendUnavailable, RendererUnavailable


@contextlib.contextmanager
def exit_on_interrupt(prog: str):
    """Ctrl-C: one line and exit 130, no traceback. Outputs are written atomically
    (export/atomic.py), so an interrupted run leaves no partial file behind."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


# The optional packages reports name, each with the distributions it ships as (the first one
# installed wins): PyTorch's own Triton, the GPU ONNX Runtime, NVIDIA's per-CUDA TensorRT wheels.
OPTIONAL_PACKAGES = {
    "triton": ("triton", "pytorch-triton"),
    "diffusers": ("diffusers",),
    "transformers": ("transformers",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "gsplat": ("gsplat",),
}


def versions() -> dict[str, str]:
    """python, ort3d, torch, the CUDA torch was built for, and the optional packages present (run
    reports, bench results). A module installed without distribution metadata (TensorRT in
    NVIDIA's containers) gives its __version__."""
    import importlib
    import importlib.metadata as md
    import importlib.util

    import torch

    from ort3d.models.version import __version__

    out = {"python": platform.python_version(), "ort3d": __version__, "torch": torch.__version__}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    for module, distributions in OPTIONAL_PACKAGES.items():
        for dist in distributions:
            with contextlib.suppress(md.PackageNotFoundError):
                out[module] = md.version(dist)
                break
        else:
            if importlib.util.find_spec(module) is not None:
                version = getattr(importlib.import_module(module), "__version__", None)
                if version:
                    out[module] = version
    return out
