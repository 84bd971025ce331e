"""Session fixtures: the tiny models, and one artefact folder with all six tiny ONNX graphs
(exported and verified once, shared by every export/backend test; tests that modify
artefacts work on a copy)."""

import shutil
from types import SimpleNamespace

import pytest

from ort3d.export.build import BuildOptions, build_artefacts
from ort3d.export.specs import NETWORK_NAMES
from ort3d.models.checkpoint import build_models
from ort3d.models.presets import TINY

VERIFY_SEED = 1234


@pytest.fixture(scope="session")
def tiny_models():
    return build_models(TINY)


@pytest.fixture(scope="session")
def tiny_artefacts(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_artefacts")
    # onnxslim costs twice the tiny UNet's export time and changes no value (the CLI slims it
    # by default; its verified error there is ~1e-6): the shared fixture skips it for the UNet.
    options = BuildOptions(onnx_only=True, verify=True, verify_seed=VERIFY_SEED,
                           simplify_networks=tuple(n for n in NETWORK_NAMES if n != "unet"))
    logs = []
    report = build_artefacts(tiny_models, out, options, log=logs.append)
    return SimpleNamespace(dir=out, report=report, logs=logs)


@pytest.fixture
def artefact_copy(tiny_artefacts, tmp_path):
    """A private copy of the tiny artefact folder, free to corrupt."""
    target = tmp_path / "artefacts"
    shutil.copytree(tiny_artefacts.dir, target)
    return target
