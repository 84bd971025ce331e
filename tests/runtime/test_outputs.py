"""Output files of ort3d-run, read back with third-party readers (Pillow, plyfile, imageio)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from ort3d.kernels.feedback_dispatch import prepare_render_cameras
from ort3d.kernels.render import covariance_3d, render_gaussians
from ort3d.kernels.synthetic_gaussians import edge_case_gaussians, lgm_like_gaussians
from ort3d.models.cameras import load_feedback_cameras
from ort3d.runtime.outputs import (
    PLY_PROPERTIES,
    SH_C0,
    atomic_path,
    orbit_frames_uint8,
    quaternion_from_rotation,
    write_json,
    write_ply,
    write_video,
    write_views_png,
)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


# ----------------------------------------------------------------------------- views grid

def test_views_png_layout(tmp_path):
    size = 16
    views = torch.stack([torch.full((3, size, size), k / 8) for k in range(8)])
    views[3, 0] = 1.0                                   # view 3: red channel saturated
    image = torch.zeros(3, size, size)
    image[2] = 0.5                                      # input: half blue
    path = tmp_path / "views.png"
    assert write_views_png(path, views, image) == path

    with Image.open(path) as png:
        # Documented size: 5·(S+2)+2 by 2·(S+2)+2.
        assert png.format == "PNG" and png.mode == "RGB" and png.size == (92, 38)
        grid = np.asarray(png)

    def tile(row, col):
        y, x = 2 + row * (size + 2), 2 + col * (size + 2)
        return grid[y:y + size, x:x + size]

    assert (tile(0, 0) == [0, 0, 128]).all()           # 0.5·255 + 0.5 = 128 (round half up)
    assert (tile(1, 0) == 255).all()                    # empty cell below the input is white
    for k in range(8):
        expected = int(k / 8 * 255 + 0.5)
        cell = tile(k // 4, 1 + k % 4).astype(int)
        assert (cell[..., 1:] == expected).all(), k
        assert (cell[..., 0] == (255 if k == 3 else expected)).all(), k
    assert (grid[:2] == 0).all() and (grid[:, 18:20] == 0).all()   # black padding


def test_views_png_rejects_mismatched_input(tmp_path):
    with pytest.raises(ValueError, match="input image"):
        write_views_png(tmp_path / "v.png", torch.zeros(8, 3, 16, 16), torch.zeros(3, 8, 8))
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- PLY

def make_gaussians(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=g)
    opacity = torch.rand(n, 1, generator=g)
    opacity[:10] = 0.001                                # pruned (< 0.005)
    opacity[10] = 0.005                                 # kept (>= 0.005)
    scale = 0.1 * torch.nn.functional.softplus(torch.randn(n, 3, generator=g))
    rot = torch.randn(n, 4, generator=g) * 0.01         # LGM-like tiny norms (Q19)
    rgb = torch.rand(n, 3, generator=g)
    return torch.cat([pos, opacity, scale, rot, rgb], dim=1)


def half_turn_gaussians():
    """180° rotations (w = 0) and one general rotation as quaternions of unit, LGM-like (0.01)
    and double norm (far from a rotation matrix), with distinct scales."""
    axes = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0], [0, 1, -1, 1],
                         [0.1, 0.9, 0.3, -0.2]], dtype=torch.float32)
    quats = torch.cat([torch.nn.functional.normalize(axes, dim=-1) * norm for norm in (1.0, 0.01, 2.0)])
    n = quats.shape[0]
    scale = torch.tensor([0.01, 0.03, 0.02]).expand(n, 3)
    return torch.cat([torch.zeros(n, 3), torch.full((n, 1), 0.5), scale, quats, torch.rand(n, 3)], 1)


def ply_columns(path):
    vertex = PlyData.read(str(path))["vertex"]
    return {name: np.asarray(vertex[name]) for name in PLY_PROPERTIES}


def stack(col, names):
    return torch.from_numpy(np.stack([col[name] for name in names], 1))


def read_ply_as_viewer(path) -> torch.Tensor:
    """[1, N, 14] Gaussians decoded as 3DGS viewers decode a .ply: exp of the log-scales, sigmoid
    of the opacity logits, the quaternion NORMALISED, rgb = 0.5 + SH_C0·f_dc."""
    col = ply_columns(path)
    rgb = stack(col, [f"f_dc_{i}" for i in range(3)]) * SH_C0 + 0.5
    return torch.cat([
        stack(col, ["x", "y", "z"]),
        torch.sigmoid(stack(col, ["opacity"])),
        torch.exp(stack(col, [f"scale_{i}" for i in range(3)])),
        torch.nn.functional.normalize(stack(col, [f"rot_{i}" for i in range(4)]), dim=-1),
        rgb,
    ], 1)[None].float()


@pytest.mark.parametrize("matrix,quaternion", [
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [1, 0, 0, 0]),            # w row
    ([[1, 0, 0], [0, -1, 0], [0, 0, -1]], [0, 1, 0, 0]),          # 180° about x: x row
    ([[-1, 0, 0], [0, 1, 0], [0, 0, -1]], [0, 0, 1, 0]),          # 180° about y: y row
    ([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], [0, 0, 0, 1]),          # 180° about z: z row
    ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], [0.5 ** 0.5, 0, 0, 0.5 ** 0.5]),   # 90° about z
    ([[0, 0, 1], [1, 0, 0], [0, 1, 0]], [0.5, 0.5, 0.5, 0.5]),    # 120° about (1,1,1)
])
def test_quaternion_from_rotation_known_matrices(matrix, quaternion):
    got = quaternion_from_rotation(torch.tensor(matrix, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(quaternion, dtype=torch.float64), atol=1e-15, rtol=0)


def test_ply_layout_and_values(tmp_path):
    gaussians = make_gaussians()
    path = tmp_path / "g.ply"
    assert write_ply(path, gaussians[None]) == 54

    assert b"format binary_little_endian 1.0" in path.read_bytes()[:200]
    ply = PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    assert tuple(p.name for p in vertex.properties) == PLY_PROPERTIES
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in PLY_PROPERTIES)
    assert vertex.count == 54

    kept = gaussians[10:].numpy()
    col = {name: np.asarray(vertex[name], dtype=np.float64) for name in PLY_PROPERTIES}
    np.testing.assert_array_equal(np.stack([col["x"], col["y"], col["z"]], 1), kept[:, 0:3])
    # The stored values are the float32 inverse activations; tolerances cover float32 rounding
    # (and the 1e-8 guards, which matter only relative to opacities near 0 or 1).
    sigmoid = 1 / (1 + np.exp(-col["opacity"]))
    np.testing.assert_allclose(sigmoid, kept[:, 3], rtol=1e-5)
    rgb = np.stack([col[f"f_dc_{i}"] for i in range(3)], 1) * SH_C0 + 0.5
    np.testing.assert_allclose(rgb, kept[:, 11:14], atol=1e-6)
    rot = np.stack([col[f"rot_{i}"] for i in range(4)], 1)
    # Unit quaternions with w >= 0, up to float32 rounding of the four components.
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1, atol=1e-6)
    assert (rot[:, 0] >= 0).all()


@pytest.mark.parametrize("scene", ["lgm_like", "edge_cases", "half_turns"])
def test_ply_covariance_round_trip(tmp_path, scene):
    """The covariance a reader rebuilds from the file (exp of the log-scales, normalised
    quaternion) is the one the renderer builds from the raw quaternion."""
    gaussians = {"lgm_like": lambda: lgm_like_gaussians(65536)[0],
                 "edge_cases": lambda: edge_case_gaussians()[0],
                 "half_turns": half_turn_gaussians}[scene]()
    path = tmp_path / "g.ply"
    assert write_ply(path, gaussians, opacity_threshold=0.0) == gaussians.shape[0]
    col = ply_columns(path)
    scale = torch.exp(stack(col, [f"scale_{i}" for i in range(3)]).double())
    quat = torch.nn.functional.normalize(stack(col, [f"rot_{i}" for i in range(4)]).double(), dim=-1)
    rebuilt = covariance_3d(scale, quat)
    renderer = covariance_3d(gaussians[:, 4:7], gaussians[:, 7:11]).double()   # float32, as rendered
    error = (rebuilt - renderer).flatten(1).norm(dim=1) / renderer.flatten(1).norm(dim=1)
    # Per Gaussian, relative to ‖Σ‖: float32 storage of ln s (half an ulp: <= 4.8e-7 relative in
    # s for |ln s| < 16, so <= 1e-6 in s²) and of q (~6e-8), plus the renderer's own float32
    # rounding of Σ (~1e-7). Measured: 6.6e-7 at most.
    assert error.max().item() < 2e-6


def test_ply_renders_like_ort3d_in_viewers(tmp_path):
    """A viewer's render of the default .ply equals ort3d's render of the model's Gaussians (raw
    quaternions, Q19) on the 8 feedback views; the reference's bytes (raw layout) and the former
    unit-quaternion layout, which viewers decode alike, do not."""
    gaussians = lgm_like_gaussians(65536)[0]              # quaternion norms ≈ 2/256, as LGM's
    # Threshold 0 keeps every Gaussian: this compares layouts, not the pruning.
    write_ply(tmp_path / "viewer.ply", gaussians, opacity_threshold=0.0)
    write_ply(tmp_path / "raw.ply", gaussians, opacity_threshold=0.0, layout="raw")
    size = 128                                            # the tiny preset's feedback render size
    cams = load_feedback_cameras()
    cameras = prepare_render_cameras(cams.c2w, cams.fov_deg, cams.intrinsics, size, size)
    scenes = torch.cat([gaussians[None], read_ply_as_viewer(tmp_path / "viewer.ply"),
                        read_ply_as_viewer(tmp_path / "raw.ply")])
    rgb = render_gaussians(scenes, cameras.w2c, cameras.K, size, size).rgb.double()

    def psnr(image):
        return (-10 * torch.log10(torch.mean((image - rgb[0]) ** 2))).item()

    # 60 dB: the covariances agree to ~1e-6 (test above), which moves pixels by ~1e-6 (measured:
    # 147 dB, largest pixel difference 3.6e-7); the margin covers pixels where a Gaussian would
    # cross the renderer's α >= 1/255 cut-off.
    assert psnr(rgb[1]) >= 60
    # Rotating LGM's near-axis-aligned ellipsoids by the normalised quaternion: ~24 dB.
    assert psnr(rgb[2]) < 60


def test_ply_raw_layout_keeps_reference_values(tmp_path):
    gaussians = make_gaussians(seed=1)
    write_ply(tmp_path / "raw.ply", gaussians, layout="raw")
    write_ply(tmp_path / "viewer.ply", gaussians)
    raw, viewer = ply_columns(tmp_path / "raw.ply"), ply_columns(tmp_path / "viewer.ply")
    kept = gaussians[10:]
    # Bit for bit what the reference's save_ply writes: the raw quaternion, ln(s + 1e-8) in float32.
    np.testing.assert_array_equal(stack(raw, [f"rot_{i}" for i in range(4)]), kept[:, 7:11])
    np.testing.assert_array_equal(stack(raw, [f"scale_{i}" for i in range(3)]),
                                  torch.log(kept[:, 4:7] + 1e-8))
    # The layouts differ only in scale and rotation.
    for name in PLY_PROPERTIES[:7]:
        np.testing.assert_array_equal(raw[name], viewer[name])


def test_ply_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="ply layout must be one of viewer, raw"):
        write_ply(tmp_path / "g.ply", make_gaussians(), layout="unit")
    assert not any(tmp_path.iterdir())


def test_ply_refuses_nan_and_leaves_no_file(tmp_path):
    gaussians = make_gaussians()
    gaussians[20, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_ply(tmp_path / "bad.ply", gaussians)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- video

def test_orbit_frames_truncate_like_reference():
    rgb = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.999]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    frames = orbit_frames_uint8(rgb)
    assert frames.shape == (2, 1, 6, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0, 0, :, 0], [0, 127, 255, 255, 0, 254])


@pytest.mark.parametrize("height,width", [(128, 128), (33, 21)])
def test_video_reads_back(tmp_path, height, width):
    import imageio.v3 as iio

    t = np.linspace(0, 1, 12)[:, None, None, None]
    ramp = np.linspace(0, 1, width)[None, None, :, None]
    frames = np.broadcast_to((t * 0.5 + ramp * 0.5) * 255, (12, height, width, 3)).astype(np.uint8)
    path = tmp_path / "orbit.mp4"
    assert write_video(path, frames, fps=30) == path
    back = iio.imread(path, plugin="FFMPEG")
    # yuv420p needs even sizes: odd sides gain one replicated row/column.
    assert back.shape == (12, height + height % 2, width + width % 2, 3)
    # H.264 is lossy; a smooth ramp comes back within a few grey levels on average.
    assert np.abs(back[:, :height, :width].astype(int) - frames).mean() < 3
    meta = iio.immeta(path, plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["fps"] == 30 and "yuv420p" in meta["pix_fmt"]
    assert leftovers(tmp_path) == []


def test_video_rejects_float_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.float32))
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- JSON, atomicity

def test_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "run.json"
    assert write_json(path, {"steps": 25, "preset": "tiny", "timings_ms": [1.5, 2.0]}) == path
    assert json.loads(path.read_text()) == {"steps": 25, "preset": "tiny", "timings_ms": [1.5, 2.0]}
    assert path.read_text().endswith("\n")


def test_failed_write_keeps_previous_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "run.json"
    write_json(path, {"ok": True})
    # json.dump streams: the first keys reach the temporary file before the set fails.
    with pytest.raises(TypeError):
        write_json(path, {"a": list(range(1000)), "b": {1, 2}})
    assert json.loads(path.read_text()) == {"ok": True}
    assert leftovers(tmp_path) == []


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".bin"
            tmp.write_bytes(b"half written")
            raise RuntimeError("disk full")
    assert not target.exists() and leftovers(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete" and leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
