"""The feedback adapter: authors' key layout (docs/inference.md#adapter) and forward semantics."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ort3d.models.adapter import Adapter
from ort3d.models.weights import init_deterministic

FULL_KEYS = Path(__file__).resolve().parents[1] / "data" / "full_keys_mv.json"


def test_full_adapter_keys_equal_released_checkpoint():
    released = json.loads(FULL_KEYS.read_text())["keys"]
    prefix = "cond_encoder.0."
    expected = [(k[len(prefix):], tuple(s)) for k, s in released if k.startswith(prefix)]
    with torch.device("meta"):
        adapter = Adapter((320, 640, 1280, 1280), 3)
    assert [(k, tuple(v.shape)) for k, v in adapter.state_dict().items()] == expected


def test_in_conv_only_where_width_changes():
    adapter = Adapter((8, 16, 16, 32), blocks_per_stage=2)
    in_convs = {k.split(".")[1] for k in adapter.state_dict() if ".in_conv." in k}
    assert in_convs == {"2", "6"}        # first blocks of stages 1 and 3 (stage 2 keeps 16 wide)
    assert len(adapter.body) == 8


def _reference_forward(adapter, maps):
    """Independent functional reading of docs/inference.md#adapter with the adapter's weights."""
    x = F.pixel_unshuffle(maps, 8)
    x = F.conv2d(x, adapter.conv_in.weight, adapter.conv_in.bias, padding=1)
    features = []
    for idx, block in enumerate(adapter.body):
        stage, j = divmod(idx, adapter.blocks_per_stage)
        if stage > 0 and j == 0:
            x = F.avg_pool2d(x, 2)
        if block.in_conv is not None:
            x = F.conv2d(x, block.in_conv.weight, block.in_conv.bias)
        h = F.relu(F.conv2d(x, block.block1.weight, block.block1.bias, padding=1))
        x = F.conv2d(h, block.block2.weight, block.block2.bias) + x
        if j == adapter.blocks_per_stage - 1:
            features.append(x)
    return features


@pytest.fixture(scope="module")
def adapter():
    return init_deterministic(Adapter((16, 32, 32, 64), 3), seed=0, network="mv").eval()


def test_forward_matches_spec(adapter):
    torch.manual_seed(0)
    maps = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        features = adapter(maps)
        expected = _reference_forward(adapter, maps)
    assert [tuple(f.shape) for f in features] == [(3, 16, 16, 16), (3, 32, 8, 8), (3, 32, 4, 4), (3, 64, 2, 2)]
    for got, want in zip(features, expected):
        assert torch.equal(got, want)


def test_unshuffled_entry_point_and_layout(adapter):
    torch.manual_seed(1)
    maps = torch.rand(2, 3, 64, 64)
    unshuffled = adapter.unshuffle(maps)
    # channel c·64 + i·8 + j holds input channel c at sub-pixel (row i, column j)
    c, i, j, y, x = 2, 5, 3, 4, 6
    assert unshuffled[1, c * 64 + i * 8 + j, y, x] == maps[1, c, 8 * y + i, 8 * x + j]
    with torch.no_grad():
        direct = adapter.forward_unshuffled(unshuffled)
        full = adapter(maps)
    for a, b in zip(direct, full):
        assert torch.equal(a, b)
