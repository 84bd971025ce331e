"""LGM, the Gaussian reconstruction network of Ouroboros3D (docs/inference.md#lgm).

Module names and construction order follow the authors' src/models/network/lgm/{models,unet}.py,
so the state-dict keys (and their order) equal the released `recon_model.pth`, and weights made by
key (ort3d.models.weights) give the authors' network. The maths follows theirs op by op, including
the quirks the released weights were trained with: Q8 (unclamped 0.5x+0.5 input, raw timestep),
Q9 (scale ×0.7 only when num_frames > 4) and Q19 (rotation normalised across Gaussians).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ort3d.models.presets import LGMConfig, Preset
from ort3d.models.weights import init_deterministic

SKIP_SCALE = math.sqrt(0.5)     # authors' np.sqrt(0.5): every residual sum is scaled by it
GROUPS, EPS = 32, 1e-5          # GroupNorm everywhere
LAYERS_PER_BLOCK = 2            # hard-coded by the authors; up blocks have one more
IN_CHANNELS = 9                 # RGB 3 + Plücker 6
OUT_CHANNELS = 14               # pos 3, opacity 1, scale 3, rotation 4, rgb 3
VIEWS_PER_GROUP = 4             # the authors' output rearrange hard-codes v=4 (see `activate`)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LGMConfigError(ValueError):
    """A configuration or state dict that cannot be the authors' LGM (one-line message)."""


def timestep_embedding(t: torch.Tensor, channels: int) -> torch.Tensor:
    """diffusers' Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0), same op order."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
    angles = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def plucker_rays(c2w: torch.Tensor, fov_deg, size: int) -> torch.Tensor:
    """Plücker rays [o × d, d] of each camera, [V,6,size,size] (docs/inference.md#lgm-input).

    Mirrors the authors' get_rays(opengl=False): one camera at a time with the focal length as a
    Python scalar (a CUDA division by a scalar multiplies by its reciprocal, so this keeps the
    reference's rounding on every device), fov read as float32 like the released fov.npy.
    """
    fov = torch.as_tensor(fov_deg, dtype=torch.float32).reshape(-1)
    return torch.stack([_camera_rays(c2w[i].float(), size, float(fov[i]))
                        for i in range(c2w.shape[0])]).permute(0, 3, 1, 2).contiguous()


def _camera_rays(pose: torch.Tensor, size: int, fov_deg: float) -> torch.Tensor:
    col, row = torch.meshgrid(torch.arange(size, device=pose.device),
                              torch.arange(size, device=pose.device), indexing="xy")
    col, row = col.flatten(), row.flatten()
    half = size * 0.5
    focal = half / math.tan(0.5 * math.radians(fov_deg))
    # OpenCV camera: x right, y down, z forward.
    dirs = F.pad(torch.stack([(col - half + 0.5) / focal, (row - half + 0.5) / focal], dim=-1),
                 (0, 1), value=1.0)
    d = dirs @ pose[:3, :3].transpose(0, 1)    # fp16 under autocast, as in the reference
    # kiui safe_normalize. The fp32 sum is what CUDA autocast does to `sum` (making d fp32 again);
    # CPU autocast does not, and the cross product below rejects mixed dtypes. No-op in fp32.
    d = d / torch.sqrt(torch.clamp(torch.sum(d * d, -1, keepdim=True, dtype=torch.float32), min=1e-20))
    o = pose[:3, 3].unsqueeze(0).expand_as(d)
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1).view(size, size, 6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, cout))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]   # time enters before norm2
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)      # scale 1/sqrt(c/heads), as the authors
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MVAttention(nn.Module):
    """Self-attention over the tokens of all `num_frames` views of an object jointly."""

    def __init__(self, channels: int, heads: int, num_frames: int):
        super().__init__()
        self.num_frames = num_frames
        self.norm = nn.GroupNorm(GROUPS, channels, eps=EPS)
        self.attn = SelfAttention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bv, c, h, w = x.shape
        b, v = bv // self.num_frames, self.num_frames
        tokens = self.norm(x).reshape(b, v, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, c)
        out = self.attn(tokens).reshape(b, v, h, w, c).permute(0, 1, 4, 2, 3).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, attention: bool, downsample: bool, cfg: LGMConfig):
        super().__init__()
        emb = 4 * cfg.time_channels
        self.nets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, emb)
                                  for i in range(LAYERS_PER_BLOCK))
        self.attns = nn.ModuleList(MVAttention(cout, cfg.attention_heads, cfg.num_frames)
                                   for _ in range(LAYERS_PER_BLOCK) if attention)
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if downsample else None

    def forward(self, x, emb):
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x, emb)
            if self.attns:
                x = self.attns[i](x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool, cfg: LGMConfig):
        super().__init__()
        emb = 4 * cfg.time_channels
        self.nets = nn.ModuleList(ResnetBlock(channels, channels, emb) for _ in range(2))
        self.attns = nn.ModuleList(
            [MVAttention(channels, cfg.attention_heads, cfg.num_frames)] if attention else [])

    def forward(self, x, emb):
        x = self.nets[0](x, emb)
        if self.attns:
            x = self.attns[0](x)
        return self.nets[1](x, emb)


class UpBlock(nn.Module):
    """Layer i concatenates one skip (taken from the end); only the last layer's skip may differ
    in width (`cskip_last`), which is what makes the authors' UNet asymmetric."""

    def __init__(self, cin: int, cskip_last: int, cout: int, attention: bool, upsample: bool,
                 cfg: LGMConfig):
        super().__init__()
        emb, n = 4 * cfg.time_channels, LAYERS_PER_BLOCK + 1
        self.nets = nn.ModuleList(
            ResnetBlock((cin if i == 0 else cout) + (cskip_last if i == n - 1 else cout), cout, emb)
            for i in range(n))
        self.attns = nn.ModuleList(MVAttention(cout, cfg.attention_heads, cfg.num_frames)
                                   for _ in range(n) if attention)
        self.upsample = nn.Conv2d(cout, cout, 3, padding=1) if upsample else None

    def forward(self, x, skips, emb):
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, skips[-1 - i]], dim=1), emb)
            if self.attns:
                x = self.attns[i](x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    def __init__(self, cfg: LGMConfig):
        super().__init__()
        down, up = cfg.down_channels, cfg.up_channels
        self.conv_in = nn.Conv2d(IN_CHANNELS, down[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(down[max(i - 1, 0)], down[i], cfg.down_attention[i], i != len(down) - 1, cfg)
            for i in range(len(down)))
        self.mid_block = MidBlock(down[-1], cfg.mid_attention, cfg)
        # Up block i's last skip is the downsample output of down block len(down)-2-i.
        self.up_blocks = nn.ModuleList(
            UpBlock(up[max(i - 1, 0)], down[max(-2 - i, -len(down))], up[i], cfg.up_attention[i],
                    i != len(up) - 1, cfg)
            for i in range(len(up)))
        self.norm_out = nn.GroupNorm(GROUPS, up[-1], eps=EPS)
        self.conv_out = nn.Conv2d(up[-1], OUT_CHANNELS, 3, padding=1)
        self.time_channels = cfg.time_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_channels, 4 * cfg.time_channels),
                                        nn.SiLU(),
                                        nn.Linear(4 * cfg.time_channels, 4 * cfg.time_channels))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        # One embedding [1,512] broadcast over every image of the batch, as the authors do.
        emb = self.time_embed(timestep_embedding(timestep, self.time_channels).to(x.dtype))
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb)
            skips.extend(block_skips)
        x = self.mid_block(x, emb)
        for block in self.up_blocks:     # conv_in's and down block 0's outputs stay unused
            n = len(block.nets)
            x = block(x, skips[-n:], emb)
            skips = skips[:-n]
        return self.conv_out(F.silu(self.norm_out(x)))


class LGM(nn.Module):
    def __init__(self, cfg: LGMConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.unet = UNet(cfg)
        self.conv = nn.Conv2d(OUT_CHANNELS, OUT_CHANNELS, 1)
        # Kept on the model's device (not in checkpoints): building them from Python lists at
        # every call would be a blocking host-to-device copy inside the denoising loop.
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    @classmethod
    def from_preset(cls, preset: Preset, device=None) -> "LGM":
        """The preset's network with its deterministic weights (seed `preset.seed`), ready to run.
        Checkpoint loading builds `LGM(config)` on the meta device instead."""
        model = init_deterministic(cls(preset.lgm), preset.seed, "lgm")
        return model if device is None else model.to(device)

    def view_stride(self, num_views: int) -> int:
        """Views fed to the network are views[::stride]: every (V // num_frames)-th when
        V > num_frames (docs/inference.md#lgm-input)."""
        nf = self.cfg.num_frames
        stride = num_views // nf if num_views > nf else 1
        count = len(range(0, num_views, stride))
        if count != nf:
            raise LGMConfigError(f"LGM needs {nf} views; {num_views} views give {count} "
                                 f"with arange(0, V, V // {nf})")
        return stride

    def view_indices(self, num_views: int) -> torch.Tensor:
        return torch.arange(0, num_views, self.view_stride(num_views))

    def rays(self, c2w: torch.Tensor, fov_deg) -> torch.Tensor:
        """[V,6,S,S] Plücker rays of the cameras at the network's input size; constant per camera
        set, so callers hoist it and pass it to `forward_gaussians(rays=...)`."""
        return plucker_rays(c2w, fov_deg, self.cfg.input_size)

    def forward_gaussians(self, images: torch.Tensor, timestep, c2w: torch.Tensor | None = None,
                          fov: torch.Tensor | None = None,
                          rays: torch.Tensor | None = None) -> torch.Tensor:
        """images [B,V,3,H,W] decoded x0 (nominally [-1,1], unclamped), timestep the raw scheduler
        value (0.25 ln σ), c2w [V,4,4] or [B,V,4,4], fov [V] or [B,V] in degrees.
        `rays` ([V|num_frames, 6, S, S], optionally with a leading B) replaces c2w/fov: either all
        V views' or the selected views' rays. Returns Gaussians [B, num_frames·splat², 14] float32."""
        return self.activate(self.forward_raw(self.prepare_inputs(images, c2w, fov, rays), timestep))

    def prepare_inputs(self, images, c2w=None, fov=None, rays=None) -> torch.Tensor:
        """Network input [B·num_frames, 9, S, S]: ImageNet-normalised RGB | Plücker rays."""
        b, v = images.shape[:2]
        step = self.view_stride(v)   # views[::step]: a slice, no index tensor to copy to the device
        nf, size = self.cfg.num_frames, self.cfg.input_size
        if rays is None:
            if c2w is None or fov is None:
                raise ValueError("forward_gaussians needs c2w and fov, or precomputed rays")
            c2w, fov = c2w[..., ::step, :, :], torch.as_tensor(fov)[..., ::step]
            rays = self.rays(c2w.reshape(-1, 4, 4), fov.reshape(-1)).reshape(*c2w.shape[:-2], 6, size, size)
        elif rays.shape[-4] == v != nf:
            rays = rays[..., ::step, :, :, :]
        rays = rays.expand(b, nf, 6, size, size).reshape(b * nf, 6, size, size)

        x = 0.5 * images[:, ::step] + 0.5          # Q8: no clamp
        x = x.reshape(b * nf, *x.shape[2:])
        mean, std = self.imagenet_mean.to(x.dtype), self.imagenet_std.to(x.dtype)
        x = F.interpolate((x - mean) / std, size=(size, size), mode="bilinear", align_corners=False)
        return torch.cat([x, rays], dim=1).to(images.dtype)

    def forward_raw(self, inputs: torch.Tensor, timestep) -> torch.Tensor:
        """The heads before activation, [B, num_frames·splat², 14], Gaussian n = (view, row, col)."""
        t = torch.as_tensor(timestep, device=inputs.device)
        if t.numel() != 1:
            raise ValueError(f"LGM takes one timestep per call, got shape {tuple(t.shape)}")
        x = self.conv(self.unet(inputs, t.reshape(1)))
        bv, c, h, w = x.shape
        nf = self.cfg.num_frames
        return x.reshape(bv // nf, nf, c, h, w).permute(0, 1, 3, 4, 2).reshape(bv // nf, -1, c)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """[pos(3) opacity(1) scale(3) rot(4) rgb(3)] from the raw heads, float32.

        The authors rearrange with a hard-coded v=4, so with num_frames > 4 their batch holds groups
        of 4 views; activating per group and flattening back gives their values exactly.
        """
        b = raw.shape[0]
        x = raw.reshape(-1, VIEWS_PER_GROUP * self.cfg.splat_size ** 2, OUT_CHANNELS)
        scale = 0.1 * F.softplus(x[..., 4:7])
        if self.cfg.num_frames > 4:       # Q9: the 0.7 factor exists only for more than 4 views
            scale = scale * 0.7
        gaussians = torch.cat([
            x[..., 0:3].clamp(-1, 1),
            torch.sigmoid(x[..., 3:4]),
            scale,
            F.normalize(x[..., 7:11]),    # Q19: default dim=1 normalises across Gaussians
            0.5 * torch.tanh(x[..., 11:]) + 0.5,
        ], dim=-1)
        return gaussians.reshape(b, -1, OUT_CHANNELS).float()


def _check_config(cfg: LGMConfig) -> None:
    if len(cfg.down_attention) != len(cfg.down_channels) or len(cfg.up_attention) != len(cfg.up_channels):
        raise LGMConfigError("LGM config: down/up attention flags must match the channel lists")
    if cfg.num_frames % VIEWS_PER_GROUP:
        raise LGMConfigError(f"LGM config: num_frames={cfg.num_frames} must be a multiple of 4 "
                             "(the authors' output layout groups 4 views)")
    wide = [c for c, a in zip(cfg.down_channels + cfg.up_channels, cfg.down_attention + cfg.up_attention) if a]
    if cfg.mid_attention:
        wide.append(cfg.down_channels[-1])
    if any(c % cfg.attention_heads for c in wide):
        raise LGMConfigError(f"LGM config: attention widths {sorted(set(wide))} must be multiples "
                             f"of {cfg.attention_heads} heads")
    ups, downs = len(cfg.up_channels) - 1, len(cfg.down_channels) - 1
    if cfg.input_size % 2 ** downs or cfg.input_size * 2 ** ups // 2 ** downs != cfg.splat_size:
        raise LGMConfigError(f"LGM config: input_size {cfg.input_size} with {downs} downsamples and "
                             f"{ups} upsamples cannot give splat_size {cfg.splat_size}")


def lgm_config_from_state_dict(state: dict, base: LGMConfig) -> LGMConfig:
    """The LGM shape options read from a state dict's keys and shapes; input_size, splat_size,
    num_frames, heads come from `base` (not stored). Raises LGMConfigError if `state` cannot be an
    LGM of that kind (the key/shape list is compared with the network the options build)."""
    def blocks(prefix):
        found = {int(m.group(1)) for k in state if (m := re.match(rf"unet\.{prefix}\.(\d+)\.nets\.0\.conv1\.weight$", k))}
        if not found or found != set(range(len(found))):
            raise LGMConfigError(f"not an LGM state dict: no consecutive unet.{prefix}.<i> blocks")
        return range(len(found))

    def width(prefix, i):
        return int(state[f"unet.{prefix}.{i}.nets.0.conv1.weight"].shape[0])

    down, up = blocks("down_blocks"), blocks("up_blocks")
    cfg = LGMConfig(
        input_size=base.input_size, splat_size=base.splat_size, num_frames=base.num_frames,
        attention_heads=base.attention_heads, time_channels=base.time_channels,
        down_channels=tuple(width("down_blocks", i) for i in down),
        down_attention=tuple(f"unet.down_blocks.{i}.attns.0.norm.weight" in state for i in down),
        mid_attention="unet.mid_block.attns.0.norm.weight" in state,
        up_channels=tuple(width("up_blocks", i) for i in up),
        up_attention=tuple(f"unet.up_blocks.{i}.attns.0.norm.weight" in state for i in up),
    )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LGM(cfg).state_dict().items()}
    for key in sorted(expected.keys() | state.keys()):
        if key not in state:
            raise LGMConfigError(f"not an LGM state dict: missing key {key}")
        if key not in expected:
            raise LGMConfigError(f"not an LGM state dict: unexpected key {key}")
        if tuple(state[key].shape) != expected[key]:
            raise LGMConfigError(f"not an LGM state dict: {key} has shape {tuple(state[key].shape)}, "
                                 f"expected {expected[key]}")
    return cfg
