"""The `ort` backend (runtime/backend_ort.py) on the tiny graphs: the per-network interface, and
the whole recursive loop against the eager backend with the same seed."""

import json

import numpy as np
import torch
from PIL import Image

from ort3d.export.specs import adapter_feature_names, network_specs
from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.presets import TINY
from ort3d.runtime.backend_ort import OrtNetworks
from ort3d.runtime.networks import EagerNetworks
from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline


def test_interface_shapes_and_schedule(tiny_artefacts, tiny_models):
    nets = OrtNetworks(tiny_artefacts.dir)
    assert nets.preset == TINY and nets.schedule_config == tiny_models.schedule
    specs = network_specs(TINY)
    image = specs["image_encoder"].sample_inputs(0)["image"]
    embedding = nets.encode_image(image)
    assert embedding.shape == (1, 1, 32) and nets.encode_latent(image).shape == (1, 4, 16, 16)
    nets.set_conditioning(torch.cat([torch.zeros_like(embedding), embedding]), load_feedback_cameras())
    maps = specs["adapters"].sample_inputs(1)
    features = nets.adapters(maps["rgb"], maps["ccm"])
    assert list(features) == adapter_feature_names()
    unet_in = specs["unet"].sample_inputs(2)
    out = nets.unet(unet_in["sample"], unet_in["timestep"][0], unet_in["added_time_ids"], features)
    assert out.shape == (2, 8, 4, 16, 16) and torch.isfinite(out).all()


def test_ccm_follows_the_graphs_precision(tiny_artefacts, artefact_copy):
    """fp32 graphs: the CCM in fp32. A folder whose graphs were exported in fp16 for TensorRT:
    the CCM follows the fp16 autocast they mirror (docs/quirks.md#q5), as the trt backend's does.
    (The stand-in marks the fp32 graphs fp16: the mapping reads the manifest, not the graphs.)"""
    assert OrtNetworks(tiny_artefacts.dir).autocast_dtype is None
    path = artefact_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["networks"]["unet"]["onnx"]["precision"] = "fp16"
    path.write_text(json.dumps(manifest))
    assert OrtNetworks(artefact_copy).autocast_dtype == torch.float16


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def test_recursive_loop_matches_eager(tiny_artefacts, tiny_models):
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(7)) * 2 - 1
    # Two steps: step 0 on zero feedback, then render -> CCM -> adapters feeding step 1, so every
    # network and the feedback path are exercised (the 25-step run is the same loop).
    options = PipelineOptions(steps=2, timing=False)
    runs = {}
    for nets in (EagerNetworks(tiny_models, "cpu"), OrtNetworks(tiny_artefacts.dir)):
        with torch.inference_mode():
            runs[nets.name] = RecursivePipeline(nets, "cpu", options).run(image, seed=42)
    eager, ort = runs["eager"], runs["ort"]
    assert ort.views.shape == eager.views.shape == (8, 3, 128, 128)
    # The bar: the 8 views match the eager backend's at PSNR >= 40 dB (fp32 graphs
    # differ from eager only by op order, ~1e-6 relative per network).
    for view in range(8):
        assert _psnr(ort.views[view], eager.views[view]) >= 40, view
    assert torch.isfinite(ort.gaussians).all()
    assert (ort.gaussians - eager.gaussians).abs().max() < 1e-2


def _view_tiles(png_path, size: int) -> torch.Tensor:
    """The 8 view tiles of an `ort3d-run` views grid (input in column 0, views 4 per row after
    it, 2 px padding), as [8, size, size, 3] floats in [0, 1]."""
    grid = torch.from_numpy(np.array(Image.open(png_path).convert("RGB"))).float() / 255
    tiles = []
    for view in range(8):
        row, col = view // 4, 1 + view % 4
        y, x = 2 + row * (size + 2), 2 + col * (size + 2)
        tiles.append(grid[y:y + size, x:x + size])
    return torch.stack(tiles)


def test_ort3d_run_backend_ort_matches_eager(tiny_artefacts, tmp_path):
    from ort3d.runtime.cli import main

    image = tmp_path / "object.png"
    rgba = np.zeros((96, 96, 4), np.uint8)       # a coloured disc on a transparent background
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 44) ** 2 < 30 ** 2
    rgba[disc] = (200, 90, 40, 255)
    rgba[..., 1] = np.where(disc, (xx * 2).astype(np.uint8), 0)
    Image.fromarray(rgba, "RGBA").save(image)
    common = [str(image), "--steps", "2", "--seed", "3", "--no-video", "--quiet", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "eager")]) == 0
    assert main(common + ["--out", str(tmp_path / "ort"), "--backend", "ort",
                          "--engines", str(tiny_artefacts.dir)]) == 0
    eager = _view_tiles(tmp_path / "eager" / "object_views.png", 128)
    ort = _view_tiles(tmp_path / "ort" / "object_views.png", 128)
    # The end-to-end bar on the written 8-bit views: PSNR >= 40 dB per view.
    for view in range(8):
        assert _psnr(ort[view], eager[view]) >= 40, view
