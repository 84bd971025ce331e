"""Strongly typed TensorRT builds (export/trt_build.py) and the reduced-precision ONNX graphs they
are built from (export/onnx_export.py).

TensorRT is not installed here, so `build_engine` is driven with stand-in `tensorrt` modules that
have the 10.12 and the 11.0 API surface (the members the builder uses, with those versions' enum
values) and record every call; the graphs they parse are real exports. Real fp16 engines
against ONNX Runtime: tests/export/test_backend_trt.py (skips without TensorRT and a GPU)."""

import enum
import sys
import types
from functools import partial

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from ort3d.export.build import BuildOptions, build_artefacts
from ort3d.export.errors import ExportError
from ort3d.export.manifest import read_manifest
from ort3d.export.onnx_export import export_onnx, module_in_precision
from ort3d.export.specs import NETWORK_NAMES, NetworkSpec, TensorSpec, network_specs
from ort3d.export.trt_build import (build_engine, engine_precision, tensorrt_missing_reason,
                                    tensorrt_version_problem, timing_cache_path)
from ort3d.export.verify import FP16_RELATIVE_TOLERANCE, FP32_RELATIVE_TOLERANCE, verify_network
from ort3d.models.presets import TINY

H100_TRT11 = {"tensorrt_version": "11.0.0.14", "gpu_name": "NVIDIA H100 80GB HBM3",
              "compute_capability": "9.0"}


# ----------------------------------------------------------------------------- stand-in TensorRT

def fake_tensorrt(version: str, parse_error: str | None = None,
                  plan: bytes | None = b"serialized plan") -> types.ModuleType:
    """A `tensorrt` module with the members build_engine may touch, as `version` has them.

    Enum values are TensorRT's own (NvInfer.h): STRONGLY_TYPED is 1 in 10.x and 0 in 11.0, and
    11.0 has no FP16/BF16/INT8 builder flags at all, so using one raises AttributeError.
    parse_error: the parser fails with this error; plan: what the build returns (None: failure)."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    record = trt.calls.append
    trt.DataType = enum.Enum("DataType", {"FLOAT": 0, "HALF": 1, "INT32": 3, "BOOL": 4, "BF16": 7,
                                          "INT64": 8})
    elem_types = {TensorProto.FLOAT: trt.DataType.FLOAT, TensorProto.FLOAT16: trt.DataType.HALF,
                  TensorProto.BFLOAT16: trt.DataType.BF16, TensorProto.INT64: trt.DataType.INT64}
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag",
            {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2})
        trt.BuilderFlag = enum.Enum("BuilderFlag", {"DEBUG": 2, "REFIT": 4, "TF32": 6})
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag",
            {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2,
             "PREFER_AOT_PYTHON_PLUGINS": 3})
        trt.BuilderFlag = enum.Enum("BuilderFlag", {"FP16": 0, "INT8": 1, "DEBUG": 2, "REFIT": 4,
                                                    "TF32": 6, "BF16": 17})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", {"WORKSPACE": 0})

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            record(("Logger", severity))

    class Tensor:
        def __init__(self, value_info):
            tensor_type = value_info.type.tensor_type
            self.name = value_info.name
            self.shape = tuple(d.dim_value for d in tensor_type.shape.dim)
            self.dtype = elem_types[tensor_type.elem_type]

    class Network:
        def __init__(self, flags):
            self.inputs, self.outputs = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, index):
            return self.inputs[index]

        def get_output(self, index):
            return self.outputs[index]

    class OnnxParser:
        """Fills the network's I/O from the graph file (what a strongly typed parse yields)."""

        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            record(("parse_from_file", path))
            if parse_error is not None:
                self.num_errors = 1
                return False
            graph = onnx.load(path, load_external_data=False).graph
            initializers = {t.name for t in graph.initializer}
            self.network.inputs = [Tensor(v) for v in graph.input if v.name not in initializers]
            self.network.outputs = [Tensor(v) for v in graph.output]
            return True

        def get_error(self, index):
            return parse_error

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(b"timing cache after " + self.data)

    class Profile:
        def set_shape(self, name, low, opt, high):
            record(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            record(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            record(("set_flag", flag.name))

        def clear_flag(self, flag):
            record(("clear_flag", flag.name))

        def add_optimization_profile(self, profile):
            record(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, data):
            record(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            record(("set_timing_cache", ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            record(("Builder",))

        def create_network(self, flags=0):
            record(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record(("build_serialized_network",))
            return None if plan is None else memoryview(plan)

    trt.Logger, trt.OnnxParser, trt.Builder = Logger, OnnxParser, Builder
    return trt


def _calls(trt, name):
    return [call[1:] for call in trt.calls if call[0] == name]


# ----------------------------------------------------------------------------- versions

@pytest.mark.parametrize("version", ["10.12.0.36", "10.16.1.11", "11.0.0.14", "11.1.0.106"])
def test_tensorrt_10_12_and_newer_are_accepted(version):
    assert tensorrt_version_problem(version) is None


@pytest.mark.parametrize("version", ["10.11.0.33", "10.3.0", "9.3.0.post12.dev1", "8.6.1"])
def test_older_tensorrt_is_refused_in_one_line(version):
    problem = tensorrt_version_problem(version)
    assert f"TensorRT {version} is installed" in problem and "10.12 or newer" in problem
    assert "\n" not in problem


def test_unreadable_version_is_refused():
    assert "not 'major.minor...'" in tensorrt_version_problem("unknown")


@pytest.mark.parametrize("version", ["10.11.0.33", "9.3.0.post12.dev1"])
def test_build_engine_refuses_old_tensorrt_before_any_call(version, tmp_path):
    trt = fake_tensorrt(version)
    spec = network_specs(TINY)["adapters"]
    with pytest.raises(ExportError, match="need TensorRT 10.12 or newer") as info:
        build_engine(tmp_path / "adapters.onnx", spec, [], tmp_path / "adapters.plan",
                     tmp_path / "cache", trt=trt)
    assert "\n" not in str(info.value) and trt.calls == []
    assert not (tmp_path / "adapters.plan").exists()


def test_installed_old_tensorrt_is_the_missing_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.11.0.33"))
    assert "TensorRT 10.11.0.33 is installed" in tensorrt_missing_reason()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.12.0.36"))
    reason = tensorrt_missing_reason()        # the version passes; only CUDA can be missing
    assert reason is None or reason == "no CUDA device is visible to PyTorch"


# ----------------------------------------------------------------------------- precision policy

def test_fp16_keeps_the_overflowing_vae_in_fp32_with_tf32():
    specs = network_specs(TINY)
    for name in NETWORK_NAMES:
        expected = "fp32" if specs[name].fp16_overflows else "fp16"
        assert engine_precision(specs[name], "fp16") == (expected, ["TF32"]), name
        assert engine_precision(specs[name], "fp32") == ("fp32", []), name
    assert {n for n in NETWORK_NAMES if specs[n].fp16_overflows} == {"vae_encoder", "vae_decoder"}


def test_bf16_engines_are_refused_in_one_line():
    with pytest.raises(ExportError, match=r"--precision: 'bf16' is not one of \('fp16', 'fp32'\)"):
        engine_precision(network_specs(TINY)["unet"], "bf16")


def test_timing_cache_is_per_tensorrt_version_and_gpu(tmp_path):
    h100 = {"tensorrt_version": "10.12.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    path = timing_cache_path(tmp_path, h100)
    assert path.parent == tmp_path and path.name == "trt-10.12.0_nvidia-h100-80gb-hbm3_sm90.timing-cache"
    assert timing_cache_path(tmp_path, {**h100, "tensorrt_version": "11.0.0"}) != path
    assert timing_cache_path(tmp_path, {**h100, "gpu_name": "NVIDIA A100"}) != path


# ----------------------------------------------------------------------------- reduced-precision graphs

@pytest.fixture(scope="module")
def fp16_image_encoder(tiny_models, tmp_path_factory):
    """The tiny image encoder exported as an fp16 graph (LayerNorms, attention, GEMMs)."""
    spec = network_specs(TINY)["image_encoder"]
    module = spec.module_for_export(tiny_models).eval()
    out = tmp_path_factory.mktemp("fp16_graph")
    artefact = export_onnx(spec, module, out, precision="fp16")
    return types.SimpleNamespace(spec=spec, module=module, dir=out, artefact=artefact,
                                 path=out / artefact.file)


def _value_types(path):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    types_by_name = {v.name: v.type.tensor_type.elem_type
                     for v in (*graph.value_info, *graph.input, *graph.output)}
    types_by_name.update({t.name: t.data_type for t in graph.initializer})
    return graph, types_by_name


def test_fp16_graph_has_fp16_weights_fp32_io_and_fp32_layernorms(fp16_image_encoder):
    artefact = fp16_image_encoder.artefact
    assert artefact.file == "image_encoder.fp16.onnx" and artefact.precision == "fp16"
    graph, value_types = _value_types(fp16_image_encoder.path)
    weights = [t for t in graph.initializer if t.dims and t.data_type != TensorProto.INT64]
    fp16_bytes = sum(t.ByteSize() for t in weights if t.data_type == TensorProto.FLOAT16)
    fp32_bytes = sum(t.ByteSize() for t in weights if t.data_type == TensorProto.FLOAT)
    assert fp16_bytes > 10 * fp32_bytes        # fp32 is left only for the normalisations
    assert {value_types[v.name] for v in (*graph.input, *graph.output)} == {TensorProto.FLOAT}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(value_types[n.input[0]] == TensorProto.FLOAT for n in norms)
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmuls and all(value_types[n.input[0]] == TensorProto.FLOAT16 for n in matmuls)


def test_fp16_graph_matches_the_fp16_module_in_onnx_runtime(fp16_image_encoder):
    g = fp16_image_encoder
    rows = verify_network(g.spec, g.module, g.path, seed=3, precision="fp16")
    assert rows and all(row.passed for row in rows), rows
    # Really fp16: against the fp32 module it is off by fp16 rounding, far above the fp32 bar.
    inputs = g.spec.sample_inputs(3)
    with torch.no_grad():
        fp32 = g.module(*inputs.values())
        fp16 = module_in_precision(g.spec, g.module, "fp16")(*inputs.values())
    assert fp16.dtype == torch.float32
    rel = ((fp16 - fp32).norm() / fp32.norm()).item()
    assert FP32_RELATIVE_TOLERANCE < rel < FP16_RELATIVE_TOLERANCE


def test_fp16_copy_leaves_the_shared_fp32_weights_alone(fp16_image_encoder):
    g = fp16_image_encoder
    before = {k: v.clone() for k, v in g.module.state_dict().items()}
    module_in_precision(g.spec, g.module, "fp16")
    after = g.module.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert module_in_precision(g.spec, g.module, "fp32") is g.module


class _ConvNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 64, 3, padding=1)
        self.norm = nn.GroupNorm(32, 64)

    def forward(self, x, timestep):
        return self.norm(self.conv(x)) + timestep


def test_groupnorm_and_timestep_stay_fp32_in_an_fp16_graph(tmp_path):
    spec = NetworkSpec("probe", (TensorSpec("x", (1, 4, 8, 8)),
                                 TensorSpec("timestep", (1,), kind="timestep")),
                       (TensorSpec("y", (1, 64, 8, 8)),))
    torch.manual_seed(0)
    module = _ConvNorm().eval()
    typed = module_in_precision(spec, module, "fp16")
    assert typed.module.conv.weight.dtype == torch.float16
    assert typed.module.norm.weight.dtype == torch.float32
    artefact = export_onnx(spec, module, tmp_path, precision="fp16", simplify=False)
    graph, value_types = _value_types(tmp_path / artefact.file)
    conv = next(n for n in graph.node if n.op_type == "Conv")
    norm = next(n for n in graph.node if n.op_type == "InstanceNormalization")
    assert value_types[conv.output[0]] == TensorProto.FLOAT16
    assert value_types[norm.input[0]] == TensorProto.FLOAT      # statistics in fp32
    casts = [n for n in graph.node if n.op_type == "Cast" and n.input[0] == "timestep"]
    assert casts == []                                           # the timestep enters as fp32


# ----------------------------------------------------------------------------- build_engine calls

@pytest.mark.parametrize("version, strongly_typed_bit", [("10.12.0.36", 1), ("11.0.0.14", 0)])
@pytest.mark.parametrize("flags", [["TF32"], []], ids=["tf32", "no-tf32"])
def test_strongly_typed_build_calls(version, strongly_typed_bit, flags, fp16_image_encoder, tmp_path):
    trt = fake_tensorrt(version)
    spec, cache = fp16_image_encoder.spec, tmp_path / "caches" / "trt.timing-cache"
    cache.parent.mkdir()
    cache.write_bytes(b"earlier")
    build_engine(fp16_image_encoder.path, spec, flags, tmp_path / "image_encoder.plan", cache,
                 workspace_bytes=1 << 30, trt=trt)
    assert _calls(trt, "create_network") == [(1 << strongly_typed_bit,)]
    assert _calls(trt, "parse_from_file") == [(str(fp16_image_encoder.path),)]
    assert _calls(trt, "set_memory_pool_limit") == [("WORKSPACE", 1 << 30)]
    assert _calls(trt, "set_flag") == ([("TF32",)] if flags else [])
    assert _calls(trt, "clear_flag") == ([] if flags else [("TF32",)])
    assert _calls(trt, "set_shape") == [(t.name, t.shape, t.shape, t.shape) for t in spec.inputs]
    assert _calls(trt, "create_timing_cache") == [(b"earlier",)]
    assert _calls(trt, "set_timing_cache") == [(False,)]
    assert (tmp_path / "image_encoder.plan").read_bytes() == b"serialized plan"
    assert cache.read_bytes() == b"timing cache after earlier"


def test_no_precision_builder_flag_exists_in_tensorrt_11():
    trt = fake_tensorrt("11.0.0.14")
    assert not any(hasattr(trt.BuilderFlag, f) for f in ("FP16", "BF16", "INT8"))


def test_weak_typing_flags_are_refused(fp16_image_encoder, tmp_path):
    trt = fake_tensorrt("10.12.0.36")
    with pytest.raises(ExportError, match="'FP16' is not one of .*strongly typed"):
        build_engine(fp16_image_encoder.path, fp16_image_encoder.spec, ["FP16"],
                     tmp_path / "x.plan", tmp_path / "cache", trt=trt)
    assert trt.calls == []


def test_parser_and_builder_failures_are_one_line_and_write_nothing(fp16_image_encoder, tmp_path):
    args = (fp16_image_encoder.path, fp16_image_encoder.spec, ["TF32"], tmp_path / "e.plan",
            tmp_path / "cache")
    trt = fake_tensorrt("11.0.0.14", parse_error="In node 7 (Conv): UNSUPPORTED_NODE")
    with pytest.raises(ExportError, match="parser rejected the graph: In node 7 .Conv.") as info:
        build_engine(*args, trt=trt)
    assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match="TensorRT failed to build an engine"):
        build_engine(*args, trt=fake_tensorrt("11.0.0.14", plan=None))
    assert not (tmp_path / "e.plan").exists() and not (tmp_path / "cache").exists()


def test_graph_io_must_be_the_specs_fp32_tensors(fp16_image_encoder, tmp_path):
    spec = fp16_image_encoder.spec
    embeds = spec.outputs[0]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["image_embeds"])], "typed_io",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, spec.inputs[0].shape)],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT16, embeds.shape)])
    path = tmp_path / "fp16_output.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ExportError, match="graph outputs .*HALF.* differ from the image_encoder spec"):
        build_engine(path, spec, ["TF32"], tmp_path / "e.plan", tmp_path / "cache",
                     trt=fake_tensorrt("10.12.0.36"))


# ----------------------------------------------------------------------------- through the build

def test_engine_build_exports_graphs_in_the_engine_precision(tiny_models, tmp_path):
    trt = fake_tensorrt(H100_TRT11["tensorrt_version"])
    out, logs = tmp_path / "set", []
    options = BuildOptions(networks=("image_encoder", "vae_encoder"), verify=True, verify_seed=2)
    report = build_artefacts(tiny_models, out, options, log=logs.append, identity=H100_TRT11,
                             engine_builder=partial(build_engine, trt=trt))
    assert all(row.passed for row in report.verify_rows), report.verify_rows
    networks = read_manifest(out)["networks"]
    image, vae = networks["image_encoder"], networks["vae_encoder"]
    assert (image["onnx"]["file"], image["onnx"]["precision"]) == ("image_encoder.fp16.onnx", "fp16")
    assert image["onnx"]["key"]["precision"] == "fp16"
    assert (image["engine"]["precision"], image["engine"]["key"]["precision_flags"]) == ("fp16", ["TF32"])
    assert (vae["onnx"]["file"], vae["onnx"]["precision"]) == ("vae_encoder.onnx", "fp32")
    assert (vae["engine"]["precision"], vae["engine"]["key"]["precision_flags"]) == ("fp32", ["TF32"])
    assert _calls(trt, "parse_from_file") == [(str(out / "image_encoder.fp16.onnx"),),
                                              (str(out / "vae_encoder.onnx"),)]
    assert not any(c[0] == "set_flag" and c[1] in ("FP16", "BF16") for c in trt.calls)

    # ONNX Runtime wants fp32: an ONNX-only rebuild exports the fp32 graph as a new artefact and
    # drops the engine built from the fp16 one; the VAE's fp32 graph and engine are kept.
    report = build_artefacts(tiny_models, out, BuildOptions(networks=options.networks,
                                                            onnx_only=True), log=logs.append)
    assert "key changed: precision: 'fp16' -> 'fp32'" in report.decisions["image_encoder"]["onnx"].reason
    assert report.decisions["vae_encoder"]["onnx"].reuse
    networks = read_manifest(out)["networks"]
    assert networks["image_encoder"]["onnx"]["file"] == "image_encoder.onnx"
    assert networks["image_encoder"]["engine"] is None
    assert networks["vae_encoder"]["engine"] == vae["engine"]
    assert (out / "image_encoder.fp16.onnx").is_file()      # the fp16 file was never overwritten
