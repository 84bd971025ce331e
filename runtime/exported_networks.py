"""What the `ort` and `trt` backends share: reading and checking an artefact folder, and the
pipeline's per-network interface (runtime/networks.py) on top of a generic `run(name, **inputs)`.

Subclasses provide `run(name, **inputs) -> {output name: tensor}` over the names and shapes of
ort3d.export.specs; this class maps the loop's calls onto it:

    encode_image(image)            -> run("image_encoder", image=...)["image_embeds"]
    encode_latent(image)           -> run("vae_encoder", image=...)["latent"]
    set_conditioning(clip_cfg, c)  -> keeps clip_cfg as the UNet's encoder_hidden_states
    adapters(rgb, ccm)             -> run("adapters", ...): the 8 features, a dict (opaque to the loop)
    unet(sample, t, time_ids, f)   -> run("unet", ..., **f)["noise_pred"]
    vae_decode(latents)            -> run("vae_decoder", latents=...)["images"]
    lgm(images, t)                 -> run("lgm", images=..., timestep=...)["gaussians"]
"""

from __future__ import annotations

from pathlib import Path

import torch

from ort3d.export.errors import ExportError
from ort3d.export.manifest import MANIFEST_NAME
from ort3d.export.specs import NETWORK_NAMES, cameras_sha256, network_specs
from ort3d.models.mv_unet import check_temporal_context
from ort3d.models.presets import get_preset
from ort3d.models.scheduler import ScheduleConfig


class ExportedNetworks:
    name = "exported"
    autocast_dtype = None        # the pipeline's CCM matmul follows this (runtime/pipeline.py)

    def __init__(self, directory: str | Path, manifest: dict, preset, temporal_context: str):
        """preset: the Preset the run uses (checkpoint-derived widths included); None takes the
        named preset the set was built for."""
        self.directory = Path(directory)
        self.manifest = manifest
        self.preset = preset if preset is not None else get_preset(manifest["preset"])
        self.schedule_config = ScheduleConfig(**manifest["schedule"])
        self.temporal_context = check_temporal_context(temporal_context)
        self.specs = network_specs(self.preset, temporal_context=self.temporal_context)
        self._check_against_specs()
        self._clip_cfg: torch.Tensor | None = None

    def _check_against_specs(self, names=NETWORK_NAMES) -> None:
        """The set must have been exported for this preset's shapes and these options."""
        path = self.directory / MANIFEST_NAME
        for name in names:
            entry, spec = self.manifest["networks"][name], self.specs[name]
            for side in ("inputs", "outputs"):
                want = spec.io_table()[side]
                if entry[side] != want:
                    raise ExportError(f"{path}: field networks.{name}.{side} is {entry[side]} but "
                                      f"preset {self.preset.name!r} needs {want}")
            for option, value in spec.options.items():
                if entry["options"].get(option) != value:
                    raise ExportError(f"{path}: field networks.{name}.options.{option} is "
                                      f"{entry['options'].get(option)!r}, this run needs {value!r}")

    def _follow_precision(self, entry: str) -> None:
        """fp16 graphs or engines (`entry`: "onnx" or "engine") mirror the reference's fp16
        autocast, so the pipeline's CCM matmul follows it (docs/quirks.md#q5)."""
        precisions = {self.manifest["networks"][n][entry]["precision"] for n in NETWORK_NAMES}
        self.autocast_dtype = torch.float16 if "fp16" in precisions else None

    # ---------------------------------------------------------------- pipeline interface
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.run("image_encoder", image=image)["image_embeds"].clone()

    def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
        return self.run("vae_encoder", image=image)["latent"].clone()

    def set_conditioning(self, clip_cfg: torch.Tensor, cameras) -> None:
        """The Plücker embeddings and LGM rays are folded into the graphs, so the cameras must be
        the ones they were exported with (recorded as a sha256 in the manifest)."""
        wanted = self.manifest["networks"]["unet"]["options"]["cameras_sha256"]
        if cameras_sha256(cameras) != wanted:
            raise ExportError(f"{self.directory / MANIFEST_NAME}: field "
                              "networks.unet.options.cameras_sha256: the graphs were exported "
                              "for other cameras than this run's; re-export them")
        self._clip_cfg = clip_cfg

    def adapters(self, rgb: torch.Tensor, ccm: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run("adapters", rgb=rgb, ccm=ccm)

    def unet(self, sample, timestep, added_time_ids, features: dict) -> torch.Tensor:
        if self._clip_cfg is None:
            raise RuntimeError("set_conditioning must be called before unet")
        return self.run("unet", sample=sample, timestep=timestep.reshape(1),
                        encoder_hidden_states=self._clip_cfg, added_time_ids=added_time_ids,
                        **features)["noise_pred"]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run("vae_decoder", latents=latents)["images"]

    def lgm(self, images: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.run("lgm", images=images, timestep=timestep.reshape(1))["gaussians"]

    # ---------------------------------------------------------------- input checks
    def _checked_inputs(self, name: str, inputs: dict) -> dict:
        spec = self.specs[name]
        if set(inputs) != set(spec.input_names):
            raise ValueError(f"{name}: inputs {sorted(inputs)} differ from {spec.input_names}")
        for tensor_spec in spec.inputs:
            got = tuple(inputs[tensor_spec.name].shape)
            if got != tuple(tensor_spec.shape):
                raise ValueError(f"{name}: input {tensor_spec.name} has shape {got}, "
                                 f"the graph takes {tuple(tensor_spec.shape)}")
        return inputs
