"""The multi-view video UNet of Ouroboros3D: SVD UNet + 2 feedback adapters + 9 Plücker MLPs.

Built on diffusers' UNetSpatioTemporalConditionModel and its blocks (state-dict keys equal the
released `mv_model_unet.pth`). diffusers' block forwards have no hook for the adapter features,
so `MVModel.forward` drives the blocks' sub-modules itself, mirroring diffusers' down/mid/up
block and TransformerSpatioTemporalModel forwards step for step (docs/inference.md#mvmodel).

Reference semantics reproduced (docs/inference.md#mvmodel, docs/quirks.md):
- Q18: the timestep is cast to the sample dtype before the sinusoidal projection.
- Q3: the authors add each Plücker embedding in place to a tensor that is already stored as a
  skip connection, so skips #0, #3, #6, #9 and #11 carry the Plücker term; here the add is
  functional and the stored skip is replaced by the sum.
- Adapter features enter down blocks 0-2 after both layers, before the downsampler, as
  `(h + f0) + f1` (the two layer skips stay without them), and after the mid block.
- Q1 (the default, `temporal_context="interleaved"`): diffusers 0.25's temporal cross-attention
  context, where the temporal sequence n = b·HW + s uses the context of batch n mod B (for even HW:
  s mod B); the released run used it. `temporal_context="per-half"` gives each CFG half its own
  context (diffusers >= 0.28).

Hoisting (docs/inference.md#hoisted-constants): the 9 Plücker embeddings depend only on the cameras, and every
cross-attention sees a single context token, so softmax is exactly 1 and
attn2(x, ctx) = to_out(to_v(ctx)) whatever x is: `plucker_embeddings` and `context_constants`
compute them once and `forward(plucker=..., context=...)` reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from ort3d.models.adapter import Adapter
from ort3d.models.plucker import PluckerEmbedding
from ort3d.models.presets import plucker_widths

NUM_ADAPTERS = 2   # cond_encoder.0 = rendered RGB, cond_encoder.1 = CCM (position map)

# Q1 (docs/quirks.md#q1): how the temporal cross-attention context maps onto the CFG halves.
# "interleaved" is the authors' released behaviour (diffusers 0.25) and the default; "per-half"
# gives each CFG half its own context (diffusers >= 0.28).
TEMPORAL_CONTEXTS = ("interleaved", "per-half")
DEFAULT_TEMPORAL_CONTEXT = "interleaved"


def check_temporal_context(value: str) -> str:
    if value not in TEMPORAL_CONTEXTS:
        raise ValueError(f"temporal_context must be one of {', '.join(TEMPORAL_CONTEXTS)}, got {value!r}")
    return value


class MVCheckpointError(ValueError):
    """A multi-view UNet state dict that does not fit the configuration (one-line message)."""


@dataclass
class CrossAttentionConstants:
    """Single-token cross-attention outputs: attn2 module name -> [B, C], one row per context.

    Names are the modules' state-dict prefixes, e.g.
    `unet.down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn2`.
    `temporal_context` records which temporal context mapping (Q1) the constants are meant for.
    """

    values: dict[str, torch.Tensor]
    temporal_context: str

    @property
    def batch(self) -> int:
        return next(iter(self.values.values())).shape[0]


def temporal_context_index(batch: int, positions: int, temporal_context: str, device=None) -> torch.Tensor:
    """Context batch used by each temporal sequence n = b·positions + s, as a [batch·positions] index.

    per-half (diffusers >= 0.28): batch b. interleaved (diffusers 0.25, Q1) laid the broadcast context out as
    [positions, batch] but read it as [batch, positions], so sequence n got context n mod batch.
    """
    n = torch.arange(batch * positions, device=device)
    return n % batch if check_temporal_context(temporal_context) == "interleaved" else n // positions


class _CrossAttention:
    """Supplies attn2 outputs, either by running attn2 on the context or from hoisted constants."""

    def __init__(self, encoder_hidden_states, constants, temporal_context, batch, frames):
        self.context = encoder_hidden_states
        self.constants = constants
        self.temporal_context = temporal_context
        self.batch = batch
        self.frames = frames
        if constants is None:
            self.frame_context = encoder_hidden_states.repeat_interleave(frames, dim=0)

    def spatial(self, name: str, attn: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        """normed: [B·F, HW, C] -> attn2 output (or [B·F, 1, C] broadcastable constant)."""
        if self.constants is not None:
            return self.constants.values[name].repeat_interleave(self.frames, dim=0)[:, None, :]
        return attn(normed, encoder_hidden_states=self.frame_context)

    def temporal(self, name: str, attn: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        """normed: [B·HW, F, C] -> attn2 output (or [B·HW, 1, C] broadcastable constant)."""
        positions = normed.shape[0] // self.batch
        if self.constants is not None:
            index = temporal_context_index(self.batch, positions, self.temporal_context, normed.device)
            return self.constants.values[name][index][:, None, :]
        ctx = self.context
        tokens, dim = ctx.shape[1:]
        if self.temporal_context == "interleaved":   # diffusers 0.25 verbatim: [HW, B, T, D] flattened
            time_context = ctx[None].broadcast_to(positions, self.batch, tokens, dim)
        else:                # diffusers >= 0.28: [B, HW, T, D] flattened
            time_context = ctx[:, None].broadcast_to(self.batch, positions, tokens, dim)
        return attn(normed, encoder_hidden_states=time_context.reshape(-1, tokens, dim))


def _spatial_block(block, x, cross: _CrossAttention, name: str):
    """diffusers BasicTransformerBlock (layer_norm, no positional embedding) with attn2 from `cross`."""
    x = block.attn1(block.norm1(x)) + x
    x = cross.spatial(name, block.attn2, block.norm2(x)) + x
    return block.ff(block.norm3(x)) + x


def _temporal_block(block, x, frames: int, cross: _CrossAttention, name: str):
    """diffusers TemporalBasicTransformerBlock: attention across the frames at each position."""
    batch_frames, positions, channels = x.shape
    batch = batch_frames // frames
    x = x.reshape(batch, frames, positions, channels).permute(0, 2, 1, 3)
    x = x.reshape(batch * positions, frames, channels)
    residual = x
    x = block.ff_in(block.norm_in(x))
    if block.is_res:
        x = x + residual
    x = block.attn1(block.norm1(x)) + x
    x = cross.temporal(name, block.attn2, block.norm2(x)) + x
    ff = block.ff(block.norm3(x))
    x = ff + x if block.is_res else ff
    x = x.reshape(batch, positions, frames, channels).permute(0, 2, 1, 3)
    return x.reshape(batch * frames, positions, channels)


def _spatio_temporal_transformer(model, name, h, frames, indicator, cross: _CrossAttention):
    """diffusers TransformerSpatioTemporalModel.forward with attn2 outputs from `cross`."""
    batch_frames, _, height, width = h.shape
    residual = h
    x = model.norm(h)
    channels = x.shape[1]
    x = x.permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
    x = model.proj_in(x)
    frame_ids = torch.arange(frames, device=h.device).repeat(batch_frames // frames)
    frame_emb = model.time_pos_embed(model.time_proj(frame_ids).to(x.dtype))[:, None, :]
    for k, (spatial, temporal) in enumerate(zip(model.transformer_blocks, model.temporal_transformer_blocks)):
        x = _spatial_block(spatial, x, cross, f"{name}.transformer_blocks.{k}.attn2")
        mixed = _temporal_block(temporal, x + frame_emb, frames, cross,
                                f"{name}.temporal_transformer_blocks.{k}.attn2")
        x = model.time_mixer(x_spatial=x, x_temporal=mixed, image_only_indicator=indicator)
    x = model.proj_out(x)
    x = x.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2).contiguous()
    return x + residual


def _broadcast_add(h: torch.Tensor, term: torch.Tensor, batch: int) -> torch.Tensor:
    """h [B·F,C,r,r] + term given per batch element [B·F,...] or shared by the batch [F,...]."""
    if term.shape[0] == h.shape[0]:
        return h + term
    return (h.unflatten(0, (batch, -1)) + term).flatten(0, 1)


def _add_like_inplace(h: torch.Tensor, term: torch.Tensor, batch: int) -> torch.Tensor:
    """The value `h += term` would leave in h (result keeps h's dtype)."""
    return _broadcast_add(h, term, batch).to(h.dtype)


class MVModel(nn.Module):
    """`unet`, `cond_encoder` (2 adapters), `down_plucker` (4), `mid_plucker`, `up_plucker` (4)."""

    def __init__(self, unet_config: dict, adapter_channels, adapter_blocks: int):
        super().__init__()
        block_out = tuple(unet_config["block_out_channels"])
        if tuple(adapter_channels) != block_out:
            raise ValueError(f"adapter_channels {tuple(adapter_channels)} must equal the UNet "
                             f"block_out_channels {block_out} (features are added level by level)")
        # Registration order = the released state-dict order.
        self.unet = UNetSpatioTemporalConditionModel(**unet_config)
        self.cond_encoder = nn.ModuleList(Adapter(adapter_channels, adapter_blocks) for _ in range(NUM_ADAPTERS))
        widths = plucker_widths(block_out)
        self.down_plucker = nn.ModuleList(PluckerEmbedding(c) for c in widths["down"])
        self.up_plucker = nn.ModuleList(PluckerEmbedding(c) for c in widths["up"])
        self.mid_plucker = PluckerEmbedding(widths["mid"][0])

    @classmethod
    def from_preset(cls, preset) -> "MVModel":
        return cls(preset.unet, preset.adapter_channels, preset.adapter_blocks)

    # ---- constants that can be computed once ---------------------------------------------------

    def plucker_embeddings(self, intrinsics: torch.Tensor, c2w: torch.Tensor, latent_size: int):
        """The 9 Plücker embeddings in the order down 0-3, mid, up 0-3.

        intrinsics [F,3,3] / c2w [F,4,4] -> tensors [F,C,r,r] (shared by the CFG batch);
        [B,F,...] inputs -> [B·F,C,r,r]. r = latent_size / 2^level.
        """
        levels = len(self.down_plucker)
        res = [latent_size // 2 ** i for i in range(levels)]
        mlps = [*self.down_plucker, self.mid_plucker, *self.up_plucker]
        resolutions = [*res, res[-1], *reversed(res)]
        return [mlp.feature_map(intrinsics, c2w, r) for mlp, r in zip(mlps, resolutions)]

    def context_constants(self, encoder_hidden_states: torch.Tensor,
                          temporal_context: str = DEFAULT_TEMPORAL_CONTEXT) -> CrossAttentionConstants:
        """encoder_hidden_states [B,1,D] -> attn2(x, ctx) = to_out(to_v(ctx)) of every spatial and
        temporal cross-attention (exact: softmax over one token is 1)."""
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[1] != 1:
            raise ValueError("encoder_hidden_states must be [B,1,D] (a single context token), got "
                             f"{tuple(encoder_hidden_states.shape)}")
        ctx = encoder_hidden_states[:, 0]
        values = {}
        for name, module in self.named_modules():
            if name.endswith(".attn2"):
                values[name] = module.to_out[0](module.to_v(ctx)) / module.rescale_output_factor
        return CrossAttentionConstants(values, check_temporal_context(temporal_context))

    # ---- forward -------------------------------------------------------------------------------

    def _embedding(self, timestep, added_time_ids, batch, frames, dtype, device):
        unet = self.unet
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float64)
        elif timestep.ndim == 0:
            timestep = timestep[None]
        timestep = timestep.to(device=device, dtype=dtype).expand(batch)   # Q18: rounded to dtype
        emb = unet.time_embedding(unet.time_proj(timestep).to(dtype))
        time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        emb = emb + unet.add_embedding(time_embeds)
        return emb.repeat_interleave(frames, dim=0)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, *,
                cond=None, adapter_features=None, cameras=None, plucker=None, context=None,
                temporal_context: str = DEFAULT_TEMPORAL_CONTEXT) -> torch.Tensor:
        """sample [B,F,8,h,w] -> [B,F,4,h,w].

        cond: [rgb, ccm] each [B,F,3,H,W] (run through the adapters here), or adapter_features
        = [rgb features, ccm features] from the adapters ([F,...] shared by the batch, or
        [B·F,...]); neither = no adapter.
        cameras: {"intrinsics": [B,F,3,3], "extrinsics": c2w [B,F,4,4]}, or plucker from
        `plucker_embeddings`. context: from `context_constants` (built with the same temporal_context).
        """
        temporal_context = check_temporal_context(temporal_context)
        batch, frames, _, height, width = sample.shape
        levels = len(self.unet.down_blocks)
        if height != width or height % 2 ** (levels - 1):
            raise ValueError(f"latents must be square with a size divisible by {2 ** (levels - 1)}, "
                             f"got {height}x{width}")
        if (cameras is None) == (plucker is None):
            raise ValueError("pass exactly one of cameras= or plucker=")
        if cond is not None and adapter_features is not None:
            raise ValueError("pass at most one of cond= or adapter_features=")
        if context is not None and (context.temporal_context != temporal_context or context.batch != batch):
            raise ValueError(f"context was built for temporal_context={context.temporal_context}, batch {context.batch}; "
                             f"forward got temporal_context={temporal_context}, batch {batch}")
        unet = self.unet

        emb = self._embedding(timestep, added_time_ids, batch, frames, sample.dtype, sample.device)
        if plucker is None:
            plucker = self.plucker_embeddings(cameras["intrinsics"], cameras["extrinsics"], height)
        if cond is not None:
            adapter_features = [encoder(maps.flatten(0, 1).to(sample.dtype))
                                for encoder, maps in zip(self.cond_encoder, cond)]
        cross = _CrossAttention(encoder_hidden_states, context, temporal_context, batch, frames)

        h = unet.conv_in(sample.flatten(0, 1))
        indicator = torch.zeros(batch, frames, dtype=h.dtype, device=h.device)

        def transformer(module, name, h):
            return _spatio_temporal_transformer(module, name, h, frames, indicator, cross)

        # Down blocks. Q3: each Plücker add also lands in the skip stored last (the same tensor).
        skips = [h]
        adapter_level = 0
        for i, block in enumerate(unet.down_blocks):
            h = _add_like_inplace(h, plucker[i], batch)
            skips[-1] = h
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                h = resnet(h, emb, image_only_indicator=indicator)
                if attentions is not None:
                    h = transformer(attentions[j], f"unet.down_blocks.{i}.attentions.{j}", h)
                skips.append(h)
            if attentions is not None:   # the authors' adapter hook (cross-attention blocks only)
                if adapter_features is not None:
                    for features in adapter_features:
                        h = _broadcast_add(h, features[adapter_level], batch)
                adapter_level += 1
            if block.downsamplers is not None:
                for downsampler in block.downsamplers:
                    h = downsampler(h)
                skips.append(h)

        # Mid block; its input is also skip #11 (Q3).
        h = _add_like_inplace(h, plucker[levels], batch)
        skips[-1] = h
        mid = unet.mid_block
        h = mid.resnets[0](h, emb, image_only_indicator=indicator)
        for j, (attention, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
            h = transformer(attention, f"unet.mid_block.attentions.{j}", h)
            h = resnet(h, emb, image_only_indicator=indicator)
        if adapter_features is not None:
            for features in adapter_features:
                h = _add_like_inplace(h, features[-1], batch)

        # Up blocks: each resnet concatenates [h, last skip].
        for i, block in enumerate(unet.up_blocks):
            h = _add_like_inplace(h, plucker[levels + 1 + i], batch)
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb, image_only_indicator=indicator)
                if attentions is not None:
                    h = transformer(attentions[j], f"unet.up_blocks.{i}.attentions.{j}", h)
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    h = upsampler(h)

        h = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
        return h.reshape(batch, frames, *h.shape[1:])


def mv_config_from_state_dict(state: dict, unet_config: dict) -> tuple[tuple[int, ...], int]:
    """Adapter widths and resblocks per stage read from a `mv_model_unet.pth` state dict, after
    checking every key and shape against `unet_config` (MVCheckpointError names the first
    missing, mismatching or unexpected key)."""
    prefix = "cond_encoder.0.body."
    indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    stages = len(unet_config["block_out_channels"])
    if not indices or sorted(indices) != list(range(len(indices))) or len(indices) % stages:
        raise MVCheckpointError(f"mv checkpoint: adapter blocks '{prefix}i' are {sorted(indices)}, "
                                f"expected 0..n-1 with n a multiple of {stages} stages")
    blocks = len(indices) // stages
    channels = tuple(int(state[f"{prefix}{s * blocks}.block1.weight"].shape[0]) for s in range(stages))

    with torch.device("meta"):
        expected = MVModel(unet_config, unet_config["block_out_channels"], blocks).state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise MVCheckpointError(f"mv checkpoint: missing key '{key}'")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise MVCheckpointError(f"mv checkpoint: '{key}' has shape {tuple(state[key].shape)}, "
                                    f"the unet config expects {tuple(tensor.shape)}")
    for key in state:
        if key not in expected:
            raise MVCheckpointError(f"mv checkpoint: unexpected key '{key}'")
    return channels, blocks
