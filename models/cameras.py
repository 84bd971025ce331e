"""Camera data: the 8 feedback cameras of the released model and the orbit-video cameras.

All c2w matrices are camera-to-world in the OpenCV convention (x right, y down, z forward),
float32, world y up (docs/inference.md#cameras).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

import torch


@dataclass(frozen=True)
class FeedbackCameras:
    c2w: torch.Tensor          # [V,4,4] float32 (the npy is float64; the reference casts)
    fov_deg: torch.Tensor      # [V] float32, full field of view in degrees
    intrinsics: torch.Tensor   # [V,3,3] float32, normalised (fx, cx divided by the image size)

    def to(self, device) -> "FeedbackCameras":
        return FeedbackCameras(self.c2w.to(device), self.fov_deg.to(device), self.intrinsics.to(device))


def load_feedback_cameras() -> FeedbackCameras:
    """The released `hyper/{c2w,fov,intrinsics}.npy` (models/data/cameras.json holds them exactly)."""
    text = resources.files("ort3d.models").joinpath("data/cameras.json").read_text()
    data = json.loads(text)

    def tensor(name):
        return torch.tensor(data[name]["data"], dtype=torch.float64).to(torch.float32)

    return FeedbackCameras(tensor("c2w"), tensor("fov"), tensor("intrinsics"))


def orbit_c2w(num_frames: int, radius: float = 1.5, elevation_deg: float = 0.0) -> torch.Tensor:
    """Cameras circling the object for the orbit video (docs/inference.md#cameras, kiui.orbit_camera).

    Azimuth 0..360° (exclusive) from +z towards +x; positive elevation puts the camera above the
    object. Built as an OpenGL look-at (columns right, up, forward with forward pointing from the
    target to the camera) and converted to OpenCV by negating columns 1 and 2. Returns [T,4,4].
    """
    azimuth = torch.arange(num_frames, dtype=torch.float64) * (2 * math.pi / num_frames)
    elevation = math.radians(elevation_deg)
    position = torch.stack([
        radius * math.cos(elevation) * torch.sin(azimuth),
        torch.full_like(azimuth, radius * math.sin(elevation)),
        radius * math.cos(elevation) * torch.cos(azimuth),
    ], dim=-1)
    forward = position / position.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(world_up, forward)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = right, -up, -forward   # OpenGL -> OpenCV
    c2w[:, :3, 3] = position
    return c2w.to(torch.float32)


ORBIT_FOV_DEG = 49.1    # LGM's video camera (docs/quirks.md#q13), not the feedback cameras' 39.6°
