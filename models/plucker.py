"""Plücker ray embeddings of the multi-view UNet, exactly as the authors compute them (docs/inference.md#plucker-embeddings).

Two quirks are reproduced on purpose because the released weights were trained with them:
- Q2: the pixel grid is transposed (the row coordinate feeds camera x) and the lifted point is
  multiplied by c2wᵀ, so d = normalize(Rᵀ·p − t) instead of the geometric ray R·p.
- Q4: that product is the same einsum as the authors', so CUDA fp16 autocast lowers it to an
  fp16 bmm exactly like the reference; the rest of the ray maths stays in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

HARMONIC_FUNCTIONS = 6
PLUCKER_DIMS = 6 * (2 * HARMONIC_FUNCTIONS + 1)   # [o×d, d] -> sin, cos, input = 78


def _with_batch(tensor: torch.Tensor, matrix_ndim: int = 2) -> torch.Tensor:
    """[F,i,j] -> [1,F,i,j]; [B,F,i,j] unchanged."""
    return tensor[None] if tensor.ndim == matrix_ndim + 1 else tensor


def sample_rays(intrinsics: torch.Tensor, c2w: torch.Tensor, resolution: int):
    """Ray origins and directions at the centres of a resolution² grid.

    intrinsics: [F,3,3] or [B,F,3,3], normalised (focal and centre divided by the image size).
    c2w: [F,4,4] or [B,F,4,4], OpenCV camera-to-world.
    Returns (origins, directions), each [B,F,r,r,3] (B = 1 for unbatched inputs).
    """
    intrinsics, c2w = _with_batch(intrinsics), _with_batch(c2w)
    batch, frames = intrinsics.shape[:2]
    device = intrinsics.device
    index = torch.arange(resolution, dtype=torch.float32, device=device)
    grid = torch.stack(torch.meshgrid(index, index, indexing="ij"))
    grid = grid * (1.0 * 1 / resolution) + (0.5 * 1 / resolution)   # same float ops as the authors
    # Q2: grid[0] varies along rows but is used as camera x (and grid[1], the column, as y).
    x_cam = grid[0].expand(batch, frames, resolution, resolution)
    y_cam = grid[1].expand(batch, frames, resolution, resolution)
    fx = intrinsics[..., 0, 0][..., None, None]
    fy = intrinsics[..., 1, 1][..., None, None]
    cx = intrinsics[..., 0, 2][..., None, None]
    cy = intrinsics[..., 1, 2][..., None, None]
    z_cam = torch.ones((batch, frames, resolution, resolution), device=device, dtype=intrinsics.dtype)
    x_lift = (x_cam - cx) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    points = torch.stack([x_lift, y_lift, z_cam, torch.ones_like(z_cam)], dim=-1).to(intrinsics.dtype)
    # Q2/Q4: contraction over the ROW index of c2w (w = c2wᵀ·p), in the authors' einsum form.
    world = torch.einsum("b f i j, b f h w i -> b f h w j", c2w, points)[..., :3]
    origins = c2w[..., :3, 3][:, :, None, None, :].expand(batch, frames, resolution, resolution, 3)
    directions = world - origins
    directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    return origins, directions


def harmonic_frequencies(device=None) -> torch.Tensor:
    """2^k, k = 0..5 (pytorch3d HarmonicEmbedding: logspace, omega_0 = 1)."""
    return 2.0 ** torch.arange(HARMONIC_FUNCTIONS, dtype=torch.float32, device=device) * 1.0


def encode_plucker(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[..., 3] origins and directions -> [..., 78] harmonic Plücker code, computed in fp32.

    Layout: [sin(e) (36) | cos(e) (36) | pl (6)] with pl = [o×d, d] and e[c·6+k] = pl_c·2^k
    (channel-major, as pytorch3d's HarmonicEmbedding with append_input=True).
    """
    dtype = origins.dtype
    origins, directions = origins.float(), directions.float()
    plucker = torch.cat((torch.cross(origins, directions, dim=-1), directions), dim=-1)
    embed = (plucker[..., None] * harmonic_frequencies(plucker.device)).view(*plucker.shape[:-1], -1)
    return torch.cat((embed.sin(), embed.cos(), plucker), dim=-1).to(dtype)


class PluckerEmbedding(nn.Module):
    """MLP 78 -> C -> C (keys `embed.0.*`, `embed.2.*` as in the released checkpoint)."""

    def __init__(self, out_channels: int, in_channels: int = PLUCKER_DIMS):
        super().__init__()
        self.embed = nn.Sequential(
            nn.Linear(in_channels, out_channels),
            nn.SiLU(),
            nn.Linear(out_channels, out_channels),
        )

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.embed(code)

    def feature_map(self, intrinsics: torch.Tensor, c2w: torch.Tensor, resolution: int) -> torch.Tensor:
        """Cameras -> the embedding added to the UNet activations, [(B·F), C, r, r]."""
        origins, directions = sample_rays(intrinsics, c2w, resolution)
        features = self(encode_plucker(origins, directions))          # [B,F,r,r,C]
        return features.permute(0, 1, 4, 2, 3).flatten(0, 1).contiguous()
