"""The files `ort3d-run` writes: views grid PNG, Gaussians PLY (docs/ply.md), orbit MP4, JSON.

Every writer is atomic: it writes a temporary file in the destination folder and renames it
over the destination only once the file is complete, so a crash, a full disk or an exception
never leaves a partial output behind (and never destroys a previous complete one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ort3d.export.atomic import atomic_path
from ort3d.kernels.render import covariance_3d

SH_C0 = 0.28209479177387814      # degree-0 spherical-harmonic constant of the 3DGS .ply format
GRID_COLUMNS = 4                 # views per grid row, as the reference's save_image(nrow=4)
GRID_PADDING = 2                 # px of black between and around the tiles (torchvision's default)

# The reference's .ply properties, in its order (LGM gs.py save_ply).
PLY_PROPERTIES = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
# "viewer": what 3DGS viewers show equals ort3d's render; "raw": the reference's bytes.
PLY_LAYOUTS = ("viewer", "raw")
SCALE_FLOOR = 1e-8   # smallest scale the viewer layout writes: the reference's ln(s + 1e-8) guard


def _as_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


# ----------------------------------------------------------------------------- views grid

def views_grid(views, input_image) -> np.ndarray:
    """uint8 [H, W, 3] grid: the input image alone in column 0 of row 0 (the cell below it is
    white), then the views 4 per row, views 0–3 in row 0 and 4–7 in row 1 (the reference's
    2×4 grid with the input added on the left); 2 px black padding between and around tiles.
    For 8 views of S² pixels: width 5·(S+2)+2, height 2·(S+2)+2 (2572×1030 at S = 512)."""
    views = _as_tensor(views, "views")
    image = _as_tensor(input_image, "input image")
    if views.ndim != 4 or views.shape[1] != 3:
        raise ValueError(f"views must be [V, 3, S, S], got {tuple(views.shape)}")
    if image.shape != views.shape[1:]:
        raise ValueError(f"input image must be {tuple(views.shape[1:])}, got {tuple(image.shape)}")
    count, _, height, width = views.shape
    rows = -(-count // GRID_COLUMNS)
    pad = GRID_PADDING
    grid = torch.zeros(3, rows * (height + pad) + pad, (GRID_COLUMNS + 1) * (width + pad) + pad)

    def cell(row: int, col: int) -> tuple[slice, slice]:
        y, x = pad + row * (height + pad), pad + col * (width + pad)
        return slice(y, y + height), slice(x, x + width)

    for row in range(1, rows):
        grid[(slice(None), *cell(row, 0))] = 1.0
    grid[(slice(None), *cell(0, 0))] = image
    for index in range(count):
        grid[(slice(None), *cell(index // GRID_COLUMNS, 1 + index % GRID_COLUMNS))] = views[index]
    # torchvision.utils.save_image's conversion: round half up, then clamp.
    grid = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return grid.permute(1, 2, 0).contiguous().numpy()


def write_views_png(path, views, input_image) -> Path:
    """Write `views_grid(views, input_image)` as PNG; returns the path written."""
    from PIL import Image

    grid = views_grid(views, input_image)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------- Gaussians

def quaternion_from_rotation(m: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] (w, x, y, z), w >= 0, of proper rotation matrices m [..., 3, 3].

    Inverse of the quaternion->matrix formula of `covariance_3d`. Each row of `candidates` is
    4·c·q for one component c of q (c = w, x, y, z); normalising the row of the largest |c|
    divides by the largest number, so no rotation loses precision (Shepperd's method, batched).
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),   # 4w·q
        torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),   # 4x·q
        torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),   # 4y·q
        torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),   # 4z·q
    ], -2)
    best = torch.diagonal(candidates, dim1=-2, dim2=-1).argmax(-1)    # the row holding 4c², c largest
    q = torch.take_along_dim(candidates, best[..., None, None], dim=-2).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)                         # q and −q: same rotation


def viewer_scale_rotation(scale: torch.Tensor, quat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales [N, 3] and unit quaternions [N, 4] (w, x, y, z) whose standard 3DGS covariance
    R(q/|q|)·diag(s)²·R(q/|q|)ᵀ is the covariance ort3d's renderer builds from the RAW quaternion
    (`covariance_3d`, docs/quirks.md#q19), in float64.

    Σ is symmetric positive semi-definite: Σ = V·diag(λ)·Vᵀ with orthonormal V, so s = sqrt(λ)
    (floored at SCALE_FLOOR) and V, made proper by flipping one column (which leaves Σ unchanged),
    is the rotation.
    """
    covariance = covariance_3d(scale.double(), quat.double())
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvectors[..., 2] *= torch.linalg.det(eigenvectors).sign()[..., None]   # det is ±1
    scale = eigenvalues.clamp_min(SCALE_FLOOR ** 2).sqrt()
    return scale, quaternion_from_rotation(eigenvectors)


def ply_records(gaussians, opacity_threshold: float = 0.005, *, layout: str = "viewer") -> np.ndarray:
    """Structured float32 array of the Gaussians kept by the opacity threshold, in the standard
    3DGS .ply layout (pre-activation values): f_dc = (rgb − 0.5)/SH_C0,
    opacity = ln(o/(1−o+1e-8) + 1e-8), scale = ln(scale), rot = w,x,y,z (docs/ply.md).

    `gaussians` is [N, 14] or [1, N, 14] in the buffer layout pos(3) opacity(1) scale(3) rot(4)
    rgb(3). LGM's quaternions are not unit length (docs/quirks.md#q19) and the renderer uses
    them raw, so a viewer, which normalises them, would show other ellipsoids. layout="viewer"
    (default) writes the scales and unit rotation of the renderer's covariance
    (`viewer_scale_rotation`), which viewers display as ort3d renders them; layout="raw" writes
    the reference save_ply's values: the raw quaternion and ln(scale + 1e-8).
    """
    if layout not in PLY_LAYOUTS:
        raise ValueError(f"ply layout must be one of {', '.join(PLY_LAYOUTS)}; got {layout!r}")
    g = _as_tensor(gaussians, "gaussians")
    if g.ndim == 3 and g.shape[0] == 1:
        g = g[0]
    if g.ndim != 2 or g.shape[1] != 14:
        raise ValueError(f"gaussians must be [N, 14] or [1, N, 14], got {tuple(g.shape)}")
    g = g[g[:, 3] >= opacity_threshold]
    pos, opacity, scale, rot, rgb = g[:, 0:3], g[:, 3:4], g[:, 4:7], g[:, 7:11], g[:, 11:14]
    if layout == "viewer":
        scale, rot = viewer_scale_rotation(scale, rot)
        log_scale = torch.log(scale).float()
        rot = rot.float()
    else:
        log_scale = torch.log(scale + 1e-8)
    columns = torch.cat([
        pos,
        (rgb - 0.5) / SH_C0,
        torch.log(opacity / (1 - opacity + 1e-8) + 1e-8),
        log_scale,
        rot,
    ], dim=1)
    dtype = np.dtype([(name, "<f4") for name in PLY_PROPERTIES])
    return np.ascontiguousarray(columns.numpy().astype("<f4")).view(dtype).reshape(-1)


def write_ply(path, gaussians, opacity_threshold: float = 0.005, *, layout: str = "viewer") -> int:
    """Write the Gaussians as a binary little-endian .ply with one `vertex` element in the given
    layout ("viewer" or "raw", see `ply_records` and docs/ply.md); returns the number written."""
    from plyfile import PlyData, PlyElement

    records = ply_records(gaussians, opacity_threshold, layout=layout)
    ply = PlyData([PlyElement.describe(records, "vertex")], text=False, byte_order="<")
    with atomic_path(path) as tmp:
        ply.write(str(tmp))
    return int(records.shape[0])


# ----------------------------------------------------------------------------- orbit video

def orbit_frames_uint8(rgb) -> np.ndarray:
    """[T, 3, H, W] float -> [T, H, W, 3] uint8 by truncation, `(clamp(x, 0, 1)·255).astype(uint8)`
    as the reference."""
    frames = torch.as_tensor(rgb).detach().to("cpu", torch.float32)
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"orbit frames must be [T, 3, H, W], got {tuple(frames.shape)}")
    frames = torch.nan_to_num(frames, nan=0.0)
    return (frames.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_video(path, frames: np.ndarray, fps: int = 30) -> Path:
    """Write uint8 [T, H, W, 3] frames as H.264 MP4 (libx264, yuv420p, imageio-ffmpeg).

    yuv420p needs even sizes: an odd height or width gets one replicated edge row/column, and
    imageio's macro-block resize is off, so 128² (tiny) and 512² (full) frames go in unchanged.
    """
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"video frames must be uint8 [T, H, W, 3] with T > 0, got "
                         f"{frames.dtype} {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=1,
                                    ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return Path(path)


# ----------------------------------------------------------------------------- JSON

def write_json(path, obj) -> Path:
    """Write `obj` as indented JSON (UTF-8, trailing newline), atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
    return Path(path)
