"""Bad artefact sets give one clear line naming the file and field, before any ONNX Runtime
session or TensorRT deserialisation: corrupt graphs and engines, a manifest from another ort3d
version, engines for another GPU or TensorRT version, a set missing a network. The engine
identity fields are faked in the manifest (no TensorRT or GPU here)."""

import json

import pytest

from ort3d.export import trt_build
from ort3d.export.build import engine_key
from ort3d.export.cache import artefact_sha256
from ort3d.export.errors import ExportError
from ort3d.export.manifest import MANIFEST_NAME, check_engine_set, read_manifest
from ort3d.export.specs import NETWORK_NAMES, network_specs
from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.presets import FULL, TINY
from ort3d.runtime.backend_ort import OrtNetworks

H100 = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _edit_manifest(directory, edit):
    path = directory / MANIFEST_NAME
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _one_line_error(call, *fragments):
    with pytest.raises(ExportError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def engine_set(artefact_copy):
    """The tiny ONNX set plus stand-in engine files recorded as built on an H100."""
    specs = network_specs(TINY)

    def add_engines(document):
        for name in NETWORK_NAMES:
            (artefact_copy / f"{name}.plan").write_bytes(f"plan of {name}".encode())
            onnx_sha = document["networks"][name]["onnx"]["sha256"]
            document["networks"][name]["engine"] = {
                "file": f"{name}.plan", "sha256": artefact_sha256(artefact_copy, [f"{name}.plan"]),
                "precision": "fp16", "key": engine_key(specs[name], onnx_sha, ["TF32"], H100)}

    _edit_manifest(artefact_copy, add_engines)
    return artefact_copy


def _check(directory, identity=H100):
    check_engine_set(read_manifest(directory), directory, NETWORK_NAMES, identity)


def test_a_matching_engine_set_passes(engine_set):
    _check(engine_set)


@pytest.mark.parametrize("field, value", [("gpu_name", "NVIDIA A100-SXM4-80GB"),
                                          ("tensorrt_version", "10.7.0"),
                                          ("compute_capability", "8.0")])
def test_engines_for_another_gpu_or_tensorrt_are_refused(engine_set, field, value):
    _one_line_error(lambda: _check(engine_set, {**H100, field: value}), str(engine_set / MANIFEST_NAME),
                    f"networks.image_encoder.engine.key.{field}", value, "rebuild")


def test_manifest_from_another_ort3d_version_is_refused(engine_set):
    _edit_manifest(engine_set, lambda d: d.update(ort3d_version="0.0.1"))
    _one_line_error(lambda: _check(engine_set), "ort3d_version is '0.0.1'")
    _one_line_error(lambda: OrtNetworks(engine_set), MANIFEST_NAME, "ort3d_version is '0.0.1'")


def test_engine_from_another_ort3d_version_is_refused(engine_set):
    _edit_manifest(engine_set, lambda d: d["networks"]["lgm"]["engine"]["key"].update(ort3d_version="0.0.1"))
    _one_line_error(lambda: _check(engine_set), "networks.lgm.engine.key.ort3d_version")


def test_a_set_missing_a_network_is_refused(engine_set):
    _edit_manifest(engine_set, lambda d: d["networks"].pop("lgm"))
    _one_line_error(lambda: _check(engine_set), "networks.lgm is missing")
    _one_line_error(lambda: OrtNetworks(engine_set), "networks.lgm is missing")


def test_corrupt_or_missing_engine_file_is_refused(engine_set):
    (engine_set / "unet.plan").write_bytes(b"\x00garbage")
    _one_line_error(lambda: _check(engine_set), str(engine_set / "unet.plan"),
                    "sha256 does not match networks.unet.engine.sha256")
    (engine_set / "unet.plan").unlink()
    _one_line_error(lambda: _check(engine_set), "unet.plan", "networks.unet.engine is missing")


def test_onnx_only_set_has_no_engines(artefact_copy):
    _one_line_error(lambda: _check(artefact_copy), "networks.image_encoder.engine is null")


def test_corrupt_onnx_is_refused_before_onnx_runtime_sees_it(artefact_copy):
    path = artefact_copy / "unet.onnx"
    path.write_bytes(path.read_bytes()[: 1000])
    _one_line_error(lambda: OrtNetworks(artefact_copy), str(path),
                    "sha256 does not match networks.unet.onnx.sha256")
    # Even with hash checks off, ONNX Runtime's failure becomes one line naming the file.
    _one_line_error(lambda: OrtNetworks(artefact_copy, verify_hashes=False), str(path),
                    "ONNX Runtime cannot load the graph")


def test_manifest_that_is_not_json_is_refused(artefact_copy):
    (artefact_copy / MANIFEST_NAME).write_text("{ truncated")
    _one_line_error(lambda: OrtNetworks(artefact_copy), MANIFEST_NAME, "not valid JSON")
    (artefact_copy / MANIFEST_NAME).unlink()
    _one_line_error(lambda: OrtNetworks(artefact_copy), "no engine-set manifest here")


def test_set_for_other_shapes_or_options_is_refused(artefact_copy):
    _one_line_error(lambda: OrtNetworks(artefact_copy, preset=FULL),
                    "networks.image_encoder.inputs", "preset 'full'")
    _one_line_error(lambda: OrtNetworks(artefact_copy, temporal_context="per-half"),
                    "networks.unet.options.temporal_context")


def test_other_cameras_are_refused(artefact_copy):
    nets = OrtNetworks(artefact_copy)
    cams = load_feedback_cameras()
    cams.c2w[0, 0, 3] += 0.5
    clip = network_specs(TINY)["unet"].sample_inputs(0)["encoder_hidden_states"]
    _one_line_error(lambda: nets.set_conditioning(clip, cams), "networks.unet.options.cameras_sha256")


def test_tensorrt_backend_without_tensorrt_says_why(artefact_copy):
    reason = trt_build.tensorrt_missing_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the missing-TensorRT message cannot occur")
    from ort3d.runtime.backend_trt import TrtNetworks

    _one_line_error(lambda: TrtNetworks(artefact_copy), "TensorRT backend unavailable", reason)
