"""Synthetic Gaussian scenes and cameras for renderer tests and benchmarks (no model needed).

Gaussians use the pipeline's [B, N, 14] layout (docs/architecture.md#gaussian-buffer): pos(3) opacity(1) scale(3)
rot(4: w,x,y,z) rgb(3), activations applied, quaternions normalised over the Gaussian axis like
LGM's output (quirk Q19).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def look_at_c2w(azimuth_deg, elevation_deg: float = 0.0, radius: float = 1.7) -> torch.Tensor:
    """OpenCV camera-to-world [V,4,4] looking at the origin from (r·sin a·cos e, −r·sin e, r·cos a·cos e),
    camera y pointing to world −y (the feedback cameras' convention, docs/inference.md#cameras)."""
    a = torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1) * (math.pi / 180)
    e = math.radians(elevation_deg)
    pos = torch.stack([radius * torch.sin(a) * math.cos(e), torch.full_like(a, -radius * math.sin(e)),
                       radius * torch.cos(a) * math.cos(e)], -1)
    forward = -pos / pos.norm(dim=-1, keepdim=True)
    down = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(down, forward)
    right = right / right.norm(dim=-1, keepdim=True)
    c2w = torch.eye(4, dtype=torch.float64).repeat(a.numel(), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = right, torch.linalg.cross(forward, right), forward
    c2w[:, :3, 3] = pos
    return c2w.float()


def _pack(pos, opacity, scale, quat, rgb) -> torch.Tensor:
    return torch.cat([pos, opacity[..., None], scale, quat, rgb], -1).float()


def lgm_like_gaussians(num: int = 65536, batch: int = 1, seed: int = 0, device=None) -> torch.Tensor:
    """[batch, num, 14] shaped like LGM output for one object: 70% on a noisy ellipsoid surface
    (opaque-ish, 0.1·softplus scales ~3 mm: median radius ~7 px at 512²), 30% scattered background splats with
    near-zero opacity that still get binned; quaternions normalised over N (Q19)."""
    gen = torch.Generator().manual_seed(seed)
    B, N = batch, num
    surface = torch.rand(B, N, generator=gen) < 0.7
    direction = F.normalize(torch.randn(B, N, 3, generator=gen), dim=-1)
    on_surface = direction * torch.tensor([0.45, 0.55, 0.4]) + 0.01 * torch.randn(B, N, 3, generator=gen)
    scattered = torch.rand(B, N, 3, generator=gen) * 1.6 - 0.8
    pos = torch.where(surface[..., None], on_surface, scattered).clamp(-1, 1)
    logit = torch.where(surface, 2.0 + 2.0 * torch.randn(B, N, generator=gen),
                        -7.0 + torch.randn(B, N, generator=gen))
    scale = 0.1 * F.softplus(-3.5 + 0.8 * torch.randn(B, N, 3, generator=gen))
    quat = F.normalize(torch.randn(B, N, 4, generator=gen), dim=1)          # Q19: over N
    rgb = 0.5 * torch.tanh(torch.randn(B, N, 3, generator=gen)) + 0.5
    return _pack(pos, torch.sigmoid(logit), scale, quat, rgb).to(device)


def edge_case_gaussians(seed: int = 0, device=None) -> torch.Tensor:
    """[1, N, 14] small scene mixing the renderer's corner cases, for cameras at radius ~1.7:
    random splats across and beyond the image borders, points behind or too near the cameras,
    needle-thin (nearly degenerate) covariances, huge splats covering many tiles, faint splats
    (opacity < 1/255, never blended), exact
    duplicates (equal depths: ties broken by index) and a fully opaque stack in front of the
    centre that makes pixels terminate early."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    parts = []
    n = 160                                       # scattered, straddling tiles and borders
    parts.append((rand(n, 3) * 2.4 - 1.2, rand(n), 0.1 * F.softplus(-3.0 + randn(n, 3)),
                  F.normalize(randn(n, 4), dim=0), rand(n, 3)))
    n = 24                                        # behind / at the cameras (radius ~1.7)
    far = F.normalize(randn(n, 3), dim=-1) * (1.5 + 0.6 * rand(n, 1))
    parts.append((far, rand(n), 0.02 + 0.02 * rand(n, 3), randn(n, 4) * 0.01, rand(n, 3)))
    n = 24                                        # needles: one axis long, two ~1e-6
    needle = torch.cat([0.1 + 0.2 * rand(n, 1), 1e-6 * rand(n, 2)], -1)
    parts.append((rand(n, 3) - 0.5, 0.5 + 0.5 * rand(n), needle, randn(n, 4), rand(n, 3)))
    n = 6                                         # huge, covering many tiles
    parts.append((0.3 * randn(n, 3), 0.3 * rand(n), 0.3 + 0.3 * rand(n, 3), randn(n, 4) * 0.01,
                  rand(n, 3)))
    n = 16                                        # faint: opacity below 1/255, never visible
    parts.append((rand(n, 3) - 0.5, 0.003 * rand(n), 0.05 + 0.05 * rand(n, 3), randn(n, 4),
                  rand(n, 3)))
    n = 40                                        # fully opaque stack along the view axes
    stack = torch.zeros(n, 3)
    stack[:, 2] = torch.linspace(-0.3, 0.3, n)
    stack[:, 0] = torch.linspace(0.3, -0.3, n)
    parts.append((stack, torch.ones(n), torch.full((n, 3), 0.08), torch.zeros(n, 4), rand(n, 3)))
    pos, opacity, scale, quat, rgb = (torch.cat(p) for p in zip(*parts))
    gaussians = _pack(pos, opacity, scale, quat, rgb)
    gaussians = torch.cat([gaussians, gaussians[:8]])   # duplicates: identical depths
    return gaussians[None].to(device)
