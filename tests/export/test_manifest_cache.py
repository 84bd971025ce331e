"""The manifest against its JSON schema, and the content-keyed cache: an unchanged key reuses
the artefacts, each changed key field (or a changed file) forces a rebuild, and a file that
merely exists is never reused. Engines come from a stand-in builder (TensorRT is not here);
the cache logic and the manifest under test are the real ones."""

import copy
import dataclasses
import json

import jsonschema
import pytest
import torch

from ort3d.export.build import BuildOptions, build_artefacts
from ort3d.export.atomic import atomic_write
from ort3d.export.cache import ENGINE_KEY_FIELDS, artefact_sha256, decide
from ort3d.export.errors import ExportError
from ort3d.export.manifest import MANIFEST_NAME, first_schema_error, load_schema, read_manifest
from ort3d.export.specs import NETWORK_NAMES, network_specs
from ort3d.models.presets import TINY
from ort3d.models.version import __version__

H100 = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_built_manifest_follows_the_schema_and_records_the_set(tiny_artefacts, tiny_models):
    document = json.loads((tiny_artefacts.dir / MANIFEST_NAME).read_text())
    jsonschema.validate(document, load_schema())
    assert first_schema_error(document, load_schema()) is None
    assert document["ort3d_version"] == __version__ and document["preset"] == "tiny"
    assert document["schedule"] == dataclasses.asdict(tiny_models.schedule)
    specs = network_specs(TINY)
    assert list(document["networks"]) == list(NETWORK_NAMES)
    for name, entry in document["networks"].items():
        assert entry["inputs"] == specs[name].io_table()["inputs"]
        assert entry["outputs"] == specs[name].io_table()["outputs"]
        onnx_entry = entry["onnx"]
        assert onnx_entry["sha256"] == artefact_sha256(tiny_artefacts.dir, [onnx_entry["file"]])
        assert onnx_entry["key"]["ort3d_version"] == __version__
        assert entry["engine"] is None          # ONNX-only set


BROKEN = [
    (lambda d: d["networks"]["unet"]["onnx"].pop("sha256"), "networks.unet.onnx.sha256"),
    (lambda d: d["networks"]["lgm"]["onnx"].update(sha256="xyz"), "networks.lgm.onnx.sha256"),
    (lambda d: d.update(format_version=2), "format_version"),
    (lambda d: d.update(precision="int8"), "precision"),
    (lambda d: d["networks"]["adapters"]["inputs"][0].update(shape=[8, -1]),
     "networks.adapters.inputs[0].shape[1]"),
    (lambda d: d["networks"]["unet"].update(engine={"file": "unet.plan"}), "networks.unet.engine"),
    (lambda d: d["networks"]["vae_decoder"].update(extra=1), "networks.vae_decoder.extra"),
    (lambda d: d["schedule"].pop("sigma_max"), "schedule.sigma_max"),
]


@pytest.mark.parametrize("mutate, field", BROKEN)
def test_broken_manifests_are_rejected_naming_the_field(mutate, field, tiny_artefacts, tmp_path):
    document = json.loads((tiny_artefacts.dir / MANIFEST_NAME).read_text())
    mutate(document)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, load_schema())
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(document))
    with pytest.raises(ExportError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(str(path)) and f"field {field}" in message and "\n" not in message


def _entry(directory, name, payload, key):
    (directory / name).write_bytes(payload)
    return {"file": name, "sha256": artefact_sha256(directory, [name]), "key": key}


def test_each_key_field_decides_reuse(tmp_path):
    key = {"onnx_sha256": "a" * 64, "shapes": {"x": [1, 2]}, "precision_flags": ["TF32"],
           **H100, "ort3d_version": __version__}
    assert set(key) == set(ENGINE_KEY_FIELDS)
    entry = _entry(tmp_path, "net.plan", b"engine bytes", key)
    assert decide(entry, key, tmp_path).reuse
    changes = {"onnx_sha256": "b" * 64, "shapes": {"x": [1, 3]}, "precision_flags": [],
               "tensorrt_version": "10.4.0", "gpu_name": "NVIDIA A100", "compute_capability": "8.0",
               "ort3d_version": "9.9.9"}
    for field, value in changes.items():
        decision = decide(entry, {**key, field: value}, tmp_path)
        assert not decision.reuse and decision.reason.startswith(f"key changed: {field}:"), field


def test_a_file_that_merely_exists_is_never_reused(tmp_path):
    key = {"onnx_sha256": "a" * 64}
    entry = _entry(tmp_path, "net.plan", b"engine bytes", key)
    assert not decide(None, key, tmp_path).reuse                       # no record of it
    (tmp_path / "net.plan").write_bytes(b"engine bytez")
    assert "changed on disk" in decide(entry, key, tmp_path).reason   # replaced content
    (tmp_path / "net.plan").unlink()
    assert "missing" in decide(entry, key, tmp_path).reason


def test_atomic_write_replaces_whole_files_only(tmp_path):
    target = tmp_path / "engine.plan"
    atomic_write(target, b"first")

    def failing(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["engine.plan"]   # no temporary left behind


class FakeEngineBuilder:
    """Stands in for trt_build.build_engine: writes a plan that depends on its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, onnx_path, spec, flags, engine_path, timing_cache, workspace):
        self.calls.append((spec.name, tuple(flags), timing_cache.name))
        engine_path.write_bytes(f"{artefact_sha256(onnx_path.parent, [onnx_path.name])} {flags}".encode())


def test_build_reuses_unchanged_keys_and_rebuilds_changed_ones(tiny_models, tmp_path):
    builder, logs = FakeEngineBuilder(), []
    out = tmp_path / "set"

    def build(identity=H100, **changes):
        # The smallest graph keeps the re-exports cheap; the cache code is network-agnostic.
        options = BuildOptions(networks=("image_encoder",), **changes)
        report = build_artefacts(tiny_models, out, options, log=logs.append, identity=identity,
                                 engine_builder=builder)
        return report.decisions["image_encoder"]

    first = build()
    assert not first["onnx"].reuse and not first["engine"].reuse and len(builder.calls) == 1
    assert builder.calls[0] == ("image_encoder", ("TF32",),
                                "trt-10.3.0_nvidia-h100-80gb-hbm3_sm90.timing-cache")
    engine = read_manifest(out)["networks"]["image_encoder"]["engine"]
    assert engine["precision"] == "fp16" and engine["key"]["gpu_name"] == H100["gpu_name"]

    again = build()
    assert again["onnx"].reuse and again["engine"].reuse and len(builder.calls) == 1

    for identity, field in (({**H100, "gpu_name": "NVIDIA A100-SXM4-80GB"}, "gpu_name"),
                            ({**H100, "tensorrt_version": "10.7.0"}, "tensorrt_version"),
                            ({**H100, "compute_capability": "9.1"}, "compute_capability")):
        decision = build(identity=identity)["engine"]
        assert not decision.reuse and f"{field}:" in decision.reason
        assert build()["onnx"].reuse                  # back to the H100 set, same graph
    assert len(builder.calls) == 7

    decision = build(precision="fp32")["engine"]
    assert not decision.reuse and "precision_flags: ['TF32'] -> []" in decision.reason

    (out / "image_encoder.plan").write_bytes(b"tampered")
    assert "changed on disk" in build(precision="fp32")["engine"].reason

    (out / MANIFEST_NAME).unlink()                    # files all there, but no record of them
    decisions = build(precision="fp32")
    assert not decisions["onnx"].reuse and not decisions["engine"].reuse

    projection = tiny_models.image_encoder.clip.visual_projection.weight
    original = projection.detach().clone()
    try:
        with torch.no_grad():
            projection.mul_(1.01)                      # new weights -> new graph -> new engine
        decisions = build(precision="fp32")
    finally:
        with torch.no_grad():
            projection.copy_(original)
    assert "weights_sha256" in decisions["onnx"].reason
    assert "onnx_sha256" in decisions["engine"].reason
    assert len(builder.calls) == 11
    assert any("reused" in line for line in logs)


def test_unreadable_previous_manifest_means_rebuild_not_crash(tiny_models, tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{ not json")
    logs = []
    report = build_artefacts(tiny_models, out, BuildOptions(networks=("image_encoder",), onnx_only=True),
                             log=logs.append)
    assert not report.decisions["image_encoder"]["onnx"].reuse
    assert any("ignoring the existing manifest" in line for line in logs)
    assert read_manifest(out)["networks"]["image_encoder"]["engine"] is None


def test_carried_engine_survives_an_onnx_only_rebuild(tiny_models, tmp_path):
    # An fp32 engine is built from the fp32 graph an ONNX-only rebuild exports too.
    out, builder = tmp_path / "set", FakeEngineBuilder()
    build_artefacts(tiny_models, out, BuildOptions(networks=("image_encoder",), precision="fp32"),
                    log=lambda m: None, identity=H100, engine_builder=builder)
    before = copy.deepcopy(read_manifest(out)["networks"]["image_encoder"]["engine"])
    build_artefacts(tiny_models, out, BuildOptions(networks=("image_encoder",), onnx_only=True),
                    log=lambda m: None)
    assert read_manifest(out)["networks"]["image_encoder"]["engine"] == before


def test_subset_builds_keep_only_entries_that_still_fit(tiny_models, tmp_path):
    out, quiet = tmp_path / "set", (lambda m: None)
    build_artefacts(tiny_models, out, BuildOptions(networks=("image_encoder",), onnx_only=True), log=quiet)
    build_artefacts(tiny_models, out, BuildOptions(networks=("vae_encoder",), onnx_only=True), log=quiet)
    assert list(read_manifest(out)["networks"]) == ["image_encoder", "vae_encoder"]
    document = json.loads((out / MANIFEST_NAME).read_text())
    document["networks"]["image_encoder"]["onnx"]["key"]["ort3d_version"] = "0.0.1"
    (out / MANIFEST_NAME).write_text(json.dumps(document))
    # Rebuilding vae_encoder must not stamp the old-version image_encoder entry as current.
    build_artefacts(tiny_models, out, BuildOptions(networks=("vae_encoder",), onnx_only=True), log=quiet)
    assert list(read_manifest(out)["networks"]) == ["vae_encoder"]
