"""The `ort` backend: the exported ONNX graphs run by ONNX Runtime, behind the same per-network
interface as the eager backend (runtime/exported_networks.py).

CPU here; with onnxruntime-gpu installed, the CUDA provider (or any providers passed in). Inputs
and outputs go through host memory as numpy arrays, so this backend proves the graphs right and
runs anywhere; the device-resident fast path is the `trt` backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ort3d.export.manifest import check_onnx_set, read_manifest
from ort3d.export.ort_session import create_session, default_providers
from ort3d.export.specs import NETWORK_NAMES
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT
from ort3d.runtime.exported_networks import ExportedNetworks


class OrtNetworks(ExportedNetworks):
    name = "ort"

    def __init__(self, directory: str | Path, preset=None, device="cpu", providers: list[str] | None = None,
                 temporal_context: str = DEFAULT_TEMPORAL_CONTEXT, verify_hashes: bool = True,
                 threads: int | None = None):
        directory = Path(directory)
        manifest = read_manifest(directory)
        # Everything is checked from the manifest and sha256s before ONNX Runtime sees a file.
        check_onnx_set(manifest, directory, NETWORK_NAMES, verify_hashes)
        super().__init__(directory, manifest, preset, temporal_context)
        self._follow_precision("onnx")      # a TensorRT-built folder holds fp16 graphs
        self.device = torch.device(device)
        self.providers = providers or default_providers(str(self.device))
        self.sessions = {
            name: create_session(directory / manifest["networks"][name]["onnx"]["file"],
                                 self.providers, threads)
            for name in NETWORK_NAMES
        }

    def run(self, name: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensors in (any device), float32 tensors out on this backend's device."""
        spec = self.specs[name]
        feed = {k: np.ascontiguousarray(v.detach().to("cpu", torch.float32).numpy())
                for k, v in self._checked_inputs(name, inputs).items()}
        values = self.sessions[name].run(spec.output_names, feed)
        return {k: torch.from_numpy(v).to(self.device) for k, v in zip(spec.output_names, values)}
