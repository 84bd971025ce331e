"""The feedback stage as an exportable network: Gaussians -> render -> CCM -> pixel-unshuffle.

A host without Python (runtime/host/) needs the step between LGM and the adapters as an engine
too. The module renders with `kernels.render_static` (the reference renderer's maths in static
shapes) and lays the maps out with `kernels.feedback.feedback_maps`, so the maths has one
definition. The feedback cameras are fixed data of the released model, folded in as buffers and
recorded by sha256 in the spec's options like the UNet's and LGM's (export/specs.py).

    feedback   gaussians [1,N,14] -> rgb, ccm [F,192,s,s] (the adapters' two inputs)
"""

from __future__ import annotations

import torch
from torch import nn

from ort3d.export.specs import UNSHUFFLED_CHANNELS, NetworkSpec, TensorSpec, cameras_sha256
from ort3d.kernels.feedback import UNSHUFFLE, feedback_maps
from ort3d.kernels.feedback_dispatch import prepare_render_cameras
from ort3d.kernels.render_static import render_gaussians_static
from ort3d.models.cameras import FeedbackCameras, load_feedback_cameras
from ort3d.models.presets import Preset

FEEDBACK = "feedback"
# The CCM matmul precision baked into the graph: fp32, as the eager backend without autocast
# (the fp16-autocast emulation of docs/quirks.md#q5 belongs to fp16 engines).
CCM_MATMUL_DTYPE = "float32"


def feedback_spec(preset: Preset, cameras: FeedbackCameras | None = None) -> NetworkSpec:
    cameras = cameras if cameras is not None else load_feedback_cameras()
    views, s = preset.num_views, preset.latent_size
    maps = tuple(TensorSpec(kind, (views, UNSHUFFLED_CHANNELS, s, s)) for kind in ("rgb", "ccm"))
    return NetworkSpec(FEEDBACK, (TensorSpec("gaussians", (1, preset.num_gaussians, 14)),), maps,
                       options={"cameras_sha256": cameras_sha256(cameras),
                                "ccm_matmul_dtype": CCM_MATMUL_DTYPE},
                       cameras=cameras)


class FeedbackExport(nn.Module):
    def __init__(self, cameras: FeedbackCameras, image_size: int, device):
        super().__init__()
        cams = prepare_render_cameras(cameras.c2w, cameras.fov_deg, cameras.intrinsics,
                                      image_size, image_size, device)
        self.size = image_size
        for name in ("w2c", "K", "c2w", "intrinsics_norm"):
            self.register_buffer(name, getattr(cams, name).contiguous())

    def forward(self, gaussians: torch.Tensor):
        images = render_gaussians_static(gaussians, self.w2c, self.K, self.size, self.size)
        return feedback_maps(images, self.c2w, self.intrinsics_norm, unshuffle=True,
                             matmul_dtype=getattr(torch, CCM_MATMUL_DTYPE))


def feedback_module(spec: NetworkSpec, device) -> FeedbackExport:
    return FeedbackExport(spec.cameras, spec.outputs[0].shape[-1] * UNSHUFFLE, device)
