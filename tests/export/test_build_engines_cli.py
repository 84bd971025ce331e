"""`python export/build_engines.py` as a user runs it: from the repo root, as a script."""

import json
import pathlib
import subprocess
import sys

from ort3d.export import build_engines
from ort3d.export.trt_build import tensorrt_missing_reason

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_script_exports_verifies_and_explains_missing_tensorrt(tmp_path):
    out = tmp_path / "engines"
    result = subprocess.run(
        [sys.executable, "export/build_engines.py", "--preset", "tiny", "--networks", "adapters",
         "--out", str(out), "--verify", "--verify-seed", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("[1/1] adapters") and "onnx: adapters.onnx" in line for line in lines)
    table = [line for line in lines if line.startswith("adapters ")]
    assert len(table) == 8 and all(line.endswith(" ok") for line in table)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["networks"]) == ["adapters"] and (out / "adapters.onnx").is_file()
    reason = tensorrt_missing_reason()
    if reason is not None:   # CI: no TensorRT, the ONNX graph is still produced
        assert f"TensorRT unavailable: {reason}" in result.stdout
        assert manifest["networks"]["adapters"]["engine"] is None


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    code = build_engines.main(["--checkpoint", str(missing), "--svd", str(tmp_path / "no-svd"),
                               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("build_engines.py: error: ")
    code = build_engines.main(["--networks", "unet,vea_decoder", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown network 'vea_decoder'" in err and len(err.splitlines()) == 1


def test_module_form_has_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "ort3d.export.build_engines", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--checkpoint", "--svd", "--preset", "--out", "--precision", "--onnx-only", "--verify"):
        assert flag in result.stdout
