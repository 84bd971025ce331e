"""Model presets: `full` (the released shapes) and `tiny` (same architecture, tiny widths).

A preset fixes every hyper-parameter the networks and the loop need. The loop never branches on
the preset: only shapes differ (docs/architecture.md#presets). Checkpoint loading starts from a preset and replaces
what it can read from the files (configs, tensor shapes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SVD_DOWN_BLOCKS = (
    "CrossAttnDownBlockSpatioTemporal",
    "CrossAttnDownBlockSpatioTemporal",
    "CrossAttnDownBlockSpatioTemporal",
    "DownBlockSpatioTemporal",
)
SVD_UP_BLOCKS = (
    "UpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
)


def unet_config(block_out_channels, num_attention_heads, cross_attention_dim,
                addition_time_embed_dim, sample_size) -> dict[str, Any]:
    """kwargs of diffusers' UNetSpatioTemporalConditionModel (the SVD img2vid layout)."""
    return dict(
        sample_size=sample_size,
        in_channels=8,
        out_channels=4,
        down_block_types=SVD_DOWN_BLOCKS,
        up_block_types=SVD_UP_BLOCKS,
        block_out_channels=tuple(block_out_channels),
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * addition_time_embed_dim,
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        transformer_layers_per_block=1,
        num_attention_heads=tuple(num_attention_heads),
        num_frames=14,
    )


def vae_config(block_out_channels, layers_per_block, sample_size) -> dict[str, Any]:
    """kwargs of diffusers' AutoencoderKLTemporalDecoder."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=0.18215,
        force_upcast=True,
    )


def clip_config(hidden, layers, heads, mlp, image_size, patch, projection_dim) -> dict[str, Any]:
    """kwargs of transformers' CLIPVisionConfig (CLIPVisionModelWithProjection)."""
    return dict(
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
        projection_dim=projection_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        num_channels=3,
    )


def plucker_widths(block_out_channels) -> dict[str, tuple[int, ...]]:
    """Out widths of the 9 Plücker MLPs: [C0,C0,C1,C2] / C3 / [C3,C3,C2,C1] (authors' hard-coded list)."""
    c = tuple(block_out_channels)
    return {"down": (c[0], c[0], c[1], c[2]), "mid": (c[3],), "up": (c[3], c[3], c[2], c[1])}


@dataclass(frozen=True)
class LGMConfig:
    """The LGM options that shape the network (authors' `Options` + `num_frames`)."""

    input_size: int
    splat_size: int
    down_channels: tuple[int, ...]
    down_attention: tuple[bool, ...]
    mid_attention: bool
    up_channels: tuple[int, ...]
    up_attention: tuple[bool, ...]
    num_frames: int = 4           # views fed to LGM (Q9: scale factor 0.7 only when > 4)
    attention_heads: int = 16
    time_channels: int = 128      # hard-coded in the authors' UNet (time_embed 128 -> 512)


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int               # generated views and feedback renders are image_size²
    num_views: int                # frames of the video model = feedback views
    unet: dict[str, Any]
    adapter_channels: tuple[int, ...]
    adapter_blocks: int           # resblocks per adapter stage (nums_rb)
    lgm: LGMConfig
    vae: dict[str, Any]
    clip: dict[str, Any]
    seed: int = 0                 # seed of the deterministic random weights

    @property
    def latent_size(self) -> int:
        return self.image_size // 8

    @property
    def num_gaussians(self) -> int:
        return self.lgm.num_frames * self.lgm.splat_size ** 2

    @property
    def plucker_channels(self) -> dict[str, tuple[int, ...]]:
        return plucker_widths(self.unet["block_out_channels"])

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)


FULL = Preset(
    name="full",
    image_size=512,
    num_views=8,
    unet=unet_config((320, 640, 1280, 1280), (5, 10, 20, 20), 1024, 256, 96),
    adapter_channels=(320, 640, 1280, 1280),
    adapter_blocks=3,
    lgm=LGMConfig(
        input_size=256,
        splat_size=128,
        down_channels=(64, 128, 256, 512, 1024, 1024),
        down_attention=(False, False, False, True, True, True),
        mid_attention=True,
        up_channels=(1024, 1024, 512, 256, 128),
        up_attention=(True, True, True, False, False),
    ),
    vae=vae_config((128, 256, 512, 512), 2, 768),
    clip=clip_config(1280, 32, 16, 5120, 224, 14, 1024),
)

# Tiny: the same architecture as FULL with the smallest widths that keep FULL's pattern of width
# changes (multiples of 32 for GroupNorm(32), +32 per changing level). A tiny checkpoint then has
# exactly FULL's state-dict key names (a 1×1 shortcut / adapter in_conv exists only where a width
# changes), so it goes through the same loading paths. Attention heads stay 32 wide, as FULL's
# stay 64. The deepest levels are ≥ 64 wide (a 32-channel GroupNorm level has one channel per
# group and cancels per-channel constants such as the time embedding, see
# docs/precision.md#parity-fixtures). 128² views -> 16² latents, UNet bottom level 2×2; LGM up widths
# mirror its down widths as FULL's do; LGM splats 32² (4096 Gaussians).
TINY = Preset(
    name="tiny",
    image_size=128,
    num_views=8,
    unet=unet_config((32, 64, 96, 96), (1, 2, 3, 3), 32, 16, 16),
    adapter_channels=(32, 64, 96, 96),
    adapter_blocks=3,
    lgm=LGMConfig(
        input_size=64,
        splat_size=32,
        down_channels=(32, 64, 96, 128, 160, 160),
        down_attention=(False, False, False, True, True, True),
        mid_attention=True,
        up_channels=(160, 160, 128, 96, 64),
        up_attention=(True, True, True, False, False),
    ),
    vae=vae_config((32, 32, 64, 64), 1, 128),
    clip=clip_config(32, 2, 2, 64, 56, 14, 32),
)

PRESETS = {p.name: p for p in (FULL, TINY)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
