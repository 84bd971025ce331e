"""All networks of one run, from released checkpoints or from deterministic random weights.

Real weights need two folders (docs/architecture.md#checkpoints): the Ouroboros3D folder
(`mv_model_unet.pth`, `recon_model.pth`, or `.safetensors`) and the SVD base folder in diffusers
layout (`ort3d.models.svd_folder`). Either may be given as a Hugging Face Hub repo id instead
(`ort3d.models.hub`): only the files listed in OUROBOROS_FILES / SVD_FILES are downloaded.
Architectures come from the SVD configs and from tensor shapes; every file is checked key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKLTemporalDecoder
from torch import nn

from ort3d.models.clip import ImageEncoder, build_clip
from ort3d.models.hub import RepoFiles, resolve_folders
from ort3d.models.lgm import LGM, lgm_config_from_state_dict
from ort3d.models.mv_unet import MVModel, mv_config_from_state_dict
from ort3d.models.presets import Preset
from ort3d.models.scheduler import ScheduleConfig
from ort3d.models.state_files import (
    CheckpointError, check_state_dict, expected_shapes, load_state_file, load_weights, params_on_meta,
)
from ort3d.models.svd_folder import CLIP_WEIGHTS, VAE_WEIGHTS, read_svd_folder
from ort3d.models.vae import build_vae
from ort3d.models.weights import random_model_state_dict

__all__ = ["CheckpointError", "Models", "build_models", "check_state_dict", "load_state_file"]

MV_FILE = "mv_model_unet"
LGM_FILE = "recon_model"
STATE_SUFFIXES = (".safetensors", ".pth")   # preferred first: no pickle involved
# What build_models reads from each repository (hub downloads fetch exactly these, never unet/ weights).
OUROBOROS_FILES = RepoFiles("Ouroboros3D checkpoint",
                            tuple(tuple(stem + s for s in STATE_SUFFIXES) for stem in (MV_FILE, LGM_FILE)))
SVD_FILES = RepoFiles("SVD img2vid base model", (
    ("unet/config.json",), ("vae/config.json",), tuple(f"vae/{name}" for name in VAE_WEIGHTS),
    ("image_encoder/config.json",), tuple(f"image_encoder/{name}" for name in CLIP_WEIGHTS),
    ("feature_extractor/preprocessor_config.json",), ("scheduler/scheduler_config.json",)))
# transformers < 4.31 saved CLIP's position ids; they are a non-persistent buffer now.
_LEGACY_CLIP_KEYS = ("vision_model.embeddings.position_ids",)


@dataclass
class Models:
    preset: Preset                 # the input preset with what the files define replaced
    mv: MVModel
    lgm: LGM
    vae: AutoencoderKLTemporalDecoder
    image_encoder: ImageEncoder
    schedule: ScheduleConfig
    sources: dict[str, str] = field(default_factory=dict)   # network -> file (or random seed)


def build_models(preset: Preset, checkpoint_dir=None, svd_dir=None, device="cpu",
                 dtype=torch.float32) -> Models:
    """No folders: deterministic random weights from `preset.seed`. Both folders (or hub repo ids):
    real weights."""
    if checkpoint_dir is None and svd_dir is None:
        return _random_models(preset, device, dtype)
    if checkpoint_dir is None or svd_dir is None:
        given, missing = ("checkpoint", "SVD") if svd_dir is None else ("SVD", "checkpoint")
        raise CheckpointError(f"{given} folder given without the {missing} folder: real weights need both "
                              "the Ouroboros3D folder (mv_model_unet.pth, recon_model.pth) and the SVD "
                              "base folder (unet/ vae/ image_encoder/ feature_extractor/ scheduler/)")
    checkpoint_dir, svd_dir = resolve_folders((checkpoint_dir, OUROBOROS_FILES), (svd_dir, SVD_FILES))
    return _checkpoint_models(preset, Path(checkpoint_dir), Path(svd_dir), device, dtype)


def _random_models(preset: Preset, device, dtype) -> Models:
    with params_on_meta():
        mv = MVModel(preset.unet, preset.adapter_channels, preset.adapter_blocks)
        lgm, vae, clip = LGM(preset.lgm), build_vae(preset.vae), build_clip(preset.clip)
    sources = {}
    for name, module in (("mv", mv), ("lgm", lgm), ("vae", vae), ("clip", clip)):
        sources[name] = f"random weights (seed {preset.seed})"
        load_weights(module, random_model_state_dict(module, preset.seed, name), sources[name], device, dtype)
    return Models(preset, mv, lgm, vae, ImageEncoder(clip).to(device).eval(), ScheduleConfig(), sources)


def _find_state_file(folder: Path, stem: str) -> Path:
    """`<stem>.safetensors` if present, else `<stem>.pth` (STATE_SUFFIXES)."""
    for suffix in STATE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise CheckpointError(f"{folder / (stem + '.pth')}: file not found (nor {stem}.safetensors)")


def _infer_config(infer: Callable, fallback: Callable[[], nn.Module], state, path: Path):
    """Run a network's config-from-state-dict inference; when it rejects the file, report with our
    key/shape summary against the preset's network (or with its own message)."""
    try:
        return infer()
    except (ValueError, KeyError) as error:   # MVCheckpointError / LGMConfigError are ValueErrors
        with torch.device("meta"):
            check_state_dict(expected_shapes(fallback()), state, path)
        raise CheckpointError(f"{path}: {error}") from error


def _checkpoint_models(preset: Preset, checkpoint_dir: Path, svd_dir: Path, device, dtype) -> Models:
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"{checkpoint_dir}: checkpoint folder not found")
    svd = read_svd_folder(svd_dir)   # all configs first: fail before reading gigabytes
    mv_path, lgm_path = _find_state_file(checkpoint_dir, MV_FILE), _find_state_file(checkpoint_dir, LGM_FILE)

    state = load_state_file(mv_path)
    adapter_channels, adapter_blocks = _infer_config(
        lambda: mv_config_from_state_dict(state, svd.unet_config),
        lambda: MVModel(svd.unet_config, svd.unet_config["block_out_channels"], preset.adapter_blocks),
        state, mv_path)
    with params_on_meta():
        mv = MVModel(svd.unet_config, adapter_channels, adapter_blocks)
    load_weights(mv, state, mv_path, device, dtype)

    state = load_state_file(lgm_path)
    lgm_config = _infer_config(lambda: lgm_config_from_state_dict(state, preset.lgm),
                               lambda: LGM(preset.lgm), state, lgm_path)
    with params_on_meta():
        lgm = LGM(lgm_config)
    load_weights(lgm, state, lgm_path, device, dtype)

    with params_on_meta():
        vae, clip = build_vae(svd.vae_config), build_clip(svd.clip_config)
    load_weights(vae, load_state_file(svd.vae_weights), svd.vae_weights, device, dtype)
    state = load_state_file(svd.clip_weights)
    state = {k: v for k, v in state.items() if k not in _LEGACY_CLIP_KEYS}
    load_weights(clip, state, svd.clip_weights, device, dtype)
    encoder = ImageEncoder(clip, svd.image_mean, svd.image_std).to(device).eval()

    preset = preset.replace(unet=svd.unet_config, adapter_channels=adapter_channels,
                            adapter_blocks=adapter_blocks, lgm=lgm_config, vae=svd.vae_config,
                            clip=svd.clip_config)
    sources = {"mv": str(mv_path), "lgm": str(lgm_path), "vae": str(svd.vae_weights),
               "clip": str(svd.clip_weights), "schedule": str(svd.schedule_file)}
    return Models(preset, mv, lgm, vae, encoder, svd.schedule, sources)
