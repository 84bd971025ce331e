"""Package layout (docs/architecture.md#layout): the ort3d.* modules come from this repo's folders,
a wheel holds only ort3d/..., and the dependency arrows between the folders hold."""

import ast
import importlib
import pathlib
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("models", "kernels", "export", "runtime")

# What each folder may import from ort3d (docs/architecture.md#dependency-arrows).
ALLOWED = {
    "kernels": set(),
    "models": {"kernels"},
    "export": {"models", "kernels"},
    "runtime": {"models", "kernels", "export"},
    "bench": {"models", "kernels", "export", "runtime"},
}
# Script wrappers kept at a documented path: they only call a command defined elsewhere, and
# only when run as a script (no package module imports them).
SCRIPT_WRAPPERS = {"export/build_engines.py": "ort3d.runtime.build_cli"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_modules_resolve_into_repo_folders(folder):
    module = importlib.import_module(f"ort3d.{folder}")
    assert pathlib.Path(module.__file__).resolve().parent == REPO / folder


def _ort3d_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                yield "<relative>", node.lineno
            elif node.module:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_dependency_arrows_and_absolute_imports(folder):
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for name, line in _ort3d_imports(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if name == "<relative>":
                bad.append(f"{where} relative import")
            elif name.split(".")[0] in FOLDERS:
                bad.append(f"{where} bare folder import {name}")
            elif SCRIPT_WRAPPERS.get(str(path.relative_to(REPO))) == name:
                continue
            elif name.startswith("ort3d."):
                target = name.split(".")[1]
                if target != folder and target not in ALLOWED[folder]:
                    bad.append(f"{where} {folder} -> {target} not allowed")
    assert not bad, "\n".join(bad)


def test_wheel_contains_only_ort3d(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("ort3d-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    payload = [n for n in names if ".dist-info/" not in n]
    assert payload and all(n.startswith("ort3d/") for n in payload), payload
    for folder in FOLDERS:
        assert f"ort3d/{folder}/__init__.py" in names
    assert "ort3d/models/data/cameras.json" in names
    assert not any(n.startswith(("ort3d/tests", "ort3d/bench", "tests/", "bench/")) for n in names)
