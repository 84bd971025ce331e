"""bench/host_check.py, the C++ host's end-to-end check for a GPU machine, in its CPU form: it
builds (reuses) the host and the tiny set, runs ort3d-host and ort3d-run, and reports."""

import json

import host_check


def test_host_check_on_cpu(host_build, aoti_engines, tmp_path):
    code = host_check.main(["--device", "cpu", "--images", "2", "--steps", "2", "--out", str(tmp_path)])
    reports = list(tmp_path.glob("host_check_*.json"))
    assert code == 0 and len(reports) == 1, (tmp_path / reports[0].with_suffix(".txt").name).read_text()
    report = json.loads(reports[0].read_text())
    assert report["failures"] == [] and list(report["variants"]) == ["aoti"]   # no CUDA, no TensorRT
    aoti = report["variants"]["aoti"]
    assert aoti["loop"] == ["eager", "eager"] and aoti["capture_s"] is None
    assert aoti["vs_ort3d_run_aoti"]["gaussians_relative"] <= 1e-4
    assert "CPU only" in report["cmake"]


def test_image_line_matches_ort3d_host_output():
    """The per-image line host_check parses, in the form runtime/host/tools/ort3d_host.cpp prints."""
    line = ("in/a.png: out/a_views.png, out/a.ply (4096 Gaussians; mask: none; tensorrt, 25 steps "
            "captured, 1.250 s, capture 0.420 s)")
    match = host_check.IMAGE_LINE.match(line)
    assert match and match["format"] == "tensorrt" and match["loop"] == "captured"
    assert float(match["seconds"]) == 1.25 and float(match["capture"]) == 0.42
    assert host_check.IMAGE_LINE.match(line.replace(", capture 0.420 s", ""))["capture"] is None
