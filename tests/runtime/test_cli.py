"""ort3d-run end to end on the tiny preset: files third-party readers open, determinism, and
bad input reported as one stderr line with exit code 2 and no partial outputs."""

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import plyfile
import pytest
import torch
from PIL import Image

from image_files import png_header_only
from ort3d.models.presets import TINY
from ort3d.runtime import cli
from ort3d.runtime.outputs import PLY_PROPERTIES

SIZE = TINY.image_size
FAST = ["--steps", "2", "--orbit-frames", "6", "--quiet"]


def object_image(path, size=(96, 64), mode="RGBA"):
    """A cut-out object: a coloured ellipse on a transparent background."""
    h, w = size[1], size[0]
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - w / 2) / (w * 0.35)) ** 2 + ((yy - h / 2) / (h * 0.35)) ** 2 < 1
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, (xx * 2) % 256, (yy * 3) % 256
    rgba[..., 3] = inside * 255
    Image.fromarray(rgba, "RGBA").convert(mode).save(path)
    return path


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def outputs_of(folder, stem):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(stem))


@pytest.fixture(scope="module")
def seed7_run(tmp_path_factory):
    """One tiny run (seed 7) shared by the end-to-end and determinism tests."""
    folder = tmp_path_factory.mktemp("seed7")
    image = object_image(folder / "thing.png")
    code = cli.main([str(image), "--out", str(folder / "out"), "--seed", "7", *FAST])
    assert code == 0
    return image, folder / "out"


def test_end_to_end_writes_the_four_files_readers_open(seed7_run):
    image, out = seed7_run
    assert outputs_of(out, "thing") == ["thing.ply", "thing_orbit.mp4", "thing_run.json", "thing_views.png"]

    grid = Image.open(out / "thing_views.png")
    assert grid.size == (5 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2) and grid.mode == "RGB"

    ply = plyfile.PlyData.read(out / "thing.ply")
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == list(PLY_PROPERTIES)
    assert 0 < vertex.count <= TINY.num_gaussians
    assert np.all(1 / (1 + np.exp(-vertex["opacity"])) >= 0.005 - 1e-6)   # pruned at 0.005
    quats = np.stack([vertex[f"rot_{i}"] for i in range(4)], -1)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=-1), 1, atol=1e-5)

    frames = np.stack(list(iio.imiter(out / "thing_orbit.mp4")))   # imageio's ffmpeg reader
    assert frames.shape == (6, SIZE, SIZE, 3)

    report = json.loads((out / "thing_run.json").read_text())
    assert report["settings"]["seed"] == 7 and report["settings"]["preset"] == "tiny"
    assert report["versions"]["torch"] == torch.__version__
    steps = report["timings"]["steps_ms"]
    assert len(steps) == 2 and {"unet", "vae_decode", "lgm", "step"} <= set(steps[0])
    assert {"render", "feedback", "adapters"} <= set(steps[0])     # feedback for step 1
    assert "render" not in steps[1]                                 # nothing to feed after the last step
    assert report["num_gaussians_written"] == vertex.count


def test_same_seed_same_files_and_another_seed_differs(seed7_run, tmp_path, capsys):
    image, first = seed7_run
    runs = {}
    for seed in (7, 8):
        code, err = run_cli([image, "--out", tmp_path / str(seed), "--seed", seed, *FAST], capsys)
        assert code == 0, err
        runs[seed] = tmp_path / str(seed)
    for file in ("thing_views.png", "thing.ply", "thing_orbit.mp4"):
        assert (first / file).read_bytes() == (runs[7] / file).read_bytes(), file
    assert (first / "thing.ply").read_bytes() != (runs[8] / "thing.ply").read_bytes()


def test_bad_inputs_one_line_each_exit_2_no_partial_outputs_others_still_run(tmp_path, capsys):
    bad = {}
    bad["text"] = tmp_path / "text.png"
    bad["text"].write_text("not an image\n")
    good_png = object_image(tmp_path / "full.png")
    bad["truncated"] = tmp_path / "truncated.png"
    bad["truncated"].write_bytes(good_png.read_bytes()[:200])
    bad["empty"] = tmp_path / "empty.png"
    bad["empty"].write_bytes(b"")
    bad["tiny"] = tmp_path / "onepixel.png"
    Image.new("RGB", (1, 1)).save(bad["tiny"])
    bad["huge"] = tmp_path / "huge.png"
    bad["huge"].write_bytes(png_header_only(30000, 30000))
    bad["missing"] = tmp_path / "missing.png"
    # Accepted odd formats ride along: 16-bit gray, palette, non-square, EXIF-rotated JPEG.
    gray16 = tmp_path / "gray16.png"
    ramp = (np.arange(80 * 50, dtype=np.uint32).reshape(50, 80) * 13 % 65536).astype("<u2")
    Image.frombytes("I;16", (80, 50), ramp.tobytes()).save(gray16)
    palette = object_image(tmp_path / "palette.png", size=(40, 90), mode="P")
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(object_image(tmp_path / "src.png")).convert("RGB").save(rotated, exif=exif.tobytes())

    inputs = [bad["text"], gray16, bad["truncated"], bad["empty"], palette, bad["tiny"],
              bad["huge"], rotated, bad["missing"]]
    out = tmp_path / "out"
    code, err = run_cli([*inputs, "--out", out, "--no-video", "--steps", "2", "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == len(bad), err               # exactly one line per bad input, no traceback
    for path in bad.values():
        assert sum(path.name in line for line in lines) == 1, (path.name, err)
        assert outputs_of(out, path.stem) == []
    assert all(line.startswith("ort3d-run: error: ") for line in lines)
    for good in (gray16, palette, rotated):
        assert outputs_of(out, good.stem) == [f"{good.stem}.ply", f"{good.stem}_run.json",
                                              f"{good.stem}_views.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temporary leftovers


@pytest.mark.parametrize("extra,match", [
    (["--steps", "1"], "--steps must be at least 2"),
    (["--out", "{file}/sub"], "cannot write to output folder"),
    (["--checkpoint", "{tmp}/ckpt", "--svd", "{tmp}/svd"], "config.json: missing"),
    (["--checkpoint", "{tmp}/ckpt"], "need both"),
    (["--backend", "ort", "--engines", "{tmp}/ckpt"], "manifest.json"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, capsys, extra, match):
    image = object_image(tmp_path / "x.png")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "svd").mkdir()
    extra = [e.format(file=blocker, tmp=tmp_path) for e in extra]
    out = ["--out", tmp_path / "out"] if "--out" not in extra else []
    code, err = run_cli([image, *out, *extra, "--quiet"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nan_in_a_stage_stops_with_its_name_and_step(tmp_path, capsys, monkeypatch):
    from ort3d.runtime.networks import EagerNetworks

    original = EagerNetworks.lgm
    calls = []

    def poisoned(self, images, timestep):
        out = original(self, images, timestep)
        calls.append(1)
        if len(calls) == 2:                      # step 1
            out = out.clone()
            out[0, 5, 0] = float("nan")
        return out

    monkeypatch.setattr(EagerNetworks, "lgm", poisoned)
    image = object_image(tmp_path / "n.png")
    code, err = run_cli([image, "--out", tmp_path / "out", "--steps", "3", "--no-video", "--quiet",
                         "--check-every-stage"], capsys)
    assert code == 1
    assert len(calls) == 2                       # stopped at once, step 2 never ran
    assert "stage 'lgm' at step 1" in err and len(err.strip().splitlines()) == 1
    assert outputs_of(tmp_path / "out", "n") == []


def test_console_script_reports_version_and_exit_code():
    version = subprocess.run([sys.executable, "-m", "ort3d.runtime.cli", "--version"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("ort3d ")
    missing = subprocess.run([sys.executable, "-m", "ort3d.runtime.cli", "--steps", "0", "x.png"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "steps" in missing.stderr


def test_triton_renderer_without_cuda_or_interpreter_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    image = object_image(tmp_path / "t.png")
    code, err = run_cli([image, "--out", tmp_path / "out", "--renderer", "triton", "--device", "cpu",
                         "--quiet"], capsys)
    assert code == 2 and "needs a CUDA device" in err and len(err.strip().splitlines()) == 1


def test_colliding_input_names_get_distinct_outputs(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = object_image(tmp_path / "a" / "x.png")
    second = object_image(tmp_path / "b" / "x.png", size=(64, 96))
    out = tmp_path / "out"
    code, _ = run_cli([first, second, "--out", out, "--no-video", "--steps", "2", "--quiet"], capsys)
    assert code == 0
    assert outputs_of(out, "a_x") == ["a_x.ply", "a_x_run.json", "a_x_views.png"]
    assert outputs_of(out, "b_x") == ["b_x.ply", "b_x_run.json", "b_x_views.png"]
    assert json.loads((out / "b_x_run.json").read_text())["input"] == str(second)
    assert cli.output_stems([tmp_path / "a" / "x.png", tmp_path / "a" / "x.png"]) == ["a_x_png", "a_x_png-2"]


@pytest.mark.parametrize("where", ["loop", "outputs"])
def test_ctrl_c_is_one_line_exit_130_and_leaves_no_files(tmp_path, capsys, monkeypatch, where):
    from ort3d.runtime import outputs
    from ort3d.runtime.networks import EagerNetworks

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "loop":
        monkeypatch.setattr(EagerNetworks, "lgm", interrupt)
    else:   # after the views PNG and the .ply are written, before run.json
        monkeypatch.setattr(outputs, "write_json", interrupt)
    image = object_image(tmp_path / "c.png")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(image), "--out", str(tmp_path / "out"), "--steps", "2", "--no-video", "--quiet"])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "ort3d-run: interrupted"
    assert list((tmp_path / "out").iterdir()) == []


def test_backend_ort_without_engines_builds_into_the_user_cache_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ORT3D_ENGINE_CACHE", str(tmp_path / "cache"))
    image = object_image(tmp_path / "o.png")
    common = [image, "--backend", "ort", "--no-video", "--steps", "2", "--device", "cpu"]
    code, err = run_cli([*common, "--out", tmp_path / "first"], capsys)
    assert code == 0, err
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.startswith("tiny-") and (folder / "manifest.json").is_file()
    assert "onnx: exporting" in err and "built now (first use only)" in err
    code, err = run_cli([*common, "--out", tmp_path / "second"], capsys)
    assert code == 0 and "onnx: exporting" not in err and "onnx: reused" in err
    report = json.loads((tmp_path / "second" / "o_run.json").read_text())
    assert report["settings"]["engines"] == str(folder)
    assert report["settings"]["temporal_context"] == "interleaved"


def test_ply_raw_writes_the_authors_quaternions(tmp_path, capsys, seed7_run):
    image, default_out = seed7_run
    code, _ = run_cli([image, "--out", tmp_path / "raw", "--seed", "7", *FAST, "--no-video", "--ply-raw"],
                      capsys)
    assert code == 0
    report = json.loads((tmp_path / "raw" / "thing_run.json").read_text())
    assert report["settings"]["ply_layout"] == "raw"
    rot = ["rot_0", "rot_1", "rot_2", "rot_3"]

    def quaternion_norms(path):
        vertex = plyfile.PlyData.read(str(path))["vertex"]
        return np.sqrt(sum(np.asarray(vertex[name], np.float64) ** 2 for name in rot))

    # Q19: the LGM's quaternions are normalised over the Gaussians, far from unit length; the
    # default layout stores unit rotations (docs/ply.md).
    assert quaternion_norms(tmp_path / "raw" / "thing.ply").max() < 0.5
    np.testing.assert_allclose(quaternion_norms(default_out / "thing.ply"), 1.0, atol=1e-5)
