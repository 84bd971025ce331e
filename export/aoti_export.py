"""AOTInductor packages: one `.pt2` per network, for C++ hosts and the `aoti` backend.

Each network's export wrapper (export/specs.py, export/feedback_export.py) is traced by
`torch.export` with the spec's static shapes and compiled by
`torch._inductor.aoti_compile_and_package` for the device its weights live on (CPU, or CUDA on a
GPU). The package holds the weights and the compiled kernels; C++ loads it with
`torch::inductor::AOTIModelPackageLoader`, Python with `torch._inductor.aoti_load_package`.

A package is tied to the torch version that compiled it (the loader refuses others) and to its
device, so both are part of its content key, beside the weights, shapes, options and dtype.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ort3d.export.atomic import atomic_path
from ort3d.export.cache import artefact_sha256, module_sha256
from ort3d.export.errors import ExportError
from ort3d.export.feedback_export import FEEDBACK, feedback_module, feedback_spec
from ort3d.export.specs import NETWORK_NAMES, NetworkSpec
from ort3d.models.version import __version__

AOTI_NETWORK_NAMES = (*NETWORK_NAMES, FEEDBACK)
AOTI_DEVICES = ("cpu", "cuda")
AOTI_DTYPE = "float32"      # packages are compiled from the fp32 export wrappers


@dataclass(frozen=True)
class AotiArtefact:
    file: str
    sha256: str
    seconds: float


def aoti_specs(network_specs: dict[str, NetworkSpec], preset) -> dict[str, NetworkSpec]:
    """The AOTInductor set: the exported networks plus the feedback stage."""
    return {**network_specs, FEEDBACK: feedback_spec(preset)}


def aoti_module(spec: NetworkSpec, models) -> torch.nn.Module:
    if spec.name == FEEDBACK:
        return feedback_module(spec, next(models.lgm.parameters()).device)
    return spec.module_for_export(models)


def aoti_key(spec: NetworkSpec, module: torch.nn.Module, device: str) -> dict:
    return {"weights_sha256": module_sha256(module), "shapes": spec.shapes(),
            "options": dict(spec.options), "device": device, "dtype": AOTI_DTYPE,
            "torch_version": torch.__version__, "ort3d_version": __version__}


def compile_aoti(spec: NetworkSpec, module: torch.nn.Module, out_dir: str | Path,
                 device: str) -> AotiArtefact:
    """Trace `module` with the spec's sample inputs (static shapes) and write `<name>.pt2`."""
    if device not in AOTI_DEVICES:
        raise ExportError(f"AOTInductor packages are built for {AOTI_DEVICES}, not {device!r}")
    out_dir = Path(out_dir)
    inputs = tuple(value.to(device) for value in spec.sample_inputs(0).values())
    started = time.perf_counter()
    file = f"{spec.name}.pt2"
    with torch.no_grad():
        exported = torch.export.export(module, inputs, strict=False)
        with atomic_path(out_dir / file) as tmp:
            torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
    return AotiArtefact(file, artefact_sha256(out_dir, [file]), time.perf_counter() - started)
