"""The per-network interface the recursive loop runs on, and its eager (PyTorch) implementation.

Every backend (eager, ONNX Runtime, TensorRT) provides the same small set of calls with the same
tensor shapes, so the loop in `pipeline.py` never branches on the backend. Shapes for a preset
with F views, image S², latent s = S/8, CFG batch 2:

    encode_image(image [1,3,S,S])                      -> clip embedding [1,1,D]
    encode_latent(image [1,3,S,S])                     -> VAE posterior mean [1,4,s,s] (unscaled)
    set_conditioning(clip_cfg [2,1,D], cameras)        -> None (hoists per-image constants)
    unet(sample [2,F,8,s,s], timestep 0-d, added_time_ids [2,3], features) -> [2,F,4,s,s]
    adapters(rgb [F,192,s,s], ccm [F,192,s,s])         -> features (opaque to the loop)
    vae_decode(latents [F,4,s,s], already / scaling)   -> images [F,3,S,S] float32
    lgm(images [1,F,3,S,S], timestep 0-d)              -> gaussians [1,N,14] float32
"""

from __future__ import annotations

import contextlib

import torch

from ort3d.models.cameras import FeedbackCameras


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """SPEC §2.8: the reference runs MVModel, VAE decode and LGM under fp16 autocast."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class EagerNetworks:
    """Our PyTorch modules (`ort3d.models`), the reference every other backend is measured against."""

    name = "eager"

    def __init__(self, models, device, autocast_dtype: torch.dtype | None = None,
                 q1_compat: bool = False):
        from ort3d.models.vae import vae_decode, vae_encode_mode

        self.models = models
        self.preset = models.preset
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.q1_compat = q1_compat
        self.schedule_config = models.schedule
        self._vae_decode, self._vae_encode_mode = vae_decode, vae_encode_mode
        self._plucker = self._context = self._lgm_rays = None
        self._cameras: FeedbackCameras | None = None

    def _autocast(self):
        return autocast_context(self.device, self.autocast_dtype)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.models.image_encoder(image)          # fp32, outside autocast (SPEC §2.3)

    def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
        return self._vae_encode_mode(self.models.vae, image)

    def set_conditioning(self, clip_cfg: torch.Tensor, cameras: FeedbackCameras) -> None:
        mv, lgm = self.models.mv, self.models.lgm
        self._cameras = cameras
        index = lgm.view_indices(len(cameras.fov_deg))
        # The reference computes these inside the autocast region (its einsum/matmul run in fp16:
        # Q4), so they are hoisted under the same context.
        with self._autocast():
            self._plucker = mv.plucker_embeddings(cameras.intrinsics, cameras.c2w,
                                                   self.preset.latent_size)
            self._context = mv.context_constants(clip_cfg, q1_compat=self.q1_compat)
            self._lgm_rays = lgm.rays(cameras.c2w[index], cameras.fov_deg[index])

    def unet(self, sample, timestep, added_time_ids, features):
        with self._autocast():
            return self.models.mv(sample, timestep, None, added_time_ids,
                                  adapter_features=features, plucker=self._plucker,
                                  context=self._context, q1_compat=self.q1_compat)

    def adapters(self, rgb, ccm):
        with self._autocast():
            return [adapter.forward_unshuffled(maps)
                    for adapter, maps in zip(self.models.mv.cond_encoder, (rgb, ccm))]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self._vae_decode(self.models.vae, latents, num_frames=latents.shape[0]).float()

    def lgm(self, images: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        cams = self._cameras
        with self._autocast():
            return self.models.lgm.forward_gaussians(images, timestep, cams.c2w, cams.fov_deg,
                                                     rays=self._lgm_rays).float()
