"""One spec per exported network: I/O names, static shapes for a preset, dtypes, sample inputs,
and `module_for_export(models)`, a pure-tensor-in/out nn.Module wrapping our eager model.

Export, engine build, buffer allocation and the runtime's binding all read these specs. With F
views, image S², latent s = S/8, context width D, adapter widths C0..C3 (all float32):

    image_encoder  image [1,3,S,S] in [-1,1]                    -> image_embeds [1,1,D]
    vae_encoder    image [1,3,S,S] in [-1,1]                    -> latent [1,4,s,s] (posterior mean)
    adapters       rgb, ccm [F,192,s,s] (pixel-unshuffled maps) -> rgb_feat_l, ccm_feat_l
                                                                   [F,Cl,s/2^l,s/2^l], l = 0..3
    unet           sample [2,F,8,s,s], timestep [1],
                   encoder_hidden_states [2,1,D], added_time_ids [2,3],
                   rgb_feat_l, ccm_feat_l (as above)            -> noise_pred [2,F,4,s,s]
    vae_decoder    latents [F,4,s,s] (already / scaling_factor) -> images [F,3,S,S] (unclamped)
    lgm            images [1,F,3,S,S], timestep [1]             -> gaussians [1,N,14]

Hoisted constants (docs/inference.md#hoisted-constants), the choices made here:
- Plücker embeddings (UNet) and LGM rays depend only on the cameras, which are fixed data of the
  released model (models/data/cameras.json), so they are FOLDED into the graphs as constants;
  the spec records the cameras' sha256 in `options` and a backend refuses other cameras.
- Cross-attention constants depend on the image embedding, so the UNet graph takes
  `encoder_hidden_states` and computes them in-graph with `MVModel.context_constants` (a few
  single-token GEMVs per step), then uses them exactly like the eager hoisted path.
- Adapter features stay per level and per adapter ((h + f0) + f1 is not bit-identical to
  h + (f0 + f1)), batch F: the UNet broadcasts them over the CFG batch.
- The image encoder's antialiased resize (Gaussian blur + bicubic, align_corners) is a fixed
  separable linear map; it is exported as two matrix products, because TensorRT 10's ONNX
  parser has no cubic Resize (and two GEMMs replace the reflect-padded depthwise blur too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ort3d.models.cameras import FeedbackCameras, load_feedback_cameras
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT
from ort3d.models.presets import Preset

NETWORK_NAMES = ("image_encoder", "vae_encoder", "adapters", "unet", "vae_decoder", "lgm")
ADAPTER_KINDS = ("rgb", "ccm")           # cond_encoder.0 sees RGB renders, cond_encoder.1 the CCM
UNSHUFFLED_CHANNELS = 3 * 8 * 8


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "normal"       # distribution of sample inputs: normal, unit, signed, timestep, time_ids

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        shape = self.shape
        if self.kind == "unit":
            return torch.rand(shape, generator=generator)
        if self.kind == "signed":
            return torch.rand(shape, generator=generator) * 2 - 1
        if self.kind == "timestep":     # 0.25·ln σ spans about [-1.55, 1.64] (docs/inference.md#sigma-table)
            return torch.rand(shape, generator=generator) * 3.2 - 1.6
        if self.kind == "time_ids":     # around [fps-1, motion bucket, noise aug] = [6, 127, 0.02]
            base = torch.tensor([6.0, 127.0, 0.02])
            spread = torch.tensor([2.0, 40.0, 0.02])
            return base + spread * (torch.rand(shape, generator=generator) * 2 - 1)
        return torch.randn(shape, generator=generator)


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fp16_overflows: bool = False          # engine builds fall back from fp16 (see trt_build)
    options: dict = field(default_factory=dict, compare=False)    # export choices baked in
    cameras: FeedbackCameras | None = field(default=None, compare=False, repr=False)
    temporal_context: str = DEFAULT_TEMPORAL_CONTEXT

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def shapes(self) -> dict[str, list[int]]:
        return {t.name: list(t.shape) for t in (*self.inputs, *self.outputs)}

    def io_table(self) -> dict:
        return {"inputs": [t.as_dict() for t in self.inputs],
                "outputs": [t.as_dict() for t in self.outputs]}

    def sample_inputs(self, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {t.name: t.sample(generator) for t in self.inputs}

    def module_for_export(self, models) -> nn.Module:
        """The eager network as a module taking the inputs in spec order, returning the outputs
        (a tuple when there are several), fp32 on the CPU or wherever `models` live."""
        return _BUILDERS[self.name](self, models)


def cameras_sha256(cameras: FeedbackCameras) -> str:
    digest = hashlib.sha256()
    for tensor in (cameras.c2w, cameras.fov_deg, cameras.intrinsics):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def adapter_feature_names() -> list[str]:
    return [f"{kind}_feat_{level}" for kind in ADAPTER_KINDS for level in range(4)]


def network_specs(preset: Preset, temporal_context: str = DEFAULT_TEMPORAL_CONTEXT,
                  cameras: FeedbackCameras | None = None) -> dict[str, NetworkSpec]:
    """The six specs for `preset`, in NETWORK_NAMES order."""
    cameras = cameras if cameras is not None else load_feedback_cameras()
    views, size, s = preset.num_views, preset.image_size, preset.latent_size
    width = preset.unet["cross_attention_dim"]
    feats = [TensorSpec(f"{kind}_feat_{level}", (views, c, s >> level, s >> level))
             for kind in ADAPTER_KINDS for level, c in enumerate(preset.adapter_channels)]
    camera_options = {"cameras_sha256": cameras_sha256(cameras)}
    specs = [
        NetworkSpec("image_encoder",
                    (TensorSpec("image", (1, 3, size, size), kind="signed"),),
                    (TensorSpec("image_embeds", (1, 1, preset.clip["projection_dim"])),)),
        NetworkSpec("vae_encoder",
                    (TensorSpec("image", (1, 3, size, size), kind="signed"),),
                    (TensorSpec("latent", (1, 4, s, s)),), fp16_overflows=True),
        NetworkSpec("adapters",
                    tuple(TensorSpec(k, (views, UNSHUFFLED_CHANNELS, s, s), kind="unit")
                          for k in ADAPTER_KINDS),
                    tuple(feats)),
        NetworkSpec("unet",
                    (TensorSpec("sample", (2, views, 8, s, s)),
                     TensorSpec("timestep", (1,), kind="timestep"),
                     TensorSpec("encoder_hidden_states", (2, 1, width)),
                     TensorSpec("added_time_ids", (2, 3), kind="time_ids"),
                     *feats),
                    (TensorSpec("noise_pred", (2, views, 4, s, s)),),
                    options={**camera_options, "temporal_context": temporal_context},
                    cameras=cameras, temporal_context=temporal_context),
        NetworkSpec("vae_decoder",
                    (TensorSpec("latents", (views, 4, s, s)),),
                    (TensorSpec("images", (views, 3, size, size)),), fp16_overflows=True,
                    # the loop scales latents by 1/scaling_factor before decoding; hosts read it here
                    options={"scaling_factor": preset.vae["scaling_factor"]}),
        NetworkSpec("lgm",
                    (TensorSpec("images", (1, views, 3, size, size), kind="signed"),
                     TensorSpec("timestep", (1,), kind="timestep")),
                    (TensorSpec("gaussians", (1, preset.num_gaussians, 14)),),
                    options=camera_options, cameras=cameras),
    ]
    return {spec.name: spec for spec in specs}


# ----------------------------------------------------------------------------- wrappers

def _model_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class ImageEncoderExport(nn.Module):
    """CLIP embedding with the antialiased resize as `A_h · x · A_wᵀ`.

    The resize (blur along W, blur along H, separable bicubic) is linear and separable, so its
    matrices are read off the eager function itself by resizing one-hot columns in float64; the
    float32 product then differs from the eager conv + bicubic only by rounding."""

    def __init__(self, encoder: nn.Module, image_size: int):
        super().__init__()
        from ort3d.models.clip import resize_with_antialiasing

        self.encoder = encoder
        out = encoder.image_size
        device = encoder.mean.device
        # Columns: probe image w ([S,1,4,S], one per batch entry) is one-hot at column w; its
        # 4 rows are left untouched (a sigma-0.001 blur and a same-size bicubic are identities).
        basis = torch.eye(image_size, dtype=torch.float64, device=device)
        probe = basis[:, None, None, :].expand(image_size, 1, 4, image_size)
        resized = resize_with_antialiasing(probe, (4, out))                     # [S,1,4,out]
        matrix = resized[:, 0, 0, :].transpose(0, 1).contiguous()               # [out, S]
        self.register_buffer("resize_w", matrix.to(torch.float32))
        self.register_buffer("resize_h", matrix.to(torch.float32).clone())      # square input

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.resize_h @ image @ self.resize_w.transpose(0, 1)
        y = (y + 1.0) / 2.0
        y = (y - self.encoder.mean) / self.encoder.std      # as ImageEncoder.forward from here
        clip = self.encoder.clip
        return clip(pixel_values=y.to(clip.dtype)).image_embeds.unsqueeze(1)


class VaeEncoderExport(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from ort3d.models.vae import vae_encode_mode

        return vae_encode_mode(self.vae, image)


class AdaptersExport(nn.Module):
    def __init__(self, mv: nn.Module):
        super().__init__()
        self.encoders = mv.cond_encoder

    def forward(self, rgb: torch.Tensor, ccm: torch.Tensor):
        rgb_feats = self.encoders[0].forward_unshuffled(rgb)
        ccm_feats = self.encoders[1].forward_unshuffled(ccm)
        return (*rgb_feats, *ccm_feats)


class UNetExport(nn.Module):
    """MVModel with the Plücker embeddings folded in and the cross-attention constants computed
    from `encoder_hidden_states` in-graph."""

    def __init__(self, mv: nn.Module, plucker: list[torch.Tensor], temporal_context: str):
        super().__init__()
        self.mv = mv
        self.temporal_context = temporal_context
        self.levels = len(plucker)
        for i, tensor in enumerate(plucker):
            self.register_buffer(f"plucker_{i}", tensor.detach().float().contiguous())

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, *features):
        plucker = [getattr(self, f"plucker_{i}") for i in range(self.levels)]
        context = self.mv.context_constants(encoder_hidden_states, temporal_context=self.temporal_context)
        half = len(features) // 2
        return self.mv(sample, timestep, encoder_hidden_states, added_time_ids,
                       adapter_features=[list(features[:half]), list(features[half:])],
                       plucker=plucker, context=context, temporal_context=self.temporal_context)


class VaeDecoderExport(nn.Module):
    def __init__(self, vae: nn.Module, num_frames: int):
        super().__init__()
        self.vae = vae
        self.num_frames = num_frames

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        from ort3d.models.vae import vae_decode

        return vae_decode(self.vae, latents, num_frames=self.num_frames)


class LgmExport(nn.Module):
    """LGM with the selected views' rays folded in; view selection and activations in-graph."""

    def __init__(self, lgm: nn.Module, rays: torch.Tensor):
        super().__init__()
        self.lgm = lgm
        self.register_buffer("rays", rays.detach().float().contiguous())

    def forward(self, images: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.lgm.forward_gaussians(images, timestep, rays=self.rays)


def _unet(spec: NetworkSpec, models) -> nn.Module:
    mv, device = models.mv, _model_device(models.mv)
    cams = spec.cameras.to(device)
    with torch.no_grad():
        plucker = mv.plucker_embeddings(cams.intrinsics, cams.c2w, spec.inputs[0].shape[-1])
    return UNetExport(mv, plucker, spec.temporal_context)


def _lgm(spec: NetworkSpec, models) -> nn.Module:
    lgm, device = models.lgm, _model_device(models.lgm)
    cams = spec.cameras.to(device)
    index = lgm.view_indices(len(cams.fov_deg)).to(device)
    with torch.no_grad():
        rays = lgm.rays(cams.c2w[index], cams.fov_deg[index])
    return LgmExport(lgm, rays)


_BUILDERS = {
    "image_encoder": lambda spec, models: ImageEncoderExport(models.image_encoder,
                                                             spec.inputs[0].shape[-1]),
    "vae_encoder": lambda spec, models: VaeEncoderExport(models.vae),
    "adapters": lambda spec, models: AdaptersExport(models.mv),
    "unet": _unet,
    "vae_decoder": lambda spec, models: VaeDecoderExport(models.vae, spec.inputs[0].shape[0]),
    "lgm": _lgm,
}
