"""Simple feature pyramid (ViTDet / BEiT style) over four encoder taps (docs/design.md#method)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class SimpleFeaturePyramid(nn.Module):
    """Tap 1: deconv-norm-GELU-deconv (x4), tap 2: deconv (x2), tap 3: identity, tap 4: maxpool (/2).

    All levels keep the encoder width; with patch 16 the strides are 4/8/16/32 (3.5/7/14/28 with patch 14).
    """

    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        norm_layer = nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(32, channels)
        self.levels = nn.ModuleList([
            nn.Sequential(
                nn.ConvTranspose2d(channels, channels, 2, stride=2), norm_layer, nn.GELU(),
                nn.ConvTranspose2d(channels, channels, 2, stride=2),
            ),
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, 2),
        ])

    def forward(self, taps: Sequence[Tensor]) -> list[Tensor]:
        """4 x [B, C, h, w] tap maps -> 4 x [B, C, ...] maps, finest first."""
        return [level(x) for level, x in zip(self.levels, taps)]
