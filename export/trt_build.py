"""TensorRT 10 engine building (docs/architecture.md#backends). TensorRT is imported lazily: nothing here runs in CI.

Written against the documented TensorRT 10 Python API: a network from `builder.create_network(0)`
(every network is explicit-batch in TensorRT 10; the EXPLICIT_BATCH flag is deprecated and
ignored), filled by `OnnxParser.parse_from_file` (path-based, so external weights beside the
graph are found), a builder config with precision flags, a workspace memory-pool limit, one
optimisation profile pinned to the spec's static shapes, and a timing cache persisted per
(TensorRT version, GPU); `build_serialized_network` gives the plan, written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

from ort3d.export.atomic import atomic_write
from ort3d.export.errors import ExportError
from ort3d.export.specs import NetworkSpec

DEFAULT_WORKSPACE_BYTES = 8 << 30


def tensorrt_missing_reason() -> str | None:
    """None when engines can be built here, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (NVIDIA's `tensorrt` 10.x wheel, on a CUDA host)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible to PyTorch"
    return None


def import_tensorrt():
    reason = tensorrt_missing_reason()
    if reason:
        raise ExportError(f"TensorRT backend unavailable: {reason}")
    import tensorrt

    return tensorrt


def host_identity(device_index: int = 0) -> dict:
    """The engine-key fields that describe this machine: TensorRT version and GPU."""
    trt = import_tensorrt()
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return {"tensorrt_version": trt.__version__,
            "gpu_name": torch.cuda.get_device_name(device_index),
            "compute_capability": f"{major}.{minor}"}


def engine_precision(spec: NetworkSpec, requested: str, compute_capability: str) -> tuple[str, list[str]]:
    """(precision actually built, builder flags) for a network.

    fp16: the FP16 flag, except for networks whose activations overflow fp16 (the SVD VAE:
    diffusers sets force_upcast for it) which fall back to BF16 (fp32's exponent range) on
    compute capability >= 8.0 and to strict fp32 before that. fp32 clears TF32 so that the
    engine is an fp32 reference."""
    major = int(compute_capability.split(".")[0])
    if requested == "fp16" and spec.fp16_overflows:
        requested = "bf16" if major >= 8 else "fp32"
    if requested == "bf16" and major < 8:
        raise ExportError(f"--precision bf16: compute capability {compute_capability} has no bf16 "
                          "support (needs 8.0 or newer)")
    flags = {"fp16": ["FP16"], "bf16": ["BF16"], "fp32": []}[requested]
    return requested, flags


def timing_cache_path(cache_dir: Path, identity: dict) -> Path:
    """One timing cache per (TensorRT version, GPU): entries from another GPU or version are
    worthless at best, so they never share a file."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", identity["gpu_name"]).strip("-").lower()
    cc = identity["compute_capability"].replace(".", "")
    return Path(cache_dir) / f"trt-{identity['tensorrt_version']}_{gpu}_sm{cc}.timing-cache"


def build_engine(onnx_path: Path, spec: NetworkSpec, flags: list[str], engine_path: Path,
                 timing_cache: Path, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "no detail"
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser rejected the graph: {first}")
    _check_network_io(network, spec, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if not flags:
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for tensor in spec.inputs:
        profile.set_shape(tensor.name, tensor.shape, tensor.shape, tensor.shape)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)     # False: refuse a cache from another device

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    atomic_write(engine_path, bytes(plan))


def _check_network_io(network, spec: NetworkSpec, onnx_path: Path) -> None:
    """The parsed network must have exactly the spec's inputs and shapes (static)."""
    found = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        found[tensor.name] = tuple(tensor.shape)
    wanted = {t.name: tuple(t.shape) for t in spec.inputs}
    if found != wanted:
        raise ExportError(f"{onnx_path}: graph inputs {found} differ from the {spec.name} spec "
                          f"{wanted}; re-export the ONNX graph")
