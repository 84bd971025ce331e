"""MVModel state-dict layout = the released mv_model_unet.pth (docs/architecture.md#checkpoints), and checkpoint config inference."""

import json
from pathlib import Path

import pytest
import torch

from ort3d.models.mv_unet import MVCheckpointError, MVModel, mv_config_from_state_dict
from ort3d.models.presets import FULL, TINY, plucker_widths, unet_config

FULL_KEYS = Path(__file__).resolve().parents[1] / "data" / "full_keys_mv.json"


def meta_state(preset) -> dict:
    with torch.device("meta"):
        return MVModel.from_preset(preset).state_dict()


@pytest.fixture(scope="module")
def full_state():
    return meta_state(FULL)


def test_full_keys_and_shapes_equal_released_checkpoint(full_state):
    released = json.loads(FULL_KEYS.read_text())["keys"]
    assert [[k, list(v.shape)] for k, v in full_state.items()] == released   # order included
    assert len(released) == 1572


def test_tiny_key_names_are_full_ones_in_full_order(full_state):
    """TINY changes width wherever FULL does (320 -> 640 -> 1280 = 1280 vs 32 -> 64 -> 96 = 96), so
    the layers that exist only at a width change (level 2's conv_shortcut, the adapters'
    body.6.in_conv) are there too: a tiny checkpoint has every released name, nothing else."""
    assert list(meta_state(TINY)) == list(full_state)


def test_unchanged_width_drops_exactly_the_width_change_layers(full_state):
    """The reason the widths above matter: keeping levels 1 and 2 equally wide removes the layers
    FULL's 640 -> 1280 change creates, and nothing else."""
    widths = (32, 64, 64, 64)
    preset = TINY.replace(unet=unet_config(widths, (1, 2, 2, 2), 32, 16, 16), adapter_channels=widths)
    width_change_1_to_2 = {
        "unet.down_blocks.2.resnets.0.spatial_res_block.conv_shortcut.weight",
        "unet.down_blocks.2.resnets.0.spatial_res_block.conv_shortcut.bias",
        *(f"cond_encoder.{k}.body.6.in_conv.{p}" for k in (0, 1) for p in ("weight", "bias")),
    }
    assert list(meta_state(preset)) == [k for k in full_state if k not in width_change_1_to_2]


def test_plucker_widths_are_the_released_ones():
    """docs/inference.md#plucker-embeddings: down 320, 320, 640, 1280; mid 1280; up 1280, 1280, 1280, 640 (the MLPs built
    from them are checked key by key above)."""
    assert FULL.plucker_channels == {"down": (320, 320, 640, 1280), "mid": (1280,),
                                     "up": (1280, 1280, 1280, 640)}
    assert plucker_widths((32, 64, 96, 96)) == TINY.plucker_channels == {
        "down": (32, 32, 64, 96), "mid": (96,), "up": (96, 96, 96, 64)}


@pytest.mark.parametrize("preset", [FULL, TINY], ids=["full", "tiny"])
def test_config_inferred_from_state_dict(preset):
    channels, blocks = mv_config_from_state_dict(meta_state(preset), preset.unet)
    assert channels == tuple(preset.adapter_channels) and blocks == preset.adapter_blocks


def test_config_inference_names_the_first_bad_key():
    state = meta_state(TINY)
    key = "unet.down_blocks.1.resnets.0.spatial_res_block.conv1.weight"
    wrong = dict(state, **{key: torch.empty(7, 32, 3, 3, device="meta")})
    with pytest.raises(MVCheckpointError, match=rf"'{key}' has shape \(7, 32, 3, 3\)"):
        mv_config_from_state_dict(wrong, TINY.unet)

    missing = {k: v for k, v in state.items() if k != "mid_plucker.embed.2.bias"}
    with pytest.raises(MVCheckpointError, match="missing key 'mid_plucker.embed.2.bias'"):
        mv_config_from_state_dict(missing, TINY.unet)

    extra = dict(state, **{"harm_embed._frequencies": torch.empty(6, device="meta")})
    with pytest.raises(MVCheckpointError, match="unexpected key 'harm_embed._frequencies'"):
        mv_config_from_state_dict(extra, TINY.unet)

    # A FULL checkpoint against the tiny config fails at the very first key.
    with pytest.raises(MVCheckpointError, match="'unet.conv_in.weight' has shape"):
        mv_config_from_state_dict(meta_state(FULL), TINY.unet)


def test_adapter_block_count_must_fill_the_stages():
    state = {k: v for k, v in meta_state(TINY).items() if not k.startswith("cond_encoder.0.body.11.")}
    with pytest.raises(MVCheckpointError, match="multiple of 4 stages"):
        mv_config_from_state_dict(state, TINY.unet)


def test_adapter_widths_must_match_unet_levels():
    with pytest.raises(ValueError, match="adapter_channels"):
        MVModel(TINY.unet, (32, 64, 96, 32), TINY.adapter_blocks)
