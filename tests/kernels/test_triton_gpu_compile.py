"""Every Triton kernel variant the renderer launches compiles for sm_90 and sm_80, here, without a GPU.

The interpreter that runs the other kernel tests on CPU accepts code the GPU compiler rejects. This
records the launches of the renderer's entry points at the tiny and full presets' shapes and
compiles each distinct one to a cubin with Triton's own ptxas, in a child process (the kernels of
this process are interpreted: TRITON_INTERPRET is read when they are defined). Run with -s to see
the registers/spills table.
"""

import json
import os
import subprocess
import sys

import pytest

from ort3d.models.presets import FULL, TINY

ARCHS = ("90", "80")


def scene(preset) -> str:
    return f"{preset.name}={preset.num_views},{preset.num_gaussians},{preset.image_size}"


def test_every_kernel_variant_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed (its wheels are Linux-only)")
    from triton.backends import backends
    if "nvidia" not in backends:
        pytest.skip("this Triton has no CUDA backend")
    from ort3d.kernels.triton_targets import RENDER_CALLS

    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    table = tmp_path / "variants.json"
    command = [sys.executable, "-m", "ort3d.kernels.triton_targets", "--scene", scene(TINY),
               "--scene", scene(FULL), "--json", str(table)]
    for arch in ARCHS:
        command += ["--arch", arch]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads(table.read_text())
    rows = result["rows"]
    assert result["never_launched"] == []
    assert {call for row in rows for call in row["calls"]} == set(RENDER_CALLS)
    kernels = {row["kernel"] for row in rows}
    assert {"_project_kernel", "_emit_kernel", "_composite_kernel"} <= kernels
    for kernel in kernels:   # every kernel is compiled at both presets' shapes
        assert {s for row in rows if row["kernel"] == kernel for s in row["scenes"]} == {"tiny", "full"}
    for row in rows:
        assert set(row["targets"]) == {f"sm_{arch}" for arch in ARCHS}
        for target, usage in row["targets"].items():
            # Spilled registers go to local memory: a slow path in a latency-bound kernel.
            assert usage["n_spills"] == 0, f"{row['kernel']} [{row['constexprs']}] spills on {target}"
            assert 0 < usage["n_regs"] <= 255
