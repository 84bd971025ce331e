"""The `aoti` backend: the AOTInductor packages of an artefact folder (export/aoti_export.py),
loaded with `torch._inductor.aoti_load_package`, behind the exported backends' interface
(runtime/exported_networks.py).

These are the same `.pt2` files the C++ host runs (runtime/host/), so this backend is how Python
checks them. Besides the six networks the set holds the feedback stage (render -> CCM ->
unshuffle in static shapes), available here as `feedback(gaussians)`. A package runs on the
device it was compiled for and only under the torch version that compiled it; both are checked
from the manifest before any package is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ort3d.export.aoti_export import AOTI_NETWORK_NAMES, aoti_specs
from ort3d.export.feedback_export import FEEDBACK
from ort3d.export.manifest import check_aoti_set, read_manifest
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT
from ort3d.runtime.exported_networks import ExportedNetworks


class AotiNetworks(ExportedNetworks):
    name = "aoti"

    def __init__(self, directory: str | Path, preset=None, device="cpu",
                 temporal_context: str = DEFAULT_TEMPORAL_CONTEXT, verify_hashes: bool = True):
        directory = Path(directory)
        self.device = torch.device(device)
        manifest = read_manifest(directory)
        check_aoti_set(manifest, directory, AOTI_NETWORK_NAMES, self.device.type,
                       torch.__version__, verify_hashes)
        super().__init__(directory, manifest, preset, temporal_context)
        self.specs = aoti_specs(self.specs, self.preset)
        self._check_against_specs((FEEDBACK,))
        index = self.device.index if self.device.index is not None else -1
        self.packages = {
            name: torch._inductor.aoti_load_package(
                str(directory / manifest["networks"][name]["aoti"]["file"]), device_index=index)
            for name in AOTI_NETWORK_NAMES
        }

    def run(self, name: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensors in (moved to this backend's device as float32), float32 tensors out."""
        spec = self.specs[name]
        checked = self._checked_inputs(name, inputs)
        args = [checked[k].to(self.device, torch.float32).contiguous() for k in spec.input_names]
        with torch.no_grad():
            outputs = self.packages[name](*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return dict(zip(spec.output_names, outputs))

    def feedback(self, gaussians: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gaussians [1,N,14] -> the adapters' (rgb, ccm) [F,192,s,s], as the C++ host renders."""
        out = self.run(FEEDBACK, gaussians=gaussians)
        return out["rgb"], out["ccm"]
