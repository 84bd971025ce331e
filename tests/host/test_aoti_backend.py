"""AOTInductor packages: the build options, reuse by content key, and the `aoti` backend's
networks (the packages the C++ host runs) against the eager modules and the reference renderer."""

import os

import pytest
import torch

from ort3d.export.aoti_export import AOTI_NETWORK_NAMES
from ort3d.export.build import BuildOptions, build_artefacts
from ort3d.export.errors import ExportError
from ort3d.export.specs import NETWORK_NAMES, network_specs
from ort3d.kernels.feedback_dispatch import prepare_render_cameras, render_feedback
from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.presets import TINY
from ort3d.runtime.backend_aoti import AotiNetworks

# Inductor fuses and reorders float32 reductions: each network differs from eager by rounding
# (measured <= 2.5e-6 relative on the tiny set); 1e-5 leaves room across CPUs' SIMD widths.
NETWORK_TOLERANCE = 1e-5


def test_formats_and_networks_options():
    assert BuildOptions(formats=("onnx", "aoti")).wanted_networks() == AOTI_NETWORK_NAMES
    assert BuildOptions().wanted_networks() == NETWORK_NAMES          # ONNX: no feedback graph
    assert BuildOptions(formats=("aoti",), networks=("lgm",)).wanted_networks() == ("lgm",)
    with pytest.raises(ExportError, match="--formats: unknown format 'trt'"):
        BuildOptions(formats=("trt",)).check()
    with pytest.raises(ExportError, match="--networks: unknown network 'feedback'"):
        BuildOptions(networks=("feedback",)).check()


def test_rebuild_reuses_every_package(aoti_engines):
    """A second build with the same weights reuses each package (key + sha256), compiles nothing."""
    logs = []
    report = build_artefacts(aoti_engines.models, aoti_engines.dir, BuildOptions(formats=("aoti",)),
                             log=logs.append)
    assert set(report.decisions) == set(AOTI_NETWORK_NAMES)
    assert all(d["aoti"].reuse for d in report.decisions.values()), logs


@pytest.fixture(scope="module")
def aoti_networks(aoti_engines):
    return AotiNetworks(aoti_engines.dir)


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_package_equals_eager(aoti_engines, aoti_networks, name):
    spec = network_specs(TINY)[name]
    module = spec.module_for_export(aoti_engines.models).eval()
    inputs = spec.sample_inputs(seed=11)
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = aoti_networks.run(name, **inputs)
    for output, want in zip(spec.output_names, expected):
        error = ((got[output] - want).norm() / want.norm()).item()
        assert error <= NETWORK_TOLERANCE, (output, error)


def test_feedback_package_equals_reference_renderer(aoti_engines, aoti_networks):
    """render -> CCM (fp32) -> unshuffle of the LGM's own output, against kernels/render.py."""
    models = aoti_engines.models
    spec = network_specs(TINY)["lgm"]
    with torch.no_grad():
        gaussians = spec.module_for_export(models).eval()(*spec.sample_inputs(seed=5).values())
    cams = load_feedback_cameras()
    size = TINY.image_size
    reference = render_feedback(gaussians, prepare_render_cameras(
        cams.c2w, cams.fov_deg, cams.intrinsics, size, size), "torch", matmul_dtype=torch.float32)
    rgb, ccm = aoti_networks.feedback(gaussians)
    # Chunked transmittance products associate differently: float32 rounding of maps in [0, 1].
    assert (rgb - reference.rgb).abs().max().item() <= 1e-5
    assert (ccm - reference.ccm).abs().max().item() <= 1e-5


def test_build_cli_refuses_unknown_format(tmp_path, capsys):
    """ort3d-build --formats: checked before any model is built; one line, exit 2."""
    from ort3d.runtime.build_cli import main

    assert main(["--formats", "onnx,trt", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ort3d-build: error: --formats: unknown format 'trt'; choose from onnx,aoti"]


def test_feedback_entry_checked_against_its_spec(aoti_engines, tmp_path):
    """The feedback package's shapes and options are checked like the six networks' (here: a
    set built for other cameras), before any package is loaded."""
    import json
    import shutil

    folder = tmp_path / "set"
    shutil.copytree(aoti_engines.dir, folder, copy_function=os.symlink)
    (folder / "manifest.json").unlink()
    manifest = json.loads((aoti_engines.dir / "manifest.json").read_text())
    manifest["networks"]["feedback"]["options"]["cameras_sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="field networks.feedback.options.cameras_sha256"):
        AotiNetworks(folder)
