"""The six tiny ONNX graphs: what --verify reports, fresh-input parity, and the graphs' contents."""

import onnx
import pytest
import torch

from ort3d.export.onnx_export import OPSET, unsupported_ops
from ort3d.export.specs import NETWORK_NAMES, network_specs
from ort3d.export.verify import FP32_RELATIVE_TOLERANCE, format_table
from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.presets import TINY


def test_verify_passes_for_every_network(tiny_artefacts):
    rows = tiny_artefacts.report.verify_rows
    specs = network_specs(TINY)
    assert [(r.network, r.output) for r in rows] == [
        (name, out) for name in NETWORK_NAMES for out in specs[name].output_names]
    for row in rows:
        # fp32 graph vs fp32 eager: the bar is 1e-4; measured ~1e-6 (op order only).
        assert row.passed and row.relative_error <= FP32_RELATIVE_TOLERANCE, row
        assert row.max_abs < 1e-3, row
    table = format_table(rows)
    assert table.count(" ok") == len(rows) and "FAIL" not in table


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_graph_io_opset_and_op_set(name, tiny_artefacts):
    model = onnx.load(str(tiny_artefacts.dir / f"{name}.onnx"))
    spec = network_specs(TINY)[name]

    def table(values):
        return [(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim)) for v in values]

    assert table(model.graph.input) == [(t.name, tuple(t.shape)) for t in spec.inputs]
    assert table(model.graph.output) == [(t.name, tuple(t.shape)) for t in spec.outputs]
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    assert unsupported_ops(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert "Resize" not in ops or name in ("unet", "vae_decoder", "lgm")   # nearest/linear only
    if name == "image_encoder":   # antialiased resize exported as matrix products, no cubic
        assert "MatMul" in ops and "Pad" not in ops


def test_camera_constants_are_folded_and_recorded(tiny_artefacts):
    from ort3d.export.manifest import read_manifest

    manifest = read_manifest(tiny_artefacts.dir)
    spec = network_specs(TINY)
    for name in ("unet", "lgm"):
        assert manifest["networks"][name]["options"] == spec[name].options
    unet = onnx.load(str(tiny_artefacts.dir / "unet.onnx"))
    # The 9 Plücker embeddings [F, C, r, r] are initializers, not graph inputs.
    shapes = {tuple(t.dims) for t in unet.graph.initializer}
    widths, s = TINY.plucker_channels, TINY.latent_size
    expected = {(8, c, s >> i, s >> i) for i, c in enumerate(widths["down"])}
    expected |= {(8, widths["mid"][0], s >> 3, s >> 3)}
    expected |= {(8, c, s >> (3 - i), s >> (3 - i)) for i, c in enumerate(widths["up"])}
    assert expected <= shapes
    assert "cameras" not in {i.name for i in unet.graph.input}


def test_export_wrappers_compute_what_the_eager_modules_compute(tiny_models):
    """--verify compares graphs with the export wrappers; these wrappers must in turn equal the
    eager modules the pipeline runs (the image encoder's resize is rewritten as matrices)."""
    specs = network_specs(TINY)
    image = specs["image_encoder"].sample_inputs(3)["image"]
    with torch.no_grad():
        wrapped = specs["image_encoder"].module_for_export(tiny_models)(image)
        eager = tiny_models.image_encoder(image)
    # Only the resize's float32 rounding differs (~1e-6 of its output, see test_export_specs).
    assert ((wrapped - eager).norm() / eager.norm()).item() < 1e-5
    lgm_in = specs["lgm"].sample_inputs(3)
    cams = load_feedback_cameras()
    with torch.no_grad():
        wrapped = specs["lgm"].module_for_export(tiny_models)(lgm_in["images"], lgm_in["timestep"])
        eager = tiny_models.lgm.forward_gaussians(lgm_in["images"], lgm_in["timestep"],
                                                  cams.c2w, cams.fov_deg)
    assert torch.equal(wrapped, eager)      # same ops; the folded rays are the eager rays


def test_external_data_graphs_are_checked_hashed_and_run(tiny_models, tmp_path, monkeypatch):
    """The full-size path (weights beside the graph) on a small graph, by lowering the threshold."""
    from ort3d.export import onnx_export
    from ort3d.export.build import BuildOptions, build_artefacts
    from ort3d.export.errors import ExportError
    from ort3d.export.manifest import check_onnx_set, read_manifest

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1 << 20)
    report = build_artefacts(tiny_models, tmp_path, BuildOptions(networks=("adapters",),
                             onnx_only=True, verify=True), log=lambda m: None)
    assert all(row.passed for row in report.verify_rows)
    entry = read_manifest(tmp_path)["networks"]["adapters"]["onnx"]
    assert entry["external_data"] == ["adapters.onnx.data"]
    graph_bytes = (tmp_path / "adapters.onnx").stat().st_size
    assert graph_bytes < (tmp_path / "adapters.onnx.data").stat().st_size // 10
    data = tmp_path / "adapters.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x7f")      # last weight -> inf
    with pytest.raises(ExportError, match=r"adapters\.onnx \(with adapters\.onnx\.data\): sha256"):
        check_onnx_set(read_manifest(tmp_path), tmp_path, ("adapters",))
