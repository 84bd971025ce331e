"""TensorRT engine building: strongly typed networks, TensorRT 10.12 or newer (11 included).

TensorRT 10.12 deprecated weakly typed networks and the FP16/BF16 builder flags, and 11.0 removed
both: a layer runs in the type its tensors have in the network. So the ONNX graph is exported in
the engine's precision (export/onnx_export.py, docs/precision.md#exported-engines) and parsed into
a strongly typed network; the builder gets no precision flag except TF32.

The `tensorrt` module is imported lazily and handed to `build_engine` as an object, so tests can
pass a stand-in that records every call (tests/export/test_trt_build.py); nothing here runs
against the real TensorRT in CI. Every call below is in NVIDIA's Python API reference of both
10.12 and 11.0 (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):

- `Builder.create_network(1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))`: the flag is 1
  in 10.x and 0 in 11.0, where it is deprecated and ignored (strong typing is always on), so its
  value is read from the module, never written down here;
- `OnnxParser(network, logger).parse_from_file(path)` (path-based, so external weights beside the
  graph are found), failures through `num_errors` / `get_error(i)`;
- `IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`;
- `IBuilderConfig.set_flag` / `clear_flag(BuilderFlag.TF32)` (on by default in both versions);
- one optimisation profile with min = opt = max = the spec's static shape
  (`IOptimizationProfile.set_shape` may be called for a static input when all three equal it);
- a timing cache per (TensorRT version, GPU): `create_timing_cache(bytes)`,
  `set_timing_cache(cache, ignore_mismatch=False)`, `get_timing_cache().serialize()`;
- `build_serialized_network(network, config)`: the plan, or None on failure; written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

from ort3d.export.atomic import atomic_write
from ort3d.export.errors import ExportError
from ort3d.export.specs import NetworkSpec

DEFAULT_WORKSPACE_BYTES = 8 << 30
MIN_TENSORRT = (10, 12)               # strong typing without the deprecated weak-typing path
ENGINE_PRECISIONS = ("fp16", "fp32")
# Builder flags that change precision and that a build may set. FP16/BF16 do not exist any more.
PRECISION_FLAGS = ("TF32",)


def tensorrt_version_problem(version: str) -> str | None:
    """None for a TensorRT this module can drive (10.12 or newer), else why not (one line)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return f"TensorRT reports the version {version!r}, which is not 'major.minor...'"
    if (int(match[1]), int(match[2])) < MIN_TENSORRT:
        return (f"TensorRT {version} is installed, but ort3d builds strongly typed engines, which "
                "need TensorRT 10.12 or newer (pip install -U tensorrt)")
    return None


def tensorrt_missing_reason() -> str | None:
    """None when engines can be built and run here, else why not (one line)."""
    try:
        import tensorrt
    except ImportError:
        return "TensorRT is not installed (NVIDIA's `tensorrt` wheel, 10.12 or newer, on a CUDA host)"
    problem = tensorrt_version_problem(tensorrt.__version__)
    if problem:
        return problem
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


def engine_precision(spec: NetworkSpec, requested: str) -> tuple[str, list[str]]:
    """(precision of the network's graph and engine, precision builder flags) for a request.

    fp16: every network in fp16, except those whose activations overflow fp16 (the SVD VAE:
    diffusers sets force_upcast for it), which stay fp32 with TF32 allowed: fp32's exponent range
    at tensor-core speed. (bf16 would be the other overflow-safe type, but a bf16 Conv needs
    ONNX opset 22 and the TorchScript exporter stops at 20.) fp32: TF32 cleared, so the engines
    are an fp32 reference."""
    if requested not in ENGINE_PRECISIONS:
        raise ExportError(f"--precision: {requested!r} is not one of {ENGINE_PRECISIONS}")
    precision = "fp32" if requested == "fp16" and spec.fp16_overflows else requested
    return precision, (["TF32"] if requested == "fp16" else [])


def timing_cache_path(cache_dir: Path, identity: dict) -> Path:
    """One timing cache per (TensorRT version, GPU): entries from another GPU or version are
    worthless at best, so they never share a file."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", identity["gpu_name"]).strip("-").lower()
    cc = identity["compute_capability"].replace(".", "")
    return Path(cache_dir) / f"trt-{identity['tensorrt_version']}_{gpu}_sm{cc}.timing-cache"


def build_engine(onnx_path: Path, spec: NetworkSpec, flags: list[str], engine_path: Path,
                 timing_cache: Path, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 trt=None) -> None:
    """Build `engine_path` from a graph exported in the engine's precision.

    flags: the PRECISION_FLAGS to enable (from `engine_precision`); the others are cleared.
    trt: the `tensorrt` module (default: this host's, checked by `import_tensorrt`)."""
    if trt is None:
        trt = import_tensorrt()
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        raise ExportError(problem)
    unknown = [flag for flag in flags if flag not in PRECISION_FLAGS]
    if unknown:
        raise ExportError(f"builder flag {unknown[0]!r} is not one of {PRECISION_FLAGS}: strongly "
                          "typed networks take their precision from the graph")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "no detail"
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser rejected the graph: {first}")
    _check_network_io(trt, network, spec, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in PRECISION_FLAGS:
        (config.set_flag if flag in flags else config.clear_flag)(getattr(trt.BuilderFlag, flag))
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


def _check_network_io(trt, network, spec: NetworkSpec, onnx_path: Path) -> None:
    """The parsed network must have exactly the spec's inputs and outputs: names, static shapes
    and fp32 types (graphs of every precision keep fp32 I/O; in a strongly typed network the
    output types follow from the graph, so an export mistake shows up here)."""
    def table(count, get):
        return {t.name: (tuple(t.shape), t.dtype) for t in (get(i) for i in range(count))}

    def wanted(tensors):
        return {t.name: (tuple(t.shape), trt.DataType.FLOAT) for t in tensors}

    for kind, found, want in (
            ("inputs", table(network.num_inputs, network.get_input), wanted(spec.inputs)),
            ("outputs", table(network.num_outputs, network.get_output), wanted(spec.outputs))):
        if found != want:
            raise ExportError(f"{onnx_path}: graph {kind} {found} differ from the {spec.name} "
                              f"spec {want}; re-export the ONNX graph")
