"""The SVD base model folder in diffusers layout, read without any hub logic (docs/architecture.md#checkpoints).

    unet/config.json                          -> the MVModel's UNet architecture (weights unused:
                                                 mv_model_unet.pth holds the fine-tuned UNet)
    vae/config.json + diffusion_pytorch_model[.fp16].{safetensors,bin}
    image_encoder/config.json + model[.fp16].safetensors | pytorch_model[.fp16].bin
    feature_extractor/preprocessor_config.json  (image_mean / image_std)
    scheduler/scheduler_config.json

Where both exist, the fp16 variant is preferred: the reference pipeline loads `variant="fp16"`
(docs/architecture.md#checkpoints), and loading it into float32 gives exactly the reference's weights.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import UNetSpatioTemporalConditionModel
from transformers import CLIPVisionConfig

from ort3d.models.scheduler import ScheduleConfig, ScheduleConfigError
from ort3d.models.state_files import CheckpointError
from ort3d.models.vae import vae_init_kwargs

VAE_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
               "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
CLIP_WEIGHTS = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin", "pytorch_model.bin")
# CLIPVisionConfig fields that shape the encoder (the keys of presets.clip_config).
CLIP_ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "image_size", "patch_size", "projection_dim", "hidden_act", "layer_norm_eps", "num_channels")


@dataclass(frozen=True)
class SVDFolder:
    root: Path
    unet_config: dict[str, Any]   # UNetSpatioTemporalConditionModel kwargs
    vae_config: dict[str, Any]    # AutoencoderKLTemporalDecoder kwargs
    vae_weights: Path
    clip_config: dict[str, Any]   # CLIPVisionConfig kwargs
    clip_weights: Path
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    schedule: ScheduleConfig
    schedule_file: Path


def read_json(path: Path, needed_for: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (needed for {needed_for})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _weights_file(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file (looked for {', '.join(names)})")


def _tuples(config: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def unet_init_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    accepted = inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters
    return _tuples({k: v for k, v in config.items() if k in accepted and k != "self"})


def _clip_config(path: Path) -> dict[str, Any]:
    data = read_json(path, "the CLIP image encoder architecture")
    model_type = data.get("model_type", "clip_vision_model")
    if model_type != "clip_vision_model":
        raise CheckpointError(f"{path}: model_type is {model_type!r}, expected 'clip_vision_model' "
                              "(a CLIPVisionModelWithProjection config)")
    config = CLIPVisionConfig.from_dict(data)
    return {k: getattr(config, k) for k in CLIP_ARCH_KEYS}


def _normalisation(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    data = read_json(path, "the CLIP input normalisation")
    values = []
    for field in ("image_mean", "image_std"):
        value = data.get(field)
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
            raise CheckpointError(f"{path}: field {field} must be a list of 3 numbers, found {value!r}")
        values.append(tuple(float(v) for v in value))
    return values[0], values[1]


def read_svd_folder(root) -> SVDFolder:
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: SVD folder not found")
    unet = unet_init_kwargs(read_json(root / "unet" / "config.json", "the multi-view UNet architecture"))
    vae = vae_init_kwargs(read_json(root / "vae" / "config.json", "the VAE architecture"))
    mean, std = _normalisation(root / "feature_extractor" / "preprocessor_config.json")
    schedule_file = root / "scheduler" / "scheduler_config.json"
    try:
        schedule = ScheduleConfig.from_scheduler_config(read_json(schedule_file, "the sampler"))
    except ScheduleConfigError as error:
        raise CheckpointError(f"{schedule_file}: {error}") from error
    return SVDFolder(
        root=root, unet_config=unet, vae_config=vae, vae_weights=_weights_file(root / "vae", VAE_WEIGHTS),
        clip_config=_clip_config(root / "image_encoder" / "config.json"),
        clip_weights=_weights_file(root / "image_encoder", CLIP_WEIGHTS),
        image_mean=mean, image_std=std, schedule=schedule, schedule_file=schedule_file,
    )
