"""The backends bench/latency.py can time, each with the reason it cannot run here (or None).

A backend is a pair (networks, renderer) that the one pipeline loop runs: `eager` is our PyTorch
modules (the reference every other row is compared with), `eager-triton` the same networks with
the fused Triton feedback renderer, `ort` / `trt` the exported graphs / engines of an artefact
folder built by `python export/build_engines.py` from the same weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ort3d.export.manifest import MANIFEST_NAME
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT

BUILD_HINT = "python export/build_engines.py --preset {preset} --out DIR"


@dataclass
class BenchContext:
    models: object                     # ort3d.models.checkpoint.Models
    device: torch.device
    autocast_dtype: torch.dtype | None
    artefacts: Path | None             # --artefacts: the ort/trt artefact folder
    temporal_context: str = DEFAULT_TEMPORAL_CONTEXT


@dataclass(frozen=True)
class Backend:
    name: str
    renderer: str                                          # PipelineOptions.renderer
    unavailable: Callable[[BenchContext], str | None]      # None: it can run here
    create: Callable[[BenchContext], object]               # -> the per-network interface


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _eager(ctx: BenchContext):
    from ort3d.runtime.networks import EagerNetworks

    return EagerNetworks(ctx.models, ctx.device, autocast_dtype=ctx.autocast_dtype,
                         temporal_context=ctx.temporal_context)


def _triton_missing(ctx: BenchContext) -> str | None:
    if ctx.device.type != "cuda":
        return "the Triton renderer is timed on CUDA only (on CPU Triton runs in its interpreter)"
    if not _has_module("triton"):
        return "triton not installed"
    return None


def _artefacts_missing(ctx: BenchContext, what: str) -> str | None:
    hint = BUILD_HINT.format(preset=ctx.models.preset.name)
    if ctx.artefacts is None:
        return f"no {what}: pass --artefacts DIR built from the same weights by `{hint}`"
    if not (ctx.artefacts / MANIFEST_NAME).is_file():
        return f"no {MANIFEST_NAME} in {ctx.artefacts}: build it with `{hint}`"
    return None


def _ort_missing(ctx: BenchContext) -> str | None:
    if not _has_module("onnxruntime"):
        return "onnxruntime not installed"
    if ctx.device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return (f"onnxruntime-gpu not installed (onnxruntime {onnxruntime.__version__} has no "
                    "CUDAExecutionProvider)")
    return _artefacts_missing(ctx, "ONNX artefacts")


def _ort(ctx: BenchContext):
    from ort3d.runtime.backend_ort import OrtNetworks

    return OrtNetworks(ctx.artefacts, ctx.models.preset, device=ctx.device, temporal_context=ctx.temporal_context)


def _trt_missing(ctx: BenchContext) -> str | None:
    if not _has_module("tensorrt"):
        return "tensorrt not installed"
    if ctx.device.type != "cuda":
        return "no CUDA (TensorRT engines run on a CUDA device)"
    return _artefacts_missing(ctx, "TensorRT engines")


def _trt(ctx: BenchContext):
    from ort3d.runtime.backend_trt import TrtNetworks

    return TrtNetworks(ctx.artefacts, ctx.models.preset, device=ctx.device, temporal_context=ctx.temporal_context)


BACKENDS = {b.name: b for b in (
    Backend("eager", "torch", lambda ctx: None, _eager),
    Backend("eager-triton", "triton", _triton_missing, _eager),
    Backend("ort", "torch", _ort_missing, _ort),
    Backend("trt", "torch", _trt_missing, _trt),
)}
REFERENCE = "eager"
