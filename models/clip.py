"""SVD's image conditioning: antialiased resize + CLIP normalisation + ViT image embedding (docs/inference.md#conditioning).

The resize is SVD's `_resize_with_antialiasing` (a skimage-style Gaussian prefilter, then bicubic
with align_corners=True), written out here so it does not depend on a private diffusers function.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

# Standard OpenAI CLIP normalisation, as shipped in SVD's feature_extractor (docs/inference.md#conditioning).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def antialias_sigma_and_size(in_size: int, out_size: int) -> tuple[float, int]:
    """Gaussian prefilter for a downscale by in/out: sigma from skimage, kernel of 2·2σ taps, odd."""
    sigma = max((in_size / out_size - 1.0) / 2.0, 0.001)
    size = int(max(2.0 * 2 * sigma, 3))
    return sigma, size + 1 if size % 2 == 0 else size


def gaussian_kernel1d(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised exp(-x²/2σ²) on x = -(size//2)..size//2, evaluated in `dtype` like SVD does."""
    sigma_t = torch.tensor(sigma, dtype=dtype, device=device)
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    weights = torch.exp(-x.pow(2.0) / (2 * sigma_t.pow(2.0)))
    return weights / weights.sum()


def _blur_along(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (dim=-2) or W (dim=-1) with reflect padding."""
    channels, pad = x.shape[1], kernel.numel() // 2
    if dim == -1:
        weight, padding = kernel.view(1, 1, 1, -1), (pad, pad, 0, 0)
    else:
        weight, padding = kernel.view(1, 1, -1, 1), (0, 0, pad, pad)
    x = F.pad(x, padding, mode="reflect")
    return F.conv2d(x, weight.expand(channels, -1, -1, -1), groups=channels)


def resize_with_antialiasing(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,size]: Gaussian blur (width pass, then height pass), then bicubic."""
    (sigma_h, size_h), (sigma_w, size_w) = (antialias_sigma_and_size(x.shape[-2], size[0]),
                                            antialias_sigma_and_size(x.shape[-1], size[1]))
    x = _blur_along(x, gaussian_kernel1d(size_w, sigma_w, x.dtype, x.device), dim=-1)
    x = _blur_along(x, gaussian_kernel1d(size_h, sigma_h, x.dtype, x.device), dim=-2)
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=True)


def build_clip(config: dict) -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))


class ImageEncoder(nn.Module):
    """image [B,3,S,S] in [-1,1] -> CLIP image embedding [B,1,D] (the UNet's cross-attention context)."""

    def __init__(self, clip: CLIPVisionModelWithProjection,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.clip = clip
        self.image_size = clip.config.image_size
        # Not persistent: they come from feature_extractor/, not from the encoder's weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = resize_with_antialiasing(image, (self.image_size, self.image_size))
        y = (y + 1.0) / 2.0                  # no clamp, as SVD
        y = (y - self.mean) / self.std       # float32 statistics, as the numpy feature extractor
        return self.clip(pixel_values=y.to(self.clip.dtype)).image_embeds.unsqueeze(1)
