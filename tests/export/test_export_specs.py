"""Network specs (shapes per preset, names, sample inputs) and the TensorRT 10 op check:
everything that needs no exported graph (engine precision and timing caches:
tests/export/test_trt_build.py)."""

import dataclasses
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from ort3d.export.errors import ExportError
from ort3d.export.onnx_export import check_onnx_file, unsupported_ops
from ort3d.export.specs import (
    ImageEncoderExport, NETWORK_NAMES, adapter_feature_names, cameras_sha256, network_specs,
)
from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.clip import resize_with_antialiasing
from ort3d.models.presets import FULL, TINY


def _shapes(spec, side="inputs"):
    return {t.name: tuple(t.shape) for t in getattr(spec, side)}


def test_tiny_specs_have_the_loop_shapes():
    specs = network_specs(TINY)
    assert tuple(specs) == NETWORK_NAMES
    views, size, s = 8, 128, 16
    width, widths = TINY.unet["cross_attention_dim"], TINY.adapter_channels
    unet = _shapes(specs["unet"])
    assert unet["sample"] == (2, views, 8, s, s) and unet["timestep"] == (1,)
    assert unet["encoder_hidden_states"] == (2, 1, width) and unet["added_time_ids"] == (2, 3)
    for kind in ("rgb", "ccm"):
        assert [unet[f"{kind}_feat_{i}"] for i in range(4)] == [
            (views, widths[i], s >> i, s >> i) for i in range(4)]
    assert _shapes(specs["unet"], "outputs") == {"noise_pred": (2, views, 4, s, s)}
    assert _shapes(specs["adapters"]) == {"rgb": (views, 192, s, s), "ccm": (views, 192, s, s)}
    assert _shapes(specs["vae_decoder"]) == {"latents": (views, 4, s, s)}
    assert _shapes(specs["vae_decoder"], "outputs") == {"images": (views, 3, size, size)}
    assert _shapes(specs["lgm"]) == {"images": (1, views, 3, size, size), "timestep": (1,)}
    assert _shapes(specs["lgm"], "outputs") == {"gaussians": (1, 4 * 32 * 32, 14)}
    assert _shapes(specs["image_encoder"], "outputs") == {"image_embeds": (1, 1, width)}
    assert _shapes(specs["vae_encoder"], "outputs") == {"latent": (1, 4, s, s)}


def test_full_specs_have_the_released_shapes():
    specs = network_specs(FULL)
    unet = _shapes(specs["unet"])
    assert unet["sample"] == (2, 8, 8, 64, 64) and unet["encoder_hidden_states"] == (2, 1, 1024)
    assert unet["rgb_feat_0"] == (8, 320, 64, 64) and unet["ccm_feat_3"] == (8, 1280, 8, 8)
    assert _shapes(specs["lgm"], "outputs") == {"gaussians": (1, 65536, 14)}
    assert _shapes(specs["vae_decoder"], "outputs") == {"images": (8, 3, 512, 512)}
    assert _shapes(specs["image_encoder"], "outputs") == {"image_embeds": (1, 1, 1024)}


def test_adapter_outputs_are_the_unet_feature_inputs():
    specs = network_specs(TINY)
    assert specs["adapters"].output_names == adapter_feature_names()
    unet_inputs = _shapes(specs["unet"])
    for name, shape in _shapes(specs["adapters"], "outputs").items():
        assert unet_inputs[name] == shape


def test_sample_inputs_are_seeded_and_in_range():
    spec = network_specs(TINY)["unet"]
    a, b, c = spec.sample_inputs(3), spec.sample_inputs(3), spec.sample_inputs(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["sample"], c["sample"])
    assert -1.6 <= a["timestep"].item() <= 1.6
    ids = a["added_time_ids"]
    assert ids.shape == (2, 3) and (ids[:, 1] > 80).all()      # around motion bucket 127
    rgb = network_specs(TINY)["adapters"].sample_inputs(0)["rgb"]
    assert 0 <= rgb.min() and rgb.max() <= 1


def test_camera_and_q1_options_are_recorded():
    cams = load_feedback_cameras()
    specs = network_specs(TINY, temporal_context="per-half", cameras=cams)
    assert specs["unet"].options["temporal_context"] == "per-half"
    assert network_specs(TINY, cameras=cams)["unet"].options["temporal_context"] == "interleaved"
    assert specs["unet"].options["cameras_sha256"] == specs["lgm"].options["cameras_sha256"]
    moved = dataclasses.replace(cams, c2w=cams.c2w.clone())
    moved.c2w[3, 0, 3] += 1e-3
    assert cameras_sha256(moved) != cameras_sha256(cams)


def test_image_encoder_resize_matrices_equal_the_eager_resize():
    class Encoder(torch.nn.Module):
        image_size = 56

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(1, 3, 1, 1))

    wrapper = ImageEncoderExport(Encoder(), 128)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = resize_with_antialiasing(x.double(), (56, 56))
    eager = resize_with_antialiasing(x, (56, 56))
    matrix = wrapper.resize_h @ x @ wrapper.resize_w.T
    # Same linear map: against the float64 resize the matrix form has only the float32
    # rounding of one product per axis (measured 1.1e-7 on values up to 0.87), below the
    # eager float32 blur + bicubic (5.4e-6).
    matrix_error = (matrix - exact).abs().max().item()
    assert matrix_error < 5e-7
    assert matrix_error <= (eager - exact).abs().max().item()


def _graph_with(nodes, path: Path) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
        initializer=[helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_ops_tensorrt_10_cannot_parse_are_errors(tmp_path):
    cubic = helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="cubic")
    unique = helper.make_node("Unique", ["r"], ["y"])
    path = _graph_with([cubic, unique], tmp_path / "bad.onnx")
    assert unsupported_ops(onnx.load(str(path))) == ["Resize(mode=cubic)", "Unique"]
    with pytest.raises(ExportError, match=r"bad\.onnx: ops TensorRT 10 does not support: "
                                          r"Resize\(mode=cubic\), Unique"):
        check_onnx_file(path)


def test_supported_graph_passes_the_op_check(tmp_path):
    linear = helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="linear")
    relu = helper.make_node("Relu", ["r"], ["y"])
    path = _graph_with([linear, relu], tmp_path / "good.onnx")
    check_onnx_file(path)
    assert unsupported_ops(onnx.load(str(path))) == []


def test_corrupt_onnx_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "unet.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ExportError, match=r"unet\.onnx: not a valid ONNX graph") as info:
        check_onnx_file(path)
    assert "\n" not in str(info.value)

