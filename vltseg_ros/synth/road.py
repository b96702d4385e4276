"""The ground: terrain, road, curbs, sidewalks, the cross street and road markings."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from .scene import ROAD, SIDEWALK, TERRAIN, ground_quad, side_quad

if TYPE_CHECKING:
    from .street import Street


def ground(street: Street) -> None:
    """Terrain, the road, curbs, verges, sidewalks and yards on both sides, and the cross street."""
    sc, r = street.scene, street.rng
    g = sc.new_group()
    z_end = street.z_far + 60
    # terrain under everything, slightly lower so the road and sidewalks win the depth test
    sc.poly([ground_quad(-700, 700, -5, 2000, -0.05)], TERRAIN, "grass" if r.random() < 0.7 else "soil", g)
    road = sc.poly([ground_quad(street.x_left, street.x_right, -5, z_end)], ROAD, "asphalt", g)
    street.road_sid = road
    for side in (-1, 1):
        x = street.edge(side)
        widths = [(street.verge[side], TERRAIN, "grass"), (street.sidewalk[side], SIDEWALK, "pavement"),
                  (street.yard[side], TERRAIN, "grass" if r.random() < 0.8 else "soil")]
        for z0, z1 in street.segments(-5, z_end):
            sc.poly([side_quad(x, z0, z1, 0, street.curb)], SIDEWALK, "curb", g)
            xs = x
            for w, label, material in widths:
                if w > 0:
                    sc.poly([ground_quad(xs, xs + side * w, z0, z1, street.curb)], label, material, g)
                xs += side * w
        street.building_line[side] = x + side * sum(w for w, _, _ in widths)
    if street.crossing is not None:
        zc0, zc1 = street.crossing
        for side in (-1, 1):
            x = street.edge(side)
            sc.poly([ground_quad(x, side * 400, zc0, zc1)], ROAD, "asphalt", g)
            w = r.uniform(2.0, 4.0)
            for z0, z1 in ((zc0 - w, zc0), (zc1, zc1 + w)):
                sc.poly([ground_quad(street.building_line[side], side * 400, z0, z1, street.curb)], SIDEWALK,
                        "pavement", g)
            sc.poly([np.array([[x, 0, zc1], [x, street.curb, zc1], [side * 400, street.curb, zc1],
                               [side * 400, 0, zc1]])], SIDEWALK, "curb", g)
    markings(street, road)


def markings(street: Street, road: Optional[int]) -> None:
    """Lane dashes, edge and centre lines and zebra crossings as decals on the road surface ``road``."""
    sc, r = street.scene, street.rng
    dashes, solid, yellow = [], [], []
    dash, period = r.uniform(2.0, 4.0), r.uniform(6.0, 12.0)
    edge_lines = r.random() < 0.6
    w = 0.12
    z_end = street.z_far + 60
    for z0, z1 in street.segments(-5, z_end):
        starts = np.arange(z0 - r.uniform(0, period), z1, period)
        dividers = [k * street.lane_w for k in range(1, street.n_right)] + [-k * street.lane_w
                                                                            for k in range(1, street.n_left)]
        dashes += [ground_quad(x - w, x + w, s, s + dash) for x in dividers for s in starts]
        if street.n_left > 0:
            yellow += [ground_quad(x - 0.06, x + 0.06, z0, z1) for x in (-0.12, 0.12)]
        for x, parking in ((street.n_right * street.lane_w, street.park_right),
                           (-street.n_left * street.lane_w, street.park_left)):
            if parking or edge_lines:
                solid.append(ground_quad(x - w, x + w, z0, z1))
    if street.crossing is not None:
        zc0, zc1 = street.crossing
        stripe = r.uniform(0.4, 0.6)
        xs = np.arange(street.x_left + 0.3, street.x_right - 0.3, 2 * stripe)
        for z0 in (zc0 - 3.6, zc1 + 0.6):
            solid += [ground_quad(x, x + stripe, z0, z0 + 3.0) for x in xs]
        solid.append(ground_quad(0.2, street.x_right - 2.2 * street.park_right, zc0 - 5.0, zc0 - 4.6))
    sc.decal(road, dashes + solid, "paint")
    sc.decal(road, yellow, "paint_yellow" if r.random() < 0.5 else "paint")
