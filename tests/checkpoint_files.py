"""Tiny stand-ins of the released weight folders, written in the released formats (shared by the
checkpoint-loading and hub-resolution tests)."""

import json

import torch
from diffusers import EulerDiscreteScheduler
from transformers import CLIPImageProcessor

from ort3d.models.clip import build_clip
from ort3d.models.lgm import LGM
from ort3d.models.mv_unet import MVModel
from ort3d.models.presets import TINY
from ort3d.models.vae import build_vae
from ort3d.models.weights import deterministic_state_dict, init_deterministic

FILE_SEED = 7            # the files' weights; build_models' random weights use TINY.seed = 0
MEAN, STD = [0.5, 0.25, 0.125], [0.2, 0.3, 0.4]
SVD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                     prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
                     sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
                     steps_offset=1)


def tiny_file_states():
    """Tiny weights in the released formats: MV and LGM in fp16 (as the DeepSpeed export likely is)."""
    mv = MVModel(TINY.unet, TINY.adapter_channels, TINY.adapter_blocks)
    return {
        "mv": {k: v.half() for k, v in deterministic_state_dict(mv, FILE_SEED, "mv").items()},
        "lgm": deterministic_state_dict(LGM(TINY.lgm), FILE_SEED, "lgm"),
        "vae": init_deterministic(build_vae(TINY.vae), FILE_SEED, "vae"),
        "clip": init_deterministic(build_clip(TINY.clip), FILE_SEED, "clip"),
    }


def write_weight_folders(root, file_states):
    """root/ouroboros (mv_model_unet.pth, recon_model.pth) and root/svd (diffusers layout, VAE as
    the fp16 variant) -> (checkpoint folder, SVD folder)."""
    ckpt, svd = root / "ouroboros", root / "svd"
    ckpt.mkdir()
    torch.save(file_states["mv"], ckpt / "mv_model_unet.pth")
    torch.save(file_states["lgm"], ckpt / "recon_model.pth")
    (svd / "unet").mkdir(parents=True)
    unet_json = {"_class_name": "UNetSpatioTemporalConditionModel", "_diffusers_version": "0.24.0",
                 "not_an_argument": 1, **TINY.unet}
    (svd / "unet" / "config.json").write_text(json.dumps(unet_json))
    # diffusers / transformers writers produce the real layout, the VAE as the fp16 variant.
    file_states["vae"].to(torch.float16).save_pretrained(svd / "vae", variant="fp16")
    file_states["vae"].float()
    file_states["clip"].save_pretrained(svd / "image_encoder")
    CLIPImageProcessor(image_mean=MEAN, image_std=STD).save_pretrained(svd / "feature_extractor")
    EulerDiscreteScheduler(**SVD_SCHEDULER).save_config(svd / "scheduler")
    return ckpt, svd
