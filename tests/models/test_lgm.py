"""LGM semantics on the tiny preset (docs/inference.md#lgm): input mapping (Q8), view selection, Plücker rays of
the real cameras, live time path, and the output activations (Q9, Q19)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.lgm import LGM, LGMConfigError, plucker_rays, timestep_embedding
from ort3d.models.presets import TINY
from ort3d.models.weights import init_deterministic

N = 4 * 32 * 32   # 4 views x splat_size² Gaussians


@pytest.fixture(scope="module")
def model():
    return init_deterministic(LGM(TINY.lgm), TINY.seed, "lgm").eval()


@pytest.fixture(scope="module")
def cameras():
    cams = load_feedback_cameras()    # the released c2w / fov (39.59775°) of the 8 views
    return cams.c2w, cams.fov_deg


@pytest.fixture(scope="module")
def images():
    return 0.8 * torch.randn(1, 8, 3, 128, 128, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def gaussians(model, images, cameras):
    with torch.no_grad():
        return model.forward_gaussians(images, torch.tensor(0.4), *cameras)


def run(model, images, cameras, t=0.4):
    with torch.no_grad():
        return model.forward_gaussians(images, torch.tensor(t), *cameras)


def test_output_shape_dtype_and_ranges(gaussians):
    assert gaussians.shape == (1, N, 14) and gaussians.dtype == torch.float32
    assert torch.isfinite(gaussians).all()
    pos, opacity, scale, rgb = gaussians[0, :, 0:3], gaussians[0, :, 3], gaussians[0, :, 4:7], gaussians[0, :, 11:]
    assert pos.abs().max() <= 1 and ((opacity > 0) & (opacity < 1)).all()
    assert (scale > 0).all() and ((rgb >= 0) & (rgb <= 1)).all()
    assert pos.std() > 0.05 and rgb.std() > 0.05   # random weights: values spread, not saturated


def test_input_is_unclamped_half_plus_half_then_imagenet_then_resized(model, images, cameras):
    """Q8: 0.5x+0.5 without clamp, ImageNet normalisation at 128², bilinear to 64² (a 2×2 mean)."""
    wide = images * 2.0                               # well outside [-1, 1]
    inputs = model.prepare_inputs(wide, *cameras)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = F.avg_pool2d((0.5 * wide[0, [0, 2, 4, 6]] + 0.5 - mean) / std, 2)
    assert inputs.shape == (4, 9, 64, 64)
    # fp32 rounding of two different summation orders on values of order 10.
    torch.testing.assert_close(inputs[:, :3], expected, rtol=0, atol=1e-5)
    assert not torch.equal(run(model, wide, cameras), run(model, wide.clamp(-1, 1), cameras))


def test_view_selection_takes_every_second_view(model, images, cameras):
    """docs/inference.md#lgm-input: views [0, 2, 4, 6] (images and cameras); the network input is all that the
    output depends on, so comparing inputs shows which views matter."""
    assert model.view_indices(8).tolist() == [0, 2, 4, 6]
    assert model.view_indices(4).tolist() == [0, 1, 2, 3]
    with pytest.raises(LGMConfigError, match="needs 4 views"):
        model.view_indices(6)
    reference = model.prepare_inputs(images, *cameras)
    for view, used in ((1, False), (2, True), (7, False), (6, True)):
        changed = images.clone()
        changed[:, view] = -changed[:, view]
        assert torch.equal(model.prepare_inputs(changed, *cameras), reference) != used, view
        c2w, fov = cameras[0].clone(), cameras[1]
        c2w[view, :3, 3] *= 0.5
        assert torch.equal(model.prepare_inputs(images, c2w, fov), reference) != used, view


class _HostToDevice(TorchDispatchMode):
    """Records ops that turn a CPU tensor into one on the (meta) device: host-to-device copies."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.is_cpu for t in inputs) and any(t.is_meta for t in outputs):
            self.copies.append(str(func))
        return out


def test_a_step_copies_nothing_from_the_host():
    """A blocking host-to-device copy syncs CUDA every denoising step; the meta device stands in
    for it here (any CPU tensor the call creates would have to be copied over)."""
    with torch.device("meta"):
        model = LGM(TINY.lgm)
    images = torch.empty(1, 8, 3, 128, 128, device="meta")
    rays = torch.empty(4, 6, 64, 64, device="meta")
    with torch.no_grad(), _HostToDevice() as mode:
        out = model.forward_gaussians(images, torch.empty((), device="meta"), rays=rays)
    assert out.shape == (1, N, 14) and mode.copies == []


def test_precomputed_rays_give_the_same_gaussians(model, images, cameras, gaussians):
    c2w, fov = cameras
    index = model.view_indices(8)
    selected = model.rays(c2w[index], fov[index])
    assert selected.shape == (4, 6, 64, 64)
    with torch.no_grad():
        for rays in (selected, model.rays(c2w, fov), selected[None]):
            assert torch.equal(model.forward_gaussians(images, torch.tensor(0.4), rays=rays), gaussians)


def test_rays_of_the_real_cameras_at_256(cameras):
    """docs/inference.md#lgm-input, values worked out in float64 from the ideal cameras (view 0 at +z looking at the
    origin, view 2 at +x), focal 128 / tan(19.7989°) = 355.5556, pixel centre (col - 127.5) / f."""
    c2w, fov = cameras
    rays = plucker_rays(c2w[[0, 2]], fov[[0, 2]], 256)
    assert rays.shape == (2, 6, 256, 256)
    expected = {   # (view, row, col): [o × d, d]
        (0, 0, 0): [-0.5570276, -0.5570276, 0.0, -0.3198189, 0.3198189, -0.8918698],
        (0, 128, 255): [0.0023055, 0.5879046, 0.0, 0.3375471, -0.0013237, -0.9413077],
        (1, 0, 0): [0.0, -0.5570276, 0.5570276, -0.8918698, 0.3198189, 0.3198189],
        (1, 200, 50): [0.0, -0.363777, -0.3403075, -0.9582272, -0.1953885, 0.2088636],
    }
    for (view, row, col), value in expected.items():
        # 7 printed decimals, fp32 rounding and the cameras' ~1e-7 off-axis terms (× radius 1.74).
        torch.testing.assert_close(rays[view, :, row, col], torch.tensor(value), rtol=0, atol=1e-6)
    assert torch.allclose(rays[:, 3:].norm(dim=1), torch.ones(()), atol=1e-6)   # unit directions


def test_rays_under_autocast_round_only_the_rotation_product(cameras):
    """The runtime hoists the rays inside the autocast region like the reference: the direction
    matmul runs in low precision, the normalisation and the result stay float32 (on CPU too,
    where autocast leaves `sum` in bf16 and a mixed-dtype cross product would fail)."""
    c2w, fov = cameras
    exact = plucker_rays(c2w[[0, 2]], fov[[0, 2]], 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = plucker_rays(c2w[[0, 2]], fov[[0, 2]], 64)
    assert rounded.dtype == torch.float32
    # bf16 keeps 8 significant bits: unit directions move by <= ~4e-3, o × d (|o| = 1.74) by more.
    torch.testing.assert_close(rounded, exact, rtol=0, atol=2e-2)
    assert (rounded - exact).abs().max() > 1e-4   # the rounded product is visible


def test_time_path_is_live_and_embedding_matches_diffusers(model, images, cameras, gaussians):
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([1.6382, -1.5537, 0.0])          # the schedule's raw 0.25 ln σ range
    assert torch.equal(timestep_embedding(t, 128), Timesteps(128, True, 0)(t))
    assert not torch.allclose(run(model, images, cameras, t=-0.4), gaussians, atol=1e-4)
    with torch.no_grad():   # a Python float is the same timestep as a 0-d float32 tensor
        assert torch.equal(model.forward_gaussians(images, 0.4, *cameras), gaussians)
    with pytest.raises(ValueError, match="one timestep"):
        model.forward_gaussians(images, torch.tensor([0.1, 0.2]), *cameras)


def test_gaussians_are_the_activated_raw_heads(model, images, cameras, gaussians):
    """Q9: scale = 0.1·softplus (no 0.7 with 4 views); Q19: rotation normalised over Gaussians."""
    with torch.no_grad():
        raw = model.forward_raw(model.prepare_inputs(images, *cameras), 0.4)
    assert raw.shape == (1, N, 14)
    torch.testing.assert_close(gaussians[..., 4:7], 0.1 * F.softplus(raw[..., 4:7]), rtol=0, atol=0)
    rot = gaussians[0, :, 7:11]
    torch.testing.assert_close(rot, raw[0, :, 7:11] / raw[0, :, 7:11].norm(dim=0), rtol=1e-6, atol=0)
    # Each component has unit L2 norm across the N Gaussians (fp32 sum of 4096 squares)...
    torch.testing.assert_close(rot.norm(dim=0), torch.ones(4), rtol=0, atol=1e-5)
    # ...so single quaternions are far from unit (about 2/sqrt(N) = 0.03), unlike a clean per-
    # quaternion normalisation, which this output must not equal.
    assert rot.norm(dim=1).max() < 0.5
    assert not torch.allclose(rot, F.normalize(raw[0, :, 7:11], dim=-1), atol=1e-2)


def test_scale_gets_0_7_only_above_4_views():
    raw = torch.randn(1, 2 * N, 14, generator=torch.Generator().manual_seed(5))
    four = LGM(TINY.lgm).activate(raw[:, :N])
    eight = LGM(dataclasses.replace(TINY.lgm, num_frames=8)).activate(raw)
    torch.testing.assert_close(four[..., 4:7], 0.1 * F.softplus(raw[:, :N, 4:7]), rtol=0, atol=0)
    torch.testing.assert_close(eight[..., 4:7], 0.1 * F.softplus(raw[..., 4:7]) * 0.7, rtol=0, atol=0)
    # The authors' output rearrange groups 4 views, so Q19's normalisation runs per 4-view group.
    half = eight[0, :N, 7:11]
    torch.testing.assert_close(half.norm(dim=0), torch.ones(4), rtol=0, atol=1e-5)
    assert math.isclose(float(four[0, :, 7:11].norm(dim=0)[0]), 1.0, abs_tol=1e-5)


def test_eight_view_config_runs_on_eight_views(images, cameras):
    model = init_deterministic(LGM(dataclasses.replace(TINY.lgm, num_frames=8)), TINY.seed, "lgm")
    out = run(model, images, cameras)
    assert out.shape == (1, 2 * N, 14) and torch.isfinite(out).all()
