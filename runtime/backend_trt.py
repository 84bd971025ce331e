"""The `trt` backend: TensorRT 10 engines with static device buffers bound once by name and
`execute_async_v3` on the caller's current CUDA stream (docs/architecture.md#backends). TensorRT
is imported lazily.

Before anything is deserialised, the manifest must say the engines were built by this ort3d
version, for this TensorRT version and this GPU, and every engine file must have the sha256 the
manifest recorded (ort3d.export.manifest.check_engine_set): a foreign or corrupt plan crashes
the deserialiser or computes garbage, so it must never reach it.

`run(name, **inputs)` copies the inputs into the network's static input buffers (no copy when a
caller passes the buffer itself, as the UNet's adapter features are) and returns the static output buffers:
they stay valid until the next run of the same network, like the eager loop's buffers. Every
call is stream-ordered, with no host synchronisation, so a step can be captured in a CUDA graph:
the engines run on the backend's own stream, joined to the caller's current stream before and
after (events only), because on the legacy default stream (PyTorch's default) enqueueV3 adds a
cudaStreamSynchronize per call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ort3d.export.errors import ExportError
from ort3d.export.manifest import MANIFEST_NAME, check_engine_set, read_manifest
from ort3d.export.specs import NETWORK_NAMES, adapter_feature_names
from ort3d.export.trt_build import host_identity, import_tensorrt
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT
from ort3d.runtime.exported_networks import ExportedNetworks

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                 "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}


def _torch_dtype(trt, dtype) -> torch.dtype:
    """trt.DataType member -> torch dtype (members looked up by name on the trt module)."""
    for name, torch_dtype in _TORCH_DTYPES.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise ExportError(f"engine tensor type {dtype} has no torch equivalent")


class TrtNetworks(ExportedNetworks):
    name = "trt"

    def __init__(self, directory: str | Path, preset=None, device="cuda",
                 temporal_context: str = DEFAULT_TEMPORAL_CONTEXT, verify_hashes: bool = True):
        directory = Path(directory)
        manifest = read_manifest(directory)
        trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ExportError(f"--device {device}: the TensorRT backend runs on a CUDA device")
        identity = host_identity(self.device.index or 0)
        check_engine_set(manifest, directory, NETWORK_NAMES, identity, verify_hashes)
        super().__init__(directory, manifest, preset, temporal_context)
        self._follow_precision("engine")

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines, self._contexts, self._buffers = {}, {}, {}
        self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.device(self.device):
            for name in NETWORK_NAMES:
                self._load(trt, name)
        self._share_adapter_features()

    def _load(self, trt, name: str) -> None:
        entry = self.manifest["networks"][name]["engine"]
        path = self.directory / entry["file"]
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ExportError(f"{path}: TensorRT could not deserialise the engine (see its log)")
        context = engine.create_execution_context()
        spec = self.specs[name]
        wanted = {t.name: tuple(t.shape) for t in (*spec.inputs, *spec.outputs)}
        buffers = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(tensor))
            if wanted.get(tensor) != shape:
                raise ExportError(f"{path}: engine tensor {tensor} {shape} does not match "
                                  f"{self.directory / MANIFEST_NAME} networks.{name} "
                                  f"({wanted.get(tensor)})")
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(tensor))
            buffers[tensor] = torch.empty(shape, dtype=dtype, device=self.device)
            context.set_tensor_address(tensor, buffers[tensor].data_ptr())   # bound once
        if set(buffers) != set(wanted):
            raise ExportError(f"{path}: engine tensors {sorted(buffers)} differ from the manifest's")
        self._engines[name], self._contexts[name], self._buffers[name] = engine, context, buffers

    def _share_adapter_features(self) -> None:
        """Bind the UNet's feature inputs to the adapters' output buffers: the features then
        never move, and run("unet", **features) finds them in place (no copy)."""
        for name in adapter_feature_names():
            produced, consumed = self._buffers["adapters"][name], self._buffers["unet"][name]
            if (produced.shape, produced.dtype) == (consumed.shape, consumed.dtype):
                self._buffers["unet"][name] = produced
                self._contexts["unet"].set_tensor_address(name, produced.data_ptr())

    def set_conditioning(self, clip_cfg: torch.Tensor, cameras) -> None:
        super().set_conditioning(clip_cfg, cameras)
        # Constant for the whole run: copied into the UNet's input buffer once, not per step.
        self._buffers["unet"]["encoder_hidden_states"].copy_(clip_cfg)
        self._clip_cfg = self._buffers["unet"]["encoder_hidden_states"]

    def run(self, name: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        buffers = self._buffers[name]
        for key, value in self._checked_inputs(name, inputs).items():
            if value.data_ptr() != buffers[key].data_ptr():
                buffers[key].copy_(value)
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)        # inputs written on the caller's stream first
        if not self._contexts[name].execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {name}")
        caller.wait_stream(self._stream)        # outputs ready before the caller reads them
        return {n: buffers[n] for n in self.specs[name].output_names}
