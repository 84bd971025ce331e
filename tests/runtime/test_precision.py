"""Reduced-precision policies: the VAE under --dtype fp16/bf16 (diffusers' force_upcast) and the
CCM dtype each policy computes the feedback maps with (docs/precision.md)."""

import os

import pytest
import torch

from kernel_helpers import INTRINSICS
from ort3d.kernels.feedback_dispatch import prepare_render_cameras, render_feedback
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w
from ort3d.models.checkpoint import build_models
from ort3d.models.presets import TINY
from ort3d.runtime.networks import (ccm_matmul_dtype, make_networks, precision_policy,
                                    vae_precision)
from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def test_a_force_upcast_vae_never_runs_in_plain_fp16():
    # (weights, autocast) of the VAE for each loop policy, on a device with bf16.
    assert vae_precision(F32, F16, "cpu", force_upcast=True) == (F32, F16)     # the authors' policy
    assert vae_precision(F32, None, "cpu", force_upcast=True) == (F32, None)
    assert vae_precision(F16, F16, "cpu", force_upcast=True) == (BF16, BF16)
    assert vae_precision(BF16, BF16, "cpu", force_upcast=True) == (BF16, BF16)
    assert vae_precision(F16, F16, "cpu", force_upcast=False) == (F16, F16)    # a VAE that fits fp16


def test_without_bf16_a_force_upcast_vae_stays_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert vae_precision(F16, F16, "cuda", force_upcast=True) == (F32, None)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reduced_precision_eager_runs_from_the_vae_encoder_to_the_views(dtype):
    """Regression: the VAE encoder ran fp32 images through half weights outside autocast
    ("Input type (float) and bias type (c10::Half) should be the same")."""
    nets = make_networks("eager", TINY, "cpu", dtype=dtype)
    weights, _ = precision_policy(dtype, "cpu")
    assert next(nets.models.mv.parameters()).dtype == weights
    assert nets.models.vae.dtype == BF16 and nets.vae_autocast_dtype == BF16
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size,
                       generator=torch.Generator().manual_seed(0)) * 2 - 1
    latent = nets.encode_latent(image)
    assert latent.dtype == F32 and latent.shape == (1, 4, TINY.latent_size, TINY.latent_size)
    result = RecursivePipeline(nets, "cpu", PipelineOptions(steps=2)).run(image, seed=0)
    assert torch.isfinite(result.views).all() and torch.isfinite(result.gaussians).all()


def test_reduced_precision_vae_encoding_is_close_to_fp32():
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size,
                       generator=torch.Generator().manual_seed(1)) * 2 - 1
    models = build_models(TINY)
    reference = make_networks("eager", TINY, "cpu", models=models, dtype="fp32").encode_latent(image)
    half = make_networks("eager", TINY, "cpu", dtype="fp16").encode_latent(image)
    # bf16 keeps 8 significant bits (2^-8 relative per op); through the encoder's ~20 layers the
    # posterior mean stays within a few percent.
    assert ((half - reference).norm() / reference.norm()).item() < 5e-2


def test_ccm_dtype_follows_the_networks_compute_dtype():
    assert ccm_matmul_dtype(F16) == F16            # the reference's autocast CCM (Q5)
    assert ccm_matmul_dtype(BF16) == F32           # no bf16 reference: computed in fp32
    assert ccm_matmul_dtype(None) == F32 and ccm_matmul_dtype(F32) == F32


def test_a_bf16_pipeline_computes_an_fp32_ccm():
    nets = make_networks("eager", TINY, "cpu", dtype="bf16")
    assert RecursivePipeline(nets, "cpu", PipelineOptions(steps=2)).ccm_dtype == F32


def test_bf16_feedback_maps_agree_between_the_triton_kernels_and_the_torch_twin():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a CUDA GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cams = prepare_render_cameras(look_at_c2w([30.0, 200.0]), 39.6, INTRINSICS.expand(2, 3, 3),
                                  32, 32, device=device)
    gaussians = lgm_like_gaussians(num=96, seed=7, device=device)
    matmul = ccm_matmul_dtype(BF16)
    got = render_feedback(gaussians, cams, "triton", matmul_dtype=matmul, dtype=BF16)
    want = render_feedback(gaussians, cams, "torch", matmul_dtype=matmul, dtype=BF16)
    assert got.rgb.dtype == got.ccm.dtype == BF16
    # Both compute in fp32 (≤ 1e-5 apart, the renderer parity bar) and round to bf16 at the end:
    # a value may land on the other side of a rounding boundary, one bf16 ulp (2^-8 in [0.5, 1)).
    assert (got.ccm.float() - want.ccm.float()).abs().max().item() <= 2.0 ** -8
    assert (got.rgb.float() - want.rgb.float()).abs().max().item() <= 2.0 ** -8
