"""The feedback-map adapter: the authors' Adapter_XL as configured for Ouroboros3D (docs/inference.md#adapter).

Configuration baked in (configs/mv/infer.yaml): cin = 3·8·8 = 192 (pixel-unshuffle by 8), sk=True
(identity skips, a 1×1 `in_conv` only where the width changes), use_conv=False (2×2 average-pool
downsampling), ksize=1 (block2 and in_conv are 1×1; block1 is always 3×3). State-dict keys are
the authors': `conv_in.*`, `body.i.in_conv.*`, `body.i.block1.*`, `body.i.block2.*`.
"""

from __future__ import annotations

import torch
from torch import nn

UNSHUFFLE = 8
IN_CHANNELS = 3 * UNSHUFFLE * UNSHUFFLE


class AdapterResBlock(nn.Module):
    """[avg-pool 2×2] -> [1×1 in_conv] -> x + block2(ReLU(block1(x)))."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        # Registration order = the authors' state-dict order (in_conv, block1, block2).
        self.in_conv = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.block1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_channels, out_channels, 1)
        self.down = nn.AvgPool2d(2, 2) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.block2(self.act(self.block1(x))) + x


class Adapter(nn.Module):
    """Feedback maps [N,3,H,W] -> one feature map per stage: widths `channels`, resolutions
    H/8, H/16, H/32, H/64 (not reversed; Q7: the authors' batch mean-reduce is a no-op)."""

    def __init__(self, channels=(320, 640, 1280, 1280), blocks_per_stage: int = 3):
        super().__init__()
        self.channels = tuple(channels)
        self.blocks_per_stage = blocks_per_stage
        body = []
        for stage, width in enumerate(self.channels):
            for j in range(blocks_per_stage):
                first_of_later_stage = stage > 0 and j == 0
                in_width = self.channels[stage - 1] if first_of_later_stage else width
                body.append(AdapterResBlock(in_width, width, downsample=first_of_later_stage))
        self.body = nn.ModuleList(body)
        self.conv_in = nn.Conv2d(IN_CHANNELS, self.channels[0], 3, padding=1)
        self.unshuffle = nn.PixelUnshuffle(UNSHUFFLE)

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_unshuffled(self.unshuffle(maps))

    def forward_unshuffled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N,192,H/8,W/8], channel c·64 + i·8 + j = input channel c at sub-pixel (i, j)."""
        x = self.conv_in(x)
        features = []
        for stage in range(len(self.channels)):
            for j in range(self.blocks_per_stage):
                x = self.body[stage * self.blocks_per_stage + j](x)
            features.append(x)
        return features
