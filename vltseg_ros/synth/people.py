"""People: pedestrians on the sidewalks and at the crossing, and riders on two-wheelers, as layered billboards."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .scene import PERSON, RIDER, ellipse, limb

if TYPE_CHECKING:
    from .street import Street


def pedestrians(street: Street) -> None:
    """People on both sidewalks (alone or in small groups) and crossing at the cross street."""
    r = street.rng
    for side in (-1, 1):
        x_in = street.edge(side) + side * street.verge[side]
        for _ in range(int(r.poisson(r.uniform(1.5, 9)))):
            z = r.uniform(2, street.thing_depth)
            if street.in_crossing(z, z, 1):
                continue
            x = x_in + side * r.uniform(0.4, street.sidewalk[side] - 0.3)
            for k in range(1 if r.random() < 0.7 else int(r.integers(2, 4))):
                person(street, np.array([x + side * 0.6 * k, street.curb, z + r.normal(0, 0.4)]),
                       side_view=r.random() < 0.25)
    if street.crossing is not None:
        for _ in range(int(r.poisson(2.0))):
            z = street.crossing[0] - r.uniform(0.8, 3.4)
            x = r.uniform(street.x_left, street.x_right)
            if street.free(x - 0.3, x + 0.3, z - 0.3, z + 0.3):
                person(street, np.array([x, 0, z]), side_view=True)


def person(street: Street, base: np.ndarray, side_view: bool) -> None:
    """Pedestrian silhouette: walking in profile (crossing) or seen from the front / back (on the sidewalk)."""
    sc, r = street.scene, street.rng
    height = r.uniform(1.5, 1.95)
    s = height / 1.75
    hip, shoulder = 0.52 * height, 0.8 * height
    stride = r.uniform(0, 0.3) * s
    hem = hip - (r.uniform(0.2, 0.3) * s if r.random() < 0.25 else 0.0)  # coats reach below the hip
    parts: list[tuple[str, list[np.ndarray]]]
    if side_view:
        d = r.choice([-1, 1])

        def leg(foot: float) -> np.ndarray:
            return limb((0, hip), (foot, 0.05), 0.15 * s, 0.1 * s)

        def arm(hand: float) -> np.ndarray:
            return limb((0, shoulder), (hand, hip * 0.95), 0.09 * s, 0.07 * s)

        shoe = np.array([[-0.06, 0], [0.16 * s, 0], [0.1, 0.07], [-0.06, 0.07]]) * (d, 1) + (d * stride, 0)
        torso = np.array([[-0.1 * s, hem], [0.11 * s, hem], [0.12 * s, shoulder + 0.02],
                          [-0.1 * s, shoulder + 0.02]])
        parts = [("bottom", [leg(-d * stride)]), ("top", [arm(d * stride * 0.6)]), ("top", [torso]),
                 ("bottom", [leg(d * stride)]), ("shoe", [shoe]), ("top", [arm(-d * stride * 0.6)])]
        head_x = d * 0.02
    else:
        spread = 0.09 * s
        legs = [limb((k * spread, hip), (k * (spread + r.uniform(0, 0.04)), 0.05), 0.15 * s, 0.11 * s)
                for k in (-1, 1)]
        shoes = [np.array([[-0.06, 0], [0.06, 0], [0.06, 0.06], [-0.06, 0.06]]) + (k * spread, 0) for k in (-1, 1)]
        torso = np.array([[-0.17 * s, hem], [0.17 * s, hem], [0.21 * s, shoulder], [0.12 * s, shoulder + 0.05],
                          [-0.12 * s, shoulder + 0.05], [-0.21 * s, shoulder]])
        arms = [limb((k * 0.2 * s, shoulder - 0.02), (k * 0.25 * s, hip * 0.9), 0.09 * s, 0.07 * s)
                for k in (-1, 1)]
        parts = [("bottom", legs), ("shoe", shoes), ("top", [torso] + arms)]
        if r.random() < 0.25:
            backpack = np.array([[-0.14, hip + 0.1], [0.14, hip + 0.1], [0.14, shoulder - 0.05],
                                 [-0.14, shoulder - 0.05]]) * (s, 1)
            parts.append(("top", [backpack]))
        head_x = 0.0
    parts += [("skin", [limb((head_x, shoulder), (head_x, shoulder + 0.06), 0.07 * s),
                        ellipse(head_x, height - 0.11 * s, 0.085 * s, 0.115 * s)]),
              ("hair", [ellipse(head_x, height - 0.09 * s, 0.09 * s, 0.09 * s, 10, 0, math.pi)])]
    sc.billboard(base, parts, PERSON, sc.new_group(), sc.new_instance(PERSON))
    sc.casters.append(np.array([base + (dx, dy, 0) for dx in (-0.25, 0.25) for dy in (0, height)]))


def seated_rider(street: Street, base: np.ndarray, seat: tuple[float, float], bar: tuple[float, float],
                 side_view: bool, d: int, motor: bool) -> None:
    """Seated rider on the two-wheeler at ``base`` (seat and handlebar in its billboard metres)."""
    sc, r = street.scene, street.rng
    s = r.uniform(0.92, 1.08)
    g = sc.new_group()
    sx, sy = seat
    head_mat = "helmet" if motor or r.random() < 0.4 else "hair"
    if side_view:
        shoulder = (sx + d * 0.25 * s, sy + 0.52 * s)
        knee = (sx + d * 0.35 * s, sy + (0.02 if motor else 0.05))
        legs = [limb((sx, sy), knee, 0.16 * s, 0.12 * s), limb(knee, (sx + d * 0.2, 0.3), 0.12 * s, 0.1 * s)]
        body = [limb((sx, sy - 0.02), shoulder, 0.26 * s, 0.3 * s), limb(shoulder, bar, 0.09 * s, 0.07 * s)]
        hx, hy = shoulder[0] + d * 0.06, shoulder[1] + 0.16 * s
        parts = [("bottom", legs), ("top", body), ("skin", [ellipse(hx, hy, 0.085 * s, 0.11 * s)]),
                 (head_mat, [ellipse(hx, hy + 0.03 * s, 0.11 * s, 0.1 * s, 10, 0, math.pi)])]
    else:
        top = sy + 0.6 * s
        parts = [("bottom", [limb((-0.14 * s, sy), (-0.2 * s, 0.15), 0.14 * s, 0.11 * s),
                             limb((0.14 * s, sy), (0.2 * s, 0.15), 0.14 * s, 0.11 * s)]),
                 ("top", [np.array([[-0.18 * s, sy - 0.05], [0.18 * s, sy - 0.05], [0.22 * s, top],
                                    [-0.22 * s, top]]),
                          limb((-0.21 * s, top - 0.05), (-0.3 * s, bar[1]), 0.09 * s, 0.07 * s),
                          limb((0.21 * s, top - 0.05), (0.3 * s, bar[1]), 0.09 * s, 0.07 * s)]),
                 ("skin", [ellipse(0, top + 0.14 * s, 0.085 * s, 0.115 * s)]),
                 (head_mat, [ellipse(0, top + 0.17 * s, 0.1 * s, 0.1 * s, 10, 0, math.pi)])]
    # the rider sits a little nearer the camera than the bike's centre plane, so it occludes it
    sc.billboard(base, parts, RIDER, g, sc.new_instance(RIDER), lift=0.08)
