"""SVD pieces: VAE encode/decode entry points, the CLIP image conditioning, added time ids."""

import pytest
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing as svd_resize_with_antialiasing,
)
from transformers import CLIPImageProcessor

from ort3d.models.clip import (
    CLIP_MEAN, CLIP_STD, ImageEncoder, antialias_sigma_and_size, build_clip, gaussian_kernel1d,
    resize_with_antialiasing,
)
from ort3d.models.presets import TINY
from ort3d.models.svd import added_time_ids
from ort3d.models.vae import build_vae, vae_decode, vae_encode_mode
from ort3d.models.weights import init_deterministic


@pytest.fixture(scope="module")
def vae():
    return init_deterministic(build_vae(TINY.vae), seed=3, network="vae").eval()


@pytest.fixture(scope="module")
def clip():
    return init_deterministic(build_clip(TINY.clip), seed=3, network="clip").eval()


def test_antialias_kernel_for_512_to_224():
    sigma, size = antialias_sigma_and_size(512, 224)
    assert size == 3 and sigma == pytest.approx(0.6428571, abs=1e-7)
    kernel = gaussian_kernel1d(size, sigma)
    # docs/inference.md#conditioning prints the float32 kernel to 8 significant digits.
    torch.testing.assert_close(kernel, torch.tensor([0.18680868, 0.62638265, 0.18680868]),
                               rtol=0, atol=1e-8)


def test_kernel_size_is_forced_odd():
    # factor 3 -> sigma 1 -> 2·2σ = 4 taps -> 5
    assert antialias_sigma_and_size(300, 100) == (1.0, 5)


@pytest.mark.parametrize("shape,size", [((1, 3, 512, 512), (224, 224)), ((2, 3, 128, 128), (56, 56)),
                                        ((1, 3, 100, 300), (56, 80))])
def test_resize_is_svd_resize_bitwise(shape, size):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(resize_with_antialiasing(x, size), svd_resize_with_antialiasing(x, size))


def test_image_encoder_matches_svd_pipeline(clip):
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # The SVD pipeline's `_encode_image`: resize, (y+1)/2, feature extractor normalisation, CLIP.
    y = (svd_resize_with_antialiasing(image, (56, 56)) + 1.0) / 2.0
    pixels = CLIPImageProcessor()(images=y, do_normalize=True, do_center_crop=False, do_resize=False,
                                  do_rescale=False, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = clip(pixels).image_embeds.unsqueeze(1)
        got = ImageEncoder(clip)(image)
    assert got.shape == (1, 1, TINY.clip["projection_dim"])
    assert torch.equal(got, expected)


def test_image_encoder_uses_given_normalisation(clip):
    image = torch.zeros(1, 3, 128, 128)
    with torch.no_grad():
        standard = ImageEncoder(clip)(image)
        shifted = ImageEncoder(clip, mean=(0.5, 0.5, 0.5), std=CLIP_STD)(image)
        # mean 0.5 turns the resized grey image (0.5 after (y+1)/2) into exact zeros
        zeros = clip(torch.zeros(1, 3, 56, 56)).image_embeds.unsqueeze(1)
    assert torch.equal(shifted, zeros)
    assert not torch.allclose(standard, shifted)
    assert ImageEncoder(clip).mean.flatten().tolist() == pytest.approx(CLIP_MEAN)


def test_vae_encode_mode_is_unscaled_posterior_mean(vae):
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latents = vae_encode_mode(vae, images)
        posterior = vae.encode(images).latent_dist
    assert latents.shape == (1, 4, 16, 16)
    assert torch.equal(latents, posterior.mode()) and torch.equal(latents, posterior.mean)


def test_vae_decode_matches_diffusers_and_couples_frames(vae):
    frames = 4   # small sizes: the decoder is the slowest tiny network on CPU
    latents = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        images = vae_decode(vae, latents, num_frames=frames)
        expected = vae.decode(latents, num_frames=frames).sample
        perturbed = latents.clone()
        perturbed[0] += 1.0
        images_perturbed = vae_decode(vae, perturbed, num_frames=frames)
        one_by_one = torch.cat([vae_decode(vae, z[None], num_frames=1) for z in latents])
    assert images.shape == (frames, 3, 64, 64)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    # The temporal decoder mixes frames: changing frame 0 changes frame 1, and decoding frames
    # separately is not the same computation.
    assert (images_perturbed[1] - images[1]).abs().max() > 1e-4
    assert (one_by_one - images).abs().max() > 1e-4


def test_vae_decode_rejects_partial_videos(vae):
    with pytest.raises(ValueError, match="num_frames=8"):
        vae_decode(vae, torch.zeros(6, 4, 16, 16), num_frames=8)


def test_added_time_ids():
    ids = added_time_ids()
    assert ids.dtype == torch.float32 and ids.shape == (1, 3)
    assert ids.tolist() == [[6.0, 127.0, pytest.approx(0.02)]]
    assert ids[0, 2].item() == torch.tensor(0.02, dtype=torch.float32).item()
    assert added_time_ids(fps=9, motion_bucket_id=30, noise_aug=0.1, batch=2).tolist() == \
        [[8.0, 30.0, pytest.approx(0.1)]] * 2
