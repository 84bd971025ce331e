"""The renderer switch: both renderers give the adapters the same [B·V, 192, H/8, W/8] inputs."""

import pytest
import torch

from kernel_helpers import INTRINSICS, kernel_device, rel_err
from ort3d.kernels.feedback_dispatch import (UnknownRendererError, prepare_render_cameras,
                                             render_feedback)
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w

H, W = 32, 32


def cameras(device):
    return prepare_render_cameras(look_at_c2w([45.0, 270.0]), 39.6, INTRINSICS.expand(2, 3, 3),
                                  H, W, device=device)


def test_torch_and_triton_renderers_agree_on_a_batch():
    device = kernel_device()
    gaussians = lgm_like_gaussians(num=160, batch=2, seed=5, device=device)
    cams = cameras(device)
    ref = render_feedback(gaussians, cams, renderer="torch", want_images=True)
    got = render_feedback(gaussians, cams, renderer="triton", want_images=True)
    assert ref.rgb.shape == got.rgb.shape == (4, 192, H // 8, W // 8)      # (batch, view) flattened
    assert ref.ccm.shape == got.ccm.shape == (4, 192, H // 8, W // 8)
    assert ref.needed is None and int(got.needed) > 0
    assert rel_err(got.rgb, ref.rgb) <= 1e-5
    # CCM is fp16-valued (Q5): a depth rounding difference may flip one fp16 ulp.
    assert (got.ccm - ref.ccm).abs().max() <= 2.0 ** -11
    assert rel_err(got.images.depth, ref.images.depth) <= 1e-5
    assert (ref.images.alpha > 0.5).any()                                  # the object is in view


def test_images_only_when_asked_and_bad_choices_rejected():
    gaussians = lgm_like_gaussians(num=32, seed=6)
    out = render_feedback(gaussians, cameras("cpu"), renderer="torch")
    assert out.images is None and out.rgb.dtype == torch.float32
    with pytest.raises(UnknownRendererError, match="renderer must be one of torch, triton, gsplat; got 'cuda'"):
        render_feedback(gaussians, cameras("cpu"), renderer="cuda")
    with pytest.raises(ValueError, match="divisible by 8"):
        prepare_render_cameras(look_at_c2w([0.0]), 39.6, INTRINSICS[None], 36, 32)
