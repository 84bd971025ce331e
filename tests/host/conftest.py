"""Session fixtures of the C++ host tests: the host built from this checkout with CMake, and one
tiny engine set with every AOTInductor package.

Both live under the repository's build/ folder (ignored by git) and are brought up to date, not
rebuilt, when they exist: CMake rebuilds what changed, and the engine set is reused network by
network through the manifest's content keys (weights, shapes, options, device, torch version).
A machine without a C++ compiler, CMake or libtorch FAILS these tests with the reason: the host
is part of what ort3d ships.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
HOST_BUILD = BUILD / "host"
ENGINES = BUILD / "host-engines" / "tiny"
BUILD_TIMEOUT_S = 1200     # a cold two-core build of the host takes a few minutes


def _run(command, cwd, what, timeout=BUILD_TIMEOUT_S):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        pytest.fail(f"{what} failed (exit {result.returncode}): {' '.join(map(str, command))}\n{tail}",
                    pytrace=False)
    return result


@pytest.fixture(scope="session")
def host_build():
    """build/host with ort3d-host and ort3d_host_tests, configured against this interpreter's torch."""
    missing = [tool for tool in ("cmake", "ctest", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the C++ host needs {', '.join(missing)} on PATH (CMake >= 3.18 with ctest and "
                    "a C++17 compiler; e.g. apt-get install cmake g++ libpng-dev)", pytrace=False)
    HOST_BUILD.mkdir(parents=True, exist_ok=True)
    _run(["cmake", "-S", str(REPO), "-B", str(HOST_BUILD), "-DCMAKE_BUILD_TYPE=Release",
          f"-DORT3D_PYTHON={sys.executable}"], REPO, "configuring the C++ host (CMake)")
    _run(["cmake", "--build", str(HOST_BUILD), "-j", str(os.cpu_count() or 2)], REPO,
         "building the C++ host")
    return SimpleNamespace(dir=HOST_BUILD, host=HOST_BUILD / "ort3d-host",
                           tests=HOST_BUILD / "ort3d_host_tests")


@pytest.fixture(scope="session")
def aoti_engines():
    """The tiny preset's AOTInductor set (+ the ONNX graphs, for nothing but the same manifest a
    user builds with --formats onnx,aoti: ONNX export is fast next to the AOTI compile)."""
    import torch

    from ort3d.export.build import BuildOptions, build_artefacts
    from ort3d.models.checkpoint import build_models
    from ort3d.models.presets import TINY

    models = build_models(TINY, device=torch.device("cpu"), dtype=torch.float32)
    logs = []
    report = build_artefacts(models, ENGINES, BuildOptions(formats=("aoti",)), log=logs.append)
    return SimpleNamespace(dir=ENGINES, report=report, logs=logs, models=models)
