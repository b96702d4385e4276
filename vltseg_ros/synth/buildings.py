"""Beside the street: buildings, the backdrop at the street's far end, and walls, fences and hedges in gaps."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .scene import BUILDING, FENCE, VEGETATION, WALL, Pose, inset, prism, side_quad
from .vegetation import tree

if TYPE_CHECKING:
    from .street import Street


def backdrop(street: Street) -> None:
    """Far end of the street (and of the cross street): hides the void beyond z_far."""
    sc, r = street.scene, street.rng
    g = sc.new_group()
    z = street.z_far + r.uniform(0, 30)
    x = -400.0
    while x < 400:
        w = r.uniform(10, 40)
        if r.random() < 0.7:
            h = r.uniform(8, 45) if street.urban else r.uniform(5, 14)
            sc.poly([np.array([[x, 0, z], [x + w, 0, z], [x + w, h, z], [x, h, z]])], BUILDING, "far_building",
                    g)
        x += w
    tops = np.cumsum(r.normal(0, 0.8, 60)) * 0.6 + r.uniform(8, 16)
    xs = np.linspace(-600, 600, 60)
    band = np.concatenate([np.stack([xs, np.maximum(tops, 4), np.full(60, z + 40)], -1),
                           [[600, 0, z + 40], [-600, 0, z + 40]]])
    sc.poly([band], VEGETATION, "far_trees", g)
    if street.crossing is not None:
        zc0, zc1 = street.crossing
        for side in (-1, 1):
            x = side * r.uniform(50, 110)
            h = r.uniform(10, 30)
            sc.poly([side_quad(x, zc0 - 12, zc1 + 12, 0, h)], BUILDING, "far_building", sc.new_group())


def frontage(street: Street, side: int) -> None:
    """Row of buildings with gaps (vegetation, walls, fences, open ground) along one side."""
    r = street.rng
    xb = street.building_line[side]
    for z0, z1 in street.segments(r.uniform(-16, -4), street.z_far):
        if street.crossing is not None and z1 <= street.crossing[0]:
            z1 -= 3.0  # keep the corner sidewalk free
        if street.crossing is not None and z0 >= street.crossing[1]:
            z0 += 3.0
        z = z0
        while z < z1 - 2:
            if r.random() < (0.72 if street.urban else 0.5):
                length = min(r.uniform(6, 26) if street.urban else r.uniform(8, 15), z1 - z)
                building(street, side, xb + side * r.uniform(0, 0.6 if street.urban else 3), z, z + length)
                z += length + (0.0 if street.urban and r.random() < 0.6 else r.uniform(1, 6))
            else:
                length = min(r.uniform(4, 14), z1 - z)
                gap(street, side, xb, z, z + length)
                z += length
        if street.urban and r.random() < 0.8:
            back_row(street, side, xb + side * r.uniform(14, 28), z0, z1)


def building(street: Street, side: int, x: float, z0: float, z1: float) -> None:
    """Block with windows (some lit), doors and, outside the city, a gabled roof; its facade is at ``x``."""
    sc, r = street.scene, street.rng
    g = sc.new_group()
    depth = r.uniform(8, 18)
    height = r.uniform(9, 32) if street.urban else r.uniform(4.5, 8)
    xs = (x, x + side * depth)
    pose = Pose(0, 0, 0, y=street.curb)
    # at heading 0 a Pose maps (a, y, b) to (x=b, y, z=a): the prism's a-range is z and its b-range x
    verts = prism(pose, (z0, z1), (min(xs), max(xs)), (0, height))
    material = r.choice(["plaster", "brick", "concrete"], p=[0.5, 0.25, 0.25])
    faces = sc.solid(verts, material, BUILDING, g)
    if not street.urban and r.random() < 0.8:
        ridge = x + side * depth / 2
        top = height + street.curb
        apex = top + r.uniform(2, 4)
        roof = np.array([[x, top, z0], [xs[1], top, z0], [xs[1], top, z1], [x, top, z1], [ridge, apex, z0],
                         [ridge, apex, z1]])
        sc.solid(roof, "roof", BUILDING, g, faces={"near": (0, 3, 5, 4), "far": (1, 2, 5, 4),
                                                   "gable0": (0, 1, 4), "gable1": (3, 2, 5)})
    floor_h = r.uniform(2.8, 3.6)
    spacing = r.uniform(2.0, 3.5)
    win_w, win_h = r.uniform(0.35, 0.7), r.uniform(0.45, 0.65)
    lit_fraction = r.uniform(0.1, 0.5)
    for name in ("left", "right", "back"):
        if name not in faces:
            continue
        sid, quad = faces[name]
        length = float(np.linalg.norm(quad[1] - quad[0]))
        cols = max(int(length / spacing), 1)
        rows = max(int((height - 1.0) / floor_h), 1)
        windows, lit, doors = [], [], []
        for i in range(cols):
            u = (i + 0.5) / cols
            du = win_w * spacing / length / 2
            if r.random() < 0.25:
                doors.append(inset(quad, u - du * 1.2, u + du * 1.2, 0.0, min(2.3 / height, 0.9)))
            for j in range(rows):
                v = (j * floor_h + floor_h * 0.35 + 0.3) / height
                dv = win_h * floor_h / height / 2
                if v + dv < 0.97:
                    (lit if r.random() < lit_fraction else windows).append(inset(quad, u - du, u + du, v - dv,
                                                                                 v + dv))
        sc.decal(sid, windows, "glass")
        sc.decal(sid, lit, "glass_lit")
        sc.decal(sid, doors, "door")
    sc.casters.append(verts)


def back_row(street: Street, side: int, x: float, z0: float, z1: float) -> None:
    """Taller second-row blocks seen through gaps and above low buildings."""
    sc, r = street.scene, street.rng
    z = z0
    while z < z1:
        length = r.uniform(15, 40)
        verts = prism(Pose(0, 0, 0), (z, min(z + length, z1)), tuple(sorted((x, x + side * 20))),
                      (0, r.uniform(15, 40)))
        sc.solid(verts, r.choice(["plaster", "concrete", "brick"]), BUILDING, sc.new_group())
        z += length + r.uniform(0, 6)


def gap(street: Street, side: int, xb: float, z0: float, z1: float) -> None:
    """Space between buildings: hedge, wall, fence, trees or open ground (the terrain plane)."""
    sc, r = street.scene, street.rng
    kind = r.choice(["hedge", "wall", "fence", "trees", "open"], p=[0.2, 0.25, 0.25, 0.2, 0.1])
    y = street.curb
    x = xb + side * r.uniform(0, 0.5)
    if kind == "hedge":
        h = r.uniform(0.8, 1.8)
        verts = prism(Pose(0, 0, 0, y=y), (z0, z1), tuple(sorted((x, x + side * r.uniform(0.6, 1.2)))), (0, h))
        sc.solid(verts, "foliage", VEGETATION, sc.new_group())
    elif kind == "wall":
        wall(street, x, z0, z1, r.uniform(1.0, 3.2))
    elif kind == "fence":
        fence(street, x, z0, z1, r.uniform(1.0, 2.2))
    if kind in ("trees", "hedge", "open") or r.random() < 0.4:
        for z in np.arange(z0 + r.uniform(0.5, 2), z1, r.uniform(3, 7)):
            tree(street, np.array([x + side * r.uniform(1.5, 6), y, z]))


def wall(street: Street, x: float, z0: float, z1: float, h: float) -> None:
    """Stone or concrete wall ``h`` high along z at ``x``."""
    verts = prism(Pose(0, 0, 0, y=street.curb), (z0, z1), tuple(sorted((x, x + 0.3))), (0, h))
    street.scene.solid(verts, "stone" if street.rng.random() < 0.6 else "concrete", WALL, street.scene.new_group())


def fence(street: Street, x: float, z0: float, z1: float, h: float) -> None:
    """Fence along z at x: posts and rails, wooden slats or a wire mesh (see-through, so labels have holes)."""
    sc, r = street.scene, street.rng
    y = street.curb
    kind = r.choice(["rails", "slats", "mesh"])
    pieces = [side_quad(x, z, z + 0.1, y, y + h) for z in np.arange(z0, z1, r.uniform(1.8, 3.0))]
    if kind == "rails":
        pieces += [side_quad(x, z0, z1, y + yy, y + yy + 0.08)
                   for yy in np.linspace(0.3, h - 0.1, int(r.integers(2, 4)))]
        material = "fence_wood" if r.random() < 0.5 else "fence_metal"
    elif kind == "slats":
        pieces += [side_quad(x, z, z + 0.1, y + 0.05, y + h) for z in np.arange(z0, z1, r.uniform(0.13, 0.2))]
        pieces += [side_quad(x, z0, z1, y + h - 0.1, y + h)]
        material = "fence_wood"
    else:
        step = r.uniform(0.15, 0.3)
        pieces += [side_quad(x, z, z + 0.025, y, y + h) for z in np.arange(z0, z1, step)]
        pieces += [side_quad(x, z0, z1, y + yy, y + yy + 0.025) for yy in np.arange(0, h, step)]
        pieces += [side_quad(x, z0, z1, y + h - 0.06, y + h)]
        material = "fence_metal"
    sc.poly(pieces, FENCE, material, sc.new_group(), union=True)
