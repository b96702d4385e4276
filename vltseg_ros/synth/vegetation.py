"""Trees: a trunk and a lumpy crown as camera-facing billboards (both are Cityscapes vegetation)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .scene import VEGETATION

if TYPE_CHECKING:
    from .street import Street


def tree(street: Street, base: np.ndarray, scale: float = 1.0) -> None:
    """Trunk plus a lumpy crown; both are vegetation in Cityscapes."""
    sc, r = street.scene, street.rng
    g = sc.new_group()
    trunk_h = r.uniform(1.8, 4.0) * scale
    radius = r.uniform(1.3, 3.2) * scale
    trunk_w = r.uniform(0.2, 0.45) * scale
    lobes = []
    for _ in range(int(r.integers(3, 7))):
        c = r.normal(0, radius * 0.35, 2)
        rr = radius * r.uniform(0.55, 0.85)
        t = np.linspace(0, 2 * math.pi, 18, endpoint=False)
        wobble = 1 + 0.12 * np.sin(3 * t + r.uniform(0, 6)) + 0.08 * np.sin(5 * t + r.uniform(0, 6))
        lobes.append(np.stack([c[0] + rr * wobble * np.cos(t), trunk_h + radius * 0.8 + c[1] + rr * wobble
                               * np.sin(t)], -1))
    trunk = np.array([[-trunk_w / 2, 0], [trunk_w / 2, 0], [trunk_w * 0.35, trunk_h + radius * 0.5],
                      [-trunk_w * 0.35, trunk_h + radius * 0.5]])
    sc.billboard(base, [("trunk", [trunk]), ("foliage", lobes)], VEGETATION, g)
    sc.casters.append(np.array([base + (dx, dy, dz) for dx in (-radius, radius) for dz in (-radius, radius)
                                for dy in (trunk_h, trunk_h + 2 * radius)]))
