"""`ort3d-build`, and `python export/build_engines.py` as a user runs it: from the repo root, as a script."""

import json
import pathlib
import subprocess
import sys

import pytest

from ort3d.runtime import build_cli
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
    code = build_cli.main(["--checkpoint", str(missing), "--svd", str(tmp_path / "no-svd"),
                               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("ort3d-build: error: ")
    code = build_cli.main(["--networks", "unet,vea_decoder", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown network 'vea_decoder'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", [["ort3d-build"], [sys.executable, "-m", "ort3d.export.build_engines"]],
                         ids=["console-script", "module"])
def test_every_form_has_the_same_cli(command):
    result = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--checkpoint", "--svd", "--preset", "--out", "--precision", "--onnx-only", "--verify",
                 "--temporal-context"):
        assert flag in result.stdout
