"""ONNX export of one network spec: legacy TorchScript exporter, static shapes, opset 17, fp32
or fp16 (docs/precision.md#exported-engines).

fp32 graphs serve ONNX Runtime and fp32 engines. TensorRT builds strongly typed networks (a layer
runs in its tensors' type), so an fp16 engine needs an fp16 graph: the export wrapper is copied
with fp16 weights (`module_in_precision`), fp32 inputs are cast on entry and outputs cast back,
so every precision has the same fp32 I/O (manifest I/O tables, runtime buffers and C++ hosts are
unchanged). As in the reference's fp16 autocast, GroupNorm/LayerNorm run in fp32 (a variance
over thousands of fp16 activations loses most of its bits, and squares above 256 overflow), and
the timestep inputs stay fp32 into the sinusoidal embeddings. An fp16 graph is `<name>.fp16.onnx`,
so it never replaces the fp32 `<name>.onnx`.

The TorchScript exporter (`dynamo=False`) is the one that produced correct, TensorRT-friendly
graphs of the SVD UNet with static shapes; opset 17 is the first with LayerNormalization as one
op (TensorRT maps it to its normalisation layer instead of fp16-fragile primitives) and is inside
TensorRT 10's supported range (9-20). Graphs with 1 GiB of weights or more (protobuf refuses
2 GB) keep their weights in one external-data file beside the graph. Every graph is checked
with `onnx.checker` (path-based, so external data is checked too), shape inference must
reproduce the spec's output shapes, and any op outside TensorRT 10's supported set is an error.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ort3d.export.cache import artefact_sha256
from ort3d.export.errors import ExportError
from ort3d.export.specs import NetworkSpec

OPSET = 17
# Weights move to an external-data file well before protobuf's hard 2 GiB message limit.
EXTERNAL_DATA_BYTES = 1 << 30

# Operators TensorRT 10's ONNX parser supports (onnx-tensorrt docs/operators.md, TensorRT 10.0:
# every operator marked "Y"). A graph using anything else is refused at export time rather
# than at engine-build time on the GPU host.
TRT10_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Resize restrictions from the same table: only these modes, and no antialiasing.
TRT10_RESIZE_MODES = frozenset({"nearest", "linear"})

GRAPH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Spec input kinds that stay fp32 in a reduced-precision graph: the time embeddings are computed
# from fp32 values and only the embedding is cast, as under the reference's autocast.
FP32_INPUT_KINDS = frozenset({"timestep", "time_ids"})
FP32_MODULES = (nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class OnnxArtefact:
    file: str                    # graph file name, relative to the artefact folder
    external_data: list[str]     # weight files the graph refers to (empty when embedded)
    sha256: str                  # digest over the graph and its external data
    opset: int
    precision: str               # GRAPH_DTYPES key: the type of its weights and activations
    nodes: int
    seconds: float


def graph_file_name(network: str, precision: str) -> str:
    return f"{network}.onnx" if precision == "fp32" else f"{network}.{precision}.onnx"


class TypedExport(nn.Module):
    """`module` (a copy in a reduced precision) behind fp32 I/O: floating inputs are cast to
    `dtype` on entry, except those listed in `keep_fp32`, and every output back to fp32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, keep_fp32: tuple[bool, ...]):
        super().__init__()
        self.module, self.dtype, self.keep_fp32 = module, dtype, keep_fp32

    def forward(self, *inputs: torch.Tensor):
        cast = [x if keep else x.to(self.dtype) for x, keep in zip(inputs, self.keep_fp32)]
        out = self.module(*cast)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def _fp32_input(norm: nn.Module, args: tuple) -> tuple:
    return (args[0].float(), *args[1:])


class _CastOutput:
    """Forward hook: a normalisation's fp32 result goes back into the graph's activation type."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, norm: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.to(self.dtype)


def module_in_precision(spec: NetworkSpec, module: nn.Module, precision: str) -> nn.Module:
    """The export wrapper `module` as the graph of `precision` computes it (itself for fp32).

    A reduced-precision copy: floating weights and buffers converted while copying (the fp32
    originals, shared with the other networks, are untouched and never duplicated in fp32),
    except the FP32_MODULES' own weights, which run in fp32 on fp32 inputs."""
    if precision not in GRAPH_DTYPES:
        raise ExportError(f"graph precision {precision!r} is not one of {tuple(GRAPH_DTYPES)}")
    if precision == "fp32":
        return module
    dtype = GRAPH_DTYPES[precision]
    kept = {id(t) for m in module.modules() if isinstance(m, FP32_MODULES) for t in m.parameters()}
    converted = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and id(tensor) not in kept:
            value = tensor.detach().to(dtype)
            converted[id(tensor)] = nn.Parameter(value, requires_grad=False) \
                if isinstance(tensor, nn.Parameter) else value
    typed = copy.deepcopy(module, memo=converted)     # deepcopy takes memo hits as they are
    for norm in typed.modules():
        if isinstance(norm, FP32_MODULES):
            norm.register_forward_pre_hook(_fp32_input)
            norm.register_forward_hook(_CastOutput(dtype))
    keep_fp32 = tuple(t.kind in FP32_INPUT_KINDS for t in spec.inputs)
    return TypedExport(typed, dtype, keep_fp32).eval()


def _legacy_export(module, args, path: Path, spec: NetworkSpec, opset: int) -> None:
    kwargs = dict(input_names=spec.input_names, output_names=spec.output_names,
                  opset_version=opset, do_constant_folding=True)
    # torch >= 2.5 defaults to (or offers) the dynamo exporter; 2.4 has only the legacy one.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), **kwargs)


def export_onnx(spec: NetworkSpec, module: torch.nn.Module, directory: Path, opset: int = OPSET,
                simplify: bool = True, precision: str = "fp32") -> OnnxArtefact:
    """Export `module` (pure tensors in/out, spec order, fp32) in `precision` to
    directory/`graph_file_name(spec.name, precision)`."""
    import onnx

    started = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / f".{spec.name}.export"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        device = next(module.parameters()).device
        inputs = {k: v.to(device) for k, v in spec.sample_inputs(seed=0).items()}
        raw = scratch / "raw.onnx"
        module.eval()
        graph_module = module_in_precision(spec, module, precision)
        _legacy_export(graph_module, tuple(inputs[n] for n in spec.input_names), raw, spec, opset)
        del graph_module
        model = onnx.load(str(raw))           # pulls in external data the exporter may write
        if simplify:
            model = _simplified(model)
        name = graph_file_name(spec.name, precision)
        external = _save(model, scratch / name)
        check_onnx_file(scratch / name, spec)
        nodes = len(model.graph.node)
        del model
        for file in [name, *external]:        # only complete, checked graphs reach the folder
            os.replace(scratch / file, directory / file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return OnnxArtefact(file=name, external_data=external,
                        sha256=artefact_sha256(directory, [name, *external]), opset=opset,
                        precision=precision, nodes=nodes, seconds=time.perf_counter() - started)


def _simplified(model):
    """onnxslim's constant folding and dead-node removal, kept only when it shrinks the graph.
    Graphs whose weights need external data are left as exported: onnxslim's in-memory passes
    serialise the model, which protobuf refuses above 2 GB."""
    if sum(t.ByteSize() for t in model.graph.initializer) >= EXTERNAL_DATA_BYTES:
        return model
    try:
        import onnxslim
    except ImportError:
        return model
    slim = onnxslim.slim(model)
    return slim if slim is not None and len(slim.graph.node) <= len(model.graph.node) else model


def _save(model, path: Path) -> list[str]:
    import onnx

    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size < EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path))
        return []
    data = f"{path.name}.data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return [data]


def check_onnx_file(path: Path, spec: NetworkSpec | None = None) -> None:
    """Checker, shape inference against the spec, and the TensorRT 10 op set; ExportError if not."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path))
        inferred_path = path.with_name(path.name + ".inferred")
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path))
        model = onnx.load(str(inferred_path), load_external_data=False)
        inferred_path.unlink()
    except Exception as err:   # onnx raises several unrelated types for a broken file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: not a valid ONNX graph ({first})") from None
    bad = unsupported_ops(model)
    if bad:
        raise ExportError(f"{path}: ops TensorRT 10 does not support: {', '.join(bad)}")
    if spec is not None:
        _check_io(model, spec, path)


def unsupported_ops(model) -> list[str]:
    """Sorted descriptions of nodes TensorRT 10 cannot parse (op type, or restricted attribute)."""
    import onnx

    bad = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in TRT10_SUPPORTED_OPS:
            bad.add(node.op_type)
        elif node.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            mode = attrs.get("mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode not in TRT10_RESIZE_MODES:
                bad.add(f"Resize(mode={mode})")
            if attrs.get("antialias", 0):
                bad.add("Resize(antialias=1)")
    return sorted(bad)


def _check_io(model, spec: NetworkSpec, path: Path) -> None:
    """Names, static shapes and element types (the spec's: fp32 in every graph precision)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    def table(values):
        return {v.name: (tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
                         tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name)
                for v in values}

    initializers = {t.name for t in model.graph.initializer}
    found_in = {k: v for k, v in table(model.graph.input).items() if k not in initializers}
    want_in = {t.name: (tuple(t.shape), t.dtype) for t in spec.inputs}
    found_out = table(model.graph.output)
    want_out = {t.name: (tuple(t.shape), t.dtype) for t in spec.outputs}
    if found_in != want_in:
        raise ExportError(f"{path}: graph inputs {found_in} differ from the {spec.name} spec {want_in}")
    if found_out != want_out:
        raise ExportError(f"{path}: graph outputs {found_out} differ from the {spec.name} spec "
                          f"{want_out}")
