"""Simple feature pyramid (ViTDet / BEiT style) over four encoder taps (docs/design.md#method)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import Tensor, nn


def _level(scale: float, channels: int, make_norm: Callable[[], nn.Module]) -> nn.Module:
    """Resample a tap map by ``scale`` (a power of two): x4 deconv-norm-GELU-deconv, x2 deconv, x1 identity,
    below 1 max pooling (ViTDet's branches; x8 adds one more norm-GELU-deconv)."""
    steps = round(math.log2(scale))
    if steps == 0:
        return nn.Identity()
    if steps < 0:
        return nn.MaxPool2d(2 ** -steps, 2 ** -steps)
    if steps == 1:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    layers: list[nn.Module] = [nn.ConvTranspose2d(channels, channels, 2, stride=2)]
    for _ in range(1, steps):
        layers += [make_norm(), nn.GELU(), nn.ConvTranspose2d(channels, channels, 2, stride=2)]
    return nn.Sequential(*layers)


class SimpleFeaturePyramid(nn.Module):
    """Tap 1: deconv-norm-GELU-deconv (x4), tap 2: deconv (x2), tap 3: identity, tap 4: maxpool (/2).

    All levels keep the encoder width; with patch 16 the strides are 4/8/16/32 (3.5/7/14/28 with patch 14).
    ``scales`` sets other factors per tap (finest first; a patch-8 encoder takes 2/1/0.5/0.25 for 4/8/16/32).
    """

    def __init__(self, channels: int, norm: str = "batch", scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        self.scales = [float(s) for s in scales]
        def make_norm() -> nn.Module:
            return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(32, channels)

        self.levels = nn.ModuleList([_level(s, channels, make_norm) for s in self.scales])

    def forward(self, taps: Sequence[Tensor]) -> list[Tensor]:
        """4 x [B, C, h, w] tap maps -> 4 x [B, C, ...] maps, finest first."""
        return [level(x) for level, x in zip(self.levels, taps)]
