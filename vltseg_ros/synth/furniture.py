"""Poles and what they carry: street lamps, traffic signs and traffic lights."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .scene import LIGHT, POLE, SIGN, Pose, ellipse, limb, on_face, prism
from .vegetation import tree

if TYPE_CHECKING:
    from .street import Street


def street_furniture(street: Street, side: int) -> None:
    """Lamps, signs and traffic lights on one side, a tree row (sometimes), and traffic lights at the crossing."""
    r = street.rng
    x = street.edge(side) + side * (street.verge[side] / 2 if street.verge[side] else r.uniform(0.4, 0.7))
    tree_row = r.random() < (0.45 if street.urban else 0.75)
    tree_gap = r.uniform(6, 14)
    furniture = (lamp, sign, light)
    for z0, z1 in street.segments(r.uniform(1, 8), street.z_far * 0.9):
        for z in np.arange(z0, z1 - 1, r.uniform(10, 28)):
            furniture[r.choice(3, p=[0.45, 0.4, 0.15])](street, side, x, z + r.uniform(-2, 2))
        if tree_row:
            for z in np.arange(z0 + r.uniform(2, 6), z1 - 1, tree_gap):
                tree(street, np.array([x + side * r.uniform(0.3, 1.2), street.curb, z]))
    if street.crossing is not None:
        light(street, side, x, street.crossing[0] - 1.0, overhead=side > 0 and r.random() < 0.6)
        light(street, side, x, street.crossing[1] + 1.0, facing=False)


def pole(street: Street, x: float, z: float, height: float, width: float) -> tuple[np.ndarray, int]:
    """Pole standing on the sidewalk; returns its base point and colour group."""
    sc = street.scene
    g = sc.new_group()
    base = np.array([x, street.curb, z])
    sc.billboard(base, [("pole", [np.array([[-width / 2, 0], [width / 2, 0], [width * 0.4, height],
                                            [-width * 0.4, height]])])], POLE, g)
    sc.casters.append(np.array([base, base + (0, height, 0), base + (0.05, 0, 0), base + (0.05, height, 0)]))
    return base, g


def lamp(street: Street, side: int, x: float, z: float) -> None:
    """Street lamp: pole, arm over the road and a lamp head that glows at night."""
    sc, r = street.scene, street.rng
    h = r.uniform(6, 9)
    base, g = pole(street, x, z, h, r.uniform(0.14, 0.24))
    reach = r.uniform(1.0, 3.0)
    top = base + (0, h, 0)
    arm = np.array([top, top + (-side * reach, 0.3, 0), top + (-side * reach, 0.42, 0), top + (0, 0.12, 0)])
    sc.poly([arm], POLE, "pole", g)
    head = prism(Pose(top[0] - side * reach, top[2], 0, y=top[1] + 0.1), (-0.25, 0.25), (-0.5, 0.5), (0, 0.22))
    sc.solid(head, {"back": "pole", "left": "pole", "right": "pole", "bottom": "lamp"}, POLE, g)
    sc.lights.append((top + (-side * reach, 0, 0), (1.0, 0.78, 0.5), 9.0))
    if r.random() < 0.3:
        sign_plate(street, base + (0, r.uniform(2.2, 3.0), -0.05), g)


def sign(street: Street, side: int, x: float, z: float) -> None:
    """Sign pole with one or two plates."""
    r = street.rng
    h = r.uniform(2.4, 3.6)
    base, g = pole(street, x, z, h, r.uniform(0.06, 0.1))
    for k in range(int(r.integers(1, 3))):
        sign_plate(street, base + (0, h - 0.35 - 0.8 * k, -0.04), g)


def sign_plate(street: Street, centre: np.ndarray, pole_group: int) -> None:
    """A sign facing the camera (or its grey back): circle, triangle, square, diamond, octagon or board."""
    sc, r = street.scene, street.rng
    shape = r.choice(["circle", "triangle", "square", "diamond", "octagon", "board"])
    s = r.uniform(0.3, 0.45)
    if shape == "circle":
        outline = ellipse(0, 0, s, s, 16)
    elif shape == "triangle":
        outline = np.array([[-s * 1.1, -s * 0.6], [s * 1.1, -s * 0.6], [0, s * 1.3]])
    elif shape == "square":
        outline = np.array([[-s, -s], [s, -s], [s, s], [-s, s]]) * 0.9
    elif shape == "diamond":
        outline = np.array([[0, -s], [s, 0], [0, s], [-s, 0]]) * 1.2
    elif shape == "octagon":
        outline = ellipse(0, 0, s, s, 8, math.pi / 8, math.pi / 8 + 2 * math.pi)
    else:
        outline = np.array([[-2.2 * s, -s], [2.2 * s, -s], [2.2 * s, s], [-2.2 * s, s]])

    def world(pts: np.ndarray) -> np.ndarray:
        return np.column_stack([centre[0] + pts[:, 0], centre[1] + pts[:, 1], np.full(len(pts), centre[2])])

    if r.random() < 0.2:
        sc.poly([world(outline)], SIGN, "sign_back", pole_group)
        return
    scheme = {"circle": ("sign_red", "sign_white"), "triangle": ("sign_red", "sign_white"),
              "square": ("sign_blue", "sign_white"), "diamond": ("sign_white", "sign_yellow"),
              "octagon": ("sign_red", "sign_white"), "board": (r.choice(["sign_blue", "sign_green"]),
                                                               "sign_white")}[shape]
    if shape == "circle" and r.random() < 0.4:
        scheme = ("sign_blue", "sign_white")
    sid = sc.poly([world(outline)], SIGN, scheme[0], sc.new_group())
    if shape == "board":  # lines of text
        inner = [np.array([[-1.8, y - 0.12], [1.4, y - 0.12], [1.4, y + 0.12], [-1.8, y + 0.12]]) * s
                 for y in (-0.4, 0.1, 0.55)]
    elif shape == "square":  # a bar ("one way", "parking")
        inner = [limb((0, -0.5 * s), (0, 0.55 * s), 0.35 * s)]
    else:
        inner = [outline * 0.72]
    sc.decal(sid, [world(p) for p in inner], scheme[1])


def light(street: Street, side: int, x: float, z: float, overhead: bool = False,
          facing: bool = True) -> None:
    """Traffic light on a pole (optionally on a mast arm over the road); seen from the back if not facing."""
    sc, r = street.scene, street.rng
    h = r.uniform(2.4, 3.2) if not overhead else r.uniform(5.5, 6.5)
    base, g = pole(street, x, z, h + (0 if overhead else 0.9), r.uniform(0.1, 0.18))
    heads = [base + (0, h, 0)]
    if overhead:
        reach = r.uniform(3, min(7, abs(street.edge(side)) + 2))
        top = base + (0, h + 0.6, 0)
        sc.poly([np.array([top, top + (-side * reach, 0, 0), top + (-side * reach, 0.15, 0), top + (0, 0.15, 0)])],
                POLE, "pole", g)
        heads = [base + (-side * reach * 0.9, h - 0.5, 0), base + (-side * reach * 0.45, h - 0.5, 0)]
    lit = r.choice(["lamp_red", "lamp_amber", "lamp_green"], p=[0.5, 0.15, 0.35])
    for head in heads:
        tg = sc.new_group()
        w, hh = r.uniform(0.28, 0.36), r.uniform(0.8, 1.0)
        verts = prism(Pose(head[0], head[2], 0, y=head[1]), (-0.3, 0.0), (-w / 2, w / 2), (0, hh))
        faces = sc.solid(verts, "housing", LIGHT, tg)
        if facing and "back" in faces:
            sid, quad = faces["back"]
            backplate = np.array([head + (-w * 0.9, -0.1, -0.2), head + (w * 0.9, -0.1, -0.2),
                                  head + (w * 0.9, hh + 0.1, -0.2), head + (-w * 0.9, hh + 0.1, -0.2)])
            sc.poly([backplate], LIGHT, "housing", tg)
            for k, colour in enumerate(("lamp_green", "lamp_amber", "lamp_red")):
                pts = on_face(quad, ellipse(0.5, (k + 0.5) / 3, 0.11 / w, 0.11 / hh, 12))
                sc.decal(sid, [pts], colour if colour == lit else "lamp_off")
