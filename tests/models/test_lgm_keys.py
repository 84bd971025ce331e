"""LGM state-dict layout: our module tree yields the released recon_model.pth keys and shapes, and
the shape options can be read back from a state dict (what checkpoint loading relies on)."""

import dataclasses
import json
import pathlib
import re

import pytest
import torch

from ort3d.models.lgm import LGM, LGMConfigError, lgm_config_from_state_dict
from ort3d.models.presets import FULL, TINY

KEYS_FILE = pathlib.Path(__file__).resolve().parents[1] / "data" / "full_keys_lgm.json"


@pytest.fixture(scope="module")
def released():
    return json.loads(KEYS_FILE.read_text())


@pytest.fixture(scope="module")
def full_state():
    with torch.device("meta"):
        return LGM(FULL.lgm).state_dict()


@pytest.fixture(scope="module")
def tiny_state():
    return LGM(TINY.lgm).state_dict()


def test_full_keys_and_shapes_equal_the_release_in_order(released, full_state):
    assert [[k, list(v.shape)] for k, v in full_state.items()] == released["keys"]
    assert sum(v.numel() for v in full_state.values()) == released["num_params"] == 424_039_200


def test_tiny_keys_are_the_full_names_in_full_order(released, tiny_state):
    # A 1x1 shortcut exists only where a block changes width; TINY changes width at the same down
    # blocks as FULL (1 to 4), so a tiny checkpoint has every released name and nothing else.
    assert list(tiny_state) == [k for k, _ in released["keys"]]


def test_equal_widths_drop_exactly_those_shortcuts(released):
    # The reason the widths matter: blocks 1, 2 and 4 kept at their input width lose their shortcut.
    cfg = dataclasses.replace(TINY.lgm, down_channels=(32, 32, 32, 64, 64, 64), up_channels=(64, 64, 64, 32, 32))
    with torch.device("meta"):
        names = list(LGM(cfg).state_dict())
    missing = {f"unet.down_blocks.{i}.nets.0.shortcut.{p}" for i in (1, 2, 4) for p in ("weight", "bias")}
    assert names == [k for k, _ in released["keys"] if k not in missing]


@pytest.mark.parametrize("preset", [FULL, TINY], ids=["full", "tiny"])
def test_config_round_trips_through_a_state_dict(preset, full_state, tiny_state):
    state = full_state if preset is FULL else tiny_state
    assert lgm_config_from_state_dict(state, preset.lgm) == preset.lgm
    # The stored-shape options come from the file, not from `base`.
    other = TINY.lgm if preset is FULL else FULL.lgm
    base = dataclasses.replace(other, input_size=preset.lgm.input_size, splat_size=preset.lgm.splat_size)
    assert lgm_config_from_state_dict(state, base) == preset.lgm


def test_config_inference_reads_attention_flags(tiny_state):
    cfg = dataclasses.replace(TINY.lgm, down_attention=(False,) * 5 + (True,), mid_attention=False,
                              up_attention=(True, False, False, False, False))
    state = LGM(cfg).state_dict()
    assert lgm_config_from_state_dict(state, TINY.lgm) == cfg


def test_bad_state_dicts_raise_one_line_errors(tiny_state):
    cases = {
        "no consecutive unet.down_blocks": {"conv.weight": torch.zeros(14, 14, 1, 1)},
        "missing key conv.bias": {k: v for k, v in tiny_state.items() if k != "conv.bias"},
        "unexpected key unet.extra": {**tiny_state, "unet.extra": torch.zeros(1)},
        "unet.conv_in.weight has shape (32, 8, 3, 3)": {**tiny_state, "unet.conv_in.weight": torch.zeros(32, 8, 3, 3)},
    }
    for expected, state in cases.items():
        with pytest.raises(LGMConfigError, match=re.escape(expected)) as error:
            lgm_config_from_state_dict(state, TINY.lgm)
        assert "\n" not in str(error.value)
    # input_size / splat_size are not stored, but must fit the network's depth (5 down, 4 up: /2).
    with pytest.raises(LGMConfigError, match="cannot give splat_size 64"):
        lgm_config_from_state_dict(tiny_state, dataclasses.replace(TINY.lgm, splat_size=64))
