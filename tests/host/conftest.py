"""Session fixtures of the C++ host tests: the host built from this checkout with CMake, and one
tiny engine set with every AOTInductor package.

Both live under the repository's build/ folder (ignored by git) and are brought up to date, not
rebuilt, when they exist: CMake rebuilds what changed, and the engine set is reused network by
network through the manifest's content keys (weights, shapes, options, device, torch version).
A machine without a C++ compiler, CMake or libtorch FAILS these tests with the reason: the host
is part of what ort3d ships.

Built cold, the two take minutes (the AOTInductor compile most of them). So when a session
collects any test here, `bench/host_check.py --prepare` builds both in a background process at
the lowest priority while the tests collected before these run, and the fixtures wait for it
before bringing the folders up to date themselves (then nothing is left to do). Its log is
build/host-prepare.log; whatever it fails at, the fixtures fail at too, with the reason.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from host_check import HostCheckError, build_engines, build_host

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = REPO / "build"
HOST_BUILD = BUILD / "host"
ENGINES = BUILD / "host-engines" / "tiny"
PREPARE_TIMEOUT_S = 1800
_prepare: subprocess.Popen | None = None


def pytest_collection_finish(session):
    global _prepare
    if _prepare is not None or not any(HERE in Path(item.path).parents for item in session.items):
        return
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / "host-prepare.log", "wb") as log:
        _prepare = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "host_check.py"), "--device", "cpu", "--prepare"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: os.nice(19))


def pytest_sessionfinish(session):
    if _prepare is not None and _prepare.poll() is None:
        _prepare.kill()
        _prepare.wait()


def _wait_for_prepare() -> None:
    if _prepare is not None:
        try:
            _prepare.wait(timeout=PREPARE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _prepare.kill()


@pytest.fixture(scope="session")
def host_build():
    """build/host with ort3d-host and ort3d_host_tests, configured against this interpreter's torch."""
    _wait_for_prepare()
    try:
        summary = build_host(HOST_BUILD, sys.executable)
    except HostCheckError as err:
        pytest.fail(str(err), pytrace=False)
    return SimpleNamespace(dir=HOST_BUILD, host=HOST_BUILD / "ort3d-host",
                           tests=HOST_BUILD / "ort3d_host_tests", summary=summary)


@pytest.fixture(scope="session")
def aoti_engines():
    """The tiny preset's AOTInductor set, built (or reused) as bench/host_check.py builds it."""
    _wait_for_prepare()
    _, models = build_engines(ENGINES, "cpu")
    return SimpleNamespace(dir=ENGINES, models=models)
