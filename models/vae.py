"""SVD's VAE: diffusers' AutoencoderKLTemporalDecoder (docs/inference.md#conditioning, docs/inference.md#the-loop).

The two entry points call the encoder/decoder submodules directly (no distribution objects, no
chunking) so they trace and export as plain graphs.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder


def vae_init_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a vae/config.json that AutoencoderKLTemporalDecoder accepts (lists as tuples)."""
    accepted = inspect.signature(AutoencoderKLTemporalDecoder.__init__).parameters
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in accepted}


def build_vae(config: dict[str, Any]) -> AutoencoderKLTemporalDecoder:
    return AutoencoderKLTemporalDecoder(**vae_init_kwargs(config))


def vae_encode_mode(vae: AutoencoderKLTemporalDecoder, images: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] in [-1,1] -> posterior mean [B,4,S/8,S/8], NOT multiplied by scaling_factor."""
    moments = vae.quant_conv(vae.encoder(images))
    return moments[:, : vae.config.latent_channels]   # mean first, then log-variance


def vae_decode(vae: AutoencoderKLTemporalDecoder, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[B·F,4,s,s] latents already multiplied by 1/scaling_factor -> [B·F,3,8s,8s], unclamped.

    All frames of a video go through in one call: the temporal decoder mixes them, so decoding
    in chunks of fewer frames gives different images.
    """
    if latents.shape[0] % num_frames:
        raise ValueError(f"{latents.shape[0]} latent frames is not a multiple of num_frames={num_frames}")
    batch = latents.shape[0] // num_frames
    image_only_indicator = torch.zeros(batch, num_frames, dtype=latents.dtype, device=latents.device)
    return vae.decoder(latents, num_frames=num_frames, image_only_indicator=image_only_indicator)
