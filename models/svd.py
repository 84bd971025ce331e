"""SVD micro-conditioning constants (docs/inference.md#conditioning)."""

from __future__ import annotations

import torch

COND_NOISE_AUG = 0.02   # std of the noise added to the conditioning image before VAE encoding


def added_time_ids(fps: int = 7, motion_bucket_id: int = 127, noise_aug: float = COND_NOISE_AUG,
                   batch: int = 1) -> torch.Tensor:
    """[batch, 3] float32 rows [fps - 1, motion_bucket_id, noise_aug] (the pipeline passes fps - 1)."""
    row = torch.tensor([[fps - 1, motion_bucket_id, noise_aug]], dtype=torch.float32)
    return row.repeat(batch, 1)
