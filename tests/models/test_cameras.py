import math

import torch

from ort3d.models.cameras import load_feedback_cameras, orbit_c2w


def test_feedback_cameras_match_spec_appendix_a():
    cams = load_feedback_cameras()
    assert cams.c2w.shape == (8, 4, 4) and cams.c2w.dtype == torch.float32
    assert torch.all(cams.fov_deg == torch.tensor(39.59775161743164))
    assert torch.all(cams.intrinsics[:, 0, 0] == torch.tensor(1.3888888359069824))
    assert torch.all(cams.intrinsics[:, :2, 2] == 0.5)
    # Positions on a circle of radius 1.7416968 at azimuths 0,45,...,270 and 337.5 (Q10).
    azimuths = torch.tensor([0, 45, 90, 135, 180, 225, 270, 337.5]) * math.pi / 180
    expected = 1.7416968 * torch.stack([azimuths.sin(), torch.zeros(8), azimuths.cos()], -1)
    torch.testing.assert_close(cams.c2w[:, :3, 3], expected, atol=2e-6, rtol=0)
    # Each camera looks at the origin (OpenCV z forward) with camera y pointing to world -y.
    forward = cams.c2w[:, :3, 2]
    torch.testing.assert_close(forward, -expected / 1.7416968, atol=2e-6, rtol=0)
    assert torch.all(cams.c2w[:, 1, 1] < -0.999)


def test_orbit_cameras_follow_kiui_orbit_camera_in_opencv_axes():
    c2w = orbit_c2w(4, radius=1.5)
    # azimuth 0: camera on +z looking at -z, x right, y down: the same axes as feedback view 0.
    torch.testing.assert_close(c2w[0], torch.tensor([[1., 0, 0, 0], [0, -1, 0, 0],
                                                     [0, 0, -1, 1.5], [0, 0, 0, 1]]), atol=1e-6, rtol=0)
    # azimuth 90°: camera on +x, looking at -x.
    torch.testing.assert_close(c2w[1, :3, 3], torch.tensor([1.5, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[1, :3, 2], torch.tensor([-1., 0, 0]), atol=1e-6, rtol=0)
    # Rotations are orthonormal and right-handed.
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(4), atol=1e-6)


def test_orbit_elevation_raises_the_camera_and_keeps_it_aimed_at_the_origin():
    c2w = orbit_c2w(3, radius=2.0, elevation_deg=30)
    assert torch.allclose(c2w[:, 1, 3], torch.full((3,), 1.0), atol=1e-6)   # 2·sin 30°
    forward, position = c2w[:, :3, 2], c2w[:, :3, 3]
    torch.testing.assert_close(forward, -position / position.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
