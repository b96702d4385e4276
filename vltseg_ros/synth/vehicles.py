"""Vehicles: cars, vans, trucks and buses as frusta with decals, the tram, and bicycles and motorcycles."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .people import seated_rider
from .scene import BICYCLE, BUS, CAR, MOTORCYCLE, TRAIN, TRUCK, Pose, ellipse, ground_quad, inset, limb, prism

if TYPE_CHECKING:
    from .street import Street


def traffic(street: Street) -> None:
    """Parked cars, lane traffic (cars, vans, trucks, buses, motorcycles), cyclists, cross traffic, a tram."""
    r = street.rng
    cam = street.cam
    street.occupied.append((cam.x - 1.2, cam.x + 1.2, -6, 4))  # the ego car
    cross_traffic = street.crossing is not None and r.random() < 0.5
    if r.random() < 0.35 and street.n_left > 0:
        tram(street)
    for side, parked in ((1, street.park_right), (-1, street.park_left)):
        if parked:
            x = street.edge(side) - side * 1.1
            z = r.uniform(2, 10)
            while z < min(street.z_far * 0.7, street.thing_depth):
                kind = r.choice(["car", "van", "pickup", "empty"], p=[0.66, 0.1, 0.06, 0.18])
                length = {"car": r.uniform(3.8, 4.9), "van": r.uniform(4.8, 5.6), "pickup": r.uniform(5.0, 5.8),
                          "empty": r.uniform(3, 10)}[kind]
                if kind != "empty" and not street.in_crossing(z, z + length, 6):
                    if street.free(x - 1, x + 1, z, z + length):
                        vehicle(street, kind, x + r.uniform(-0.15, 0.15), z + length / 2,
                                r.choice([0, math.pi], p=[0.8, 0.2]) + r.normal(0, 0.03), length)
                z += length + r.uniform(0.6, 4)
    lanes = [((k + 0.5) * street.lane_w, 0.0) for k in range(street.n_right)]
    lanes += [(-(k + 0.5) * street.lane_w, math.pi) for k in range(street.n_left)]
    street.scene.wheel_tracks = [x + s * 0.8 for x, _ in lanes for s in (-1, 1)]
    for x, heading in lanes:
        z = r.uniform(5, 25)
        while z < min(street.z_far * 0.85, street.thing_depth):
            kind = r.choice(["car", "van", "truck", "pickup", "bus", "motorcycle"],
                            p=[0.6, 0.08, 0.06, 0.04, 0.08, 0.14])
            length = {"car": r.uniform(3.8, 4.9), "van": r.uniform(4.8, 5.6), "truck": r.uniform(7, 10),
                      "pickup": r.uniform(5.0, 5.8), "bus": r.uniform(10, 13), "motorcycle": 2.1}[kind]
            blocked = cross_traffic and street.in_crossing(z, z + length, 3)
            xx = x + r.normal(0, 0.25)
            if not blocked and street.free(xx - 1.3, xx + 1.3, z, z + length):
                if kind == "motorcycle":
                    two_wheeler(street, np.array([xx, 0, z + 1]), motor=True, heading=heading)
                else:
                    vehicle(street, kind, xx, z + length / 2, heading + r.normal(0, 0.02), length)
            z += length + r.uniform(4, 35)
    # cyclists along the right edge of the carriageway
    for _ in range(int(r.poisson(1.6))):
        x = street.x_right - 2.2 * street.park_right - r.uniform(0.6, 1.0)
        z = r.uniform(5, 45)
        if street.free(x - 0.4, x + 0.4, z - 1, z + 1):
            two_wheeler(street, np.array([x, 0, z]), motor=False, heading=0.0)
    if cross_traffic:
        zc0, zc1 = street.crossing
        mid = (zc0 + zc1) / 2
        for _ in range(int(r.integers(1, 4))):
            heading = r.choice([-math.pi / 2, math.pi / 2])
            z = mid + (1.8 if heading > 0 else -1.8) * r.uniform(0.8, 1.2)
            x = r.uniform(-35, 35)
            kind = r.choice(["car", "car", "van", "bus", "truck"])
            length = {"car": 4.5, "van": 5.2, "bus": 11.0, "truck": 8.0}[kind]
            if street.free(x - length / 2, x + length / 2, z - 1.3, z + 1.3):
                vehicle(street, kind, x, z, heading, length)
        for _ in range(int(r.poisson(0.6))):
            x = r.uniform(-25, 25)
            z = mid + r.uniform(-3, 3)
            if street.free(x - 1, x + 1, z - 0.4, z + 0.4):
                two_wheeler(street, np.array([x, 0, z]), motor=r.random() < 0.4,
                            heading=r.choice([-math.pi / 2, math.pi / 2]))


def vehicle(street: Street, kind: str, x: float, z: float, heading: float, length: float) -> None:
    """Car / van (car), pickup / box truck (truck) or bus as frusta and boxes with decals."""
    sc, r = street.scene, street.rng
    pose = Pose(x, z, heading)
    g = sc.new_group()
    label = {"car": CAR, "van": CAR, "pickup": TRUCK, "truck": TRUCK, "bus": BUS}[kind]
    inst = sc.new_instance(label)
    paint = {"car": "paint_car", "van": "paint_car", "pickup": "paint_truck", "truck": "paint_truck",
             "bus": "paint_bus"}[kind]
    half = length / 2
    if kind == "car":
        w, clear, body = r.uniform(1.7, 1.95), r.uniform(0.18, 0.3), r.uniform(0.85, 1.05)
        roof = body + r.uniform(0.45, 0.7)
        cab = (-half + r.uniform(0.3, 0.9), half - r.uniform(1.1, 1.6))
        top = (cab[0] + r.uniform(0.2, 0.5), cab[1] - r.uniform(0.4, 0.7))
    elif kind == "van":
        w, clear, body = r.uniform(1.9, 2.05), 0.3, r.uniform(1.0, 1.15)
        roof = r.uniform(1.9, 2.4)
        cab, top = (-half + 0.05, half - 0.9), (-half + 0.1, half - 1.4)
    elif kind == "pickup":
        w, clear, body = r.uniform(1.9, 2.0), 0.35, r.uniform(1.05, 1.2)
        roof = r.uniform(1.8, 1.95)
        cab, top = (half - 3.0, half - 1.5), (half - 2.8, half - 1.9)
    elif kind == "truck":
        w, clear, body = r.uniform(2.35, 2.55), 0.45, r.uniform(1.4, 1.6)
        roof = r.uniform(2.6, 3.0)
        cab, top = (half - 2.3, half - 0.1), (half - 2.3, half - 0.4)
    else:
        w, clear, body = 2.55, 0.35, r.uniform(2.9, 3.2)
        roof = body
        cab = top = None
    wheel_r = {"car": 0.32, "van": 0.34, "pickup": 0.38, "truck": 0.5, "bus": 0.5}[kind]
    axles = [-half + max(0.8, length * 0.18), half - max(0.8, length * 0.2)]
    # wheels: discs on each side plus a tread quad that fills the gap under the bumpers
    for a in axles:
        for s in (-1, 1):
            tread = pose([a, a, a, a], [0, 0, 2 * wheel_r * 0.9, 2 * wheel_r * 0.9],
                         [s * (w / 2 - 0.25), s * w / 2, s * w / 2, s * (w / 2 - 0.25)])
            sc.poly([tread], label, "tire", g, inst)
    body_faces = sc.solid(prism(pose, (-half, half), (-w / 2, w / 2), (clear, body)), paint, label, g, inst)
    for s, name in ((-1, "left"), (1, "right")):
        if name in body_faces:
            for a in axles:
                disc = ellipse(a, wheel_r, wheel_r, wheel_r, 12)
                sid = sc.poly([pose(disc[:, 0], disc[:, 1], s * (w / 2 + 0.02))], label, "tire", g, inst)
                hub = ellipse(a, wheel_r, wheel_r * 0.55, wheel_r * 0.55, 10)
                sc.decal(sid, [pose(hub[:, 0], hub[:, 1], s * (w / 2 + 0.02))], "chrome")
    if kind == "truck":
        box = prism(pose, (-half, half - 2.5), (-w / 2 - 0.03, w / 2 + 0.03), (body, r.uniform(3.2, 3.8)))
        cargo = sc.solid(box, paint, label, g, inst)
        if "back" in cargo:
            sc.decal(cargo["back"][0], [inset(cargo["back"][1], 0.495, 0.505, 0.02, 0.98)], "trim")
    if cab is not None:
        cab_faces = sc.solid(prism(pose, cab, (-w / 2 + 0.08, w / 2 - 0.08), (body, roof), top,
                                   (-w / 2 + 0.2, w / 2 - 0.2)), paint, label, g, inst)
        glass = []
        for name, (sid, quad) in cab_faces.items():
            if name in ("left", "right"):
                glass.append((sid, [inset(quad, 0.06, 0.47, 0.12, 0.85), inset(quad, 0.53, 0.94, 0.12, 0.85)]))
            elif name in ("front", "back"):
                glass.append((sid, [inset(quad, 0.06, 0.94, 0.1, 0.88)]))
        for sid, pieces in glass:
            sc.decal(sid, pieces, "vehicle_glass")
    if kind == "bus":
        for name in ("left", "right", "front", "back"):
            if name not in body_faces:
                continue
            sid, quad = body_faces[name]
            if name in ("left", "right"):
                n = max(int(length / 1.6), 2)
                panes = [inset(quad, (i + 0.08) / n, (i + 0.92) / n, 0.4, 0.85) for i in range(n)]
            else:
                panes = [inset(quad, 0.05, 0.95, 0.35 if name == "front" else 0.5, 0.86)]
            sc.decal(sid, panes, "vehicle_glass")
            if name == "front":
                sc.decal(sid, [inset(quad, 0.15, 0.85, 0.89, 0.97)], "display")
    for name, lamp, (v0, v1) in (("back", "taillight", (0.45, 0.75)), ("front", "headlight", (0.45, 0.7))):
        if name not in body_faces:
            continue
        sid, quad = body_faces[name]
        lamps = [inset(quad, 0.04, 0.2, v0, v1), inset(quad, 0.8, 0.96, v0, v1)]
        if kind == "bus":
            lamps = [inset(quad, 0.04, 0.14, 0.08, 0.2), inset(quad, 0.86, 0.96, 0.08, 0.2)]
        sc.decal(sid, [inset(quad, 0.0, 1.0, 0.0, 0.16 if kind != "bus" else 0.06)], "trim")
        sc.decal(sid, lamps, lamp)
        sc.decal(sid, [inset(quad, 0.38, 0.62, 0.2, 0.38 if kind != "bus" else 0.26)], "plate")
        if name == "front":
            sc.lights.append((pose(half + 5, 0.6, 0), (1.2, 1.1, 0.95), 5.0))  # headlight pool on the road
    sc.casters.append(prism(pose, (-half, half), (-w / 2, w / 2), (0, roof)))
    sc.contacts.append(prism(pose, (-half - 0.25, half + 0.25), (-w / 2 - 0.25, w / 2 + 0.25), (0, 0))[:4])


def tram(street: Street) -> None:
    """Tram (Cityscapes "train") in a left lane, with rails in the road."""
    sc, r = street.scene, street.rng
    x = -0.5 * street.lane_w
    heading = r.choice([0.0, math.pi])
    length = r.uniform(24, 34)
    z = r.uniform(12, 50)
    if not street.free(x - 1.5, x + 1.5, z - length / 2, z + length / 2):
        return
    rails = [ground_quad(xr - 0.04, xr + 0.04, -5, street.z_far) for xr in (x - 0.72, x + 0.72)]
    sc.decal(street.road_sid, rails, "rail")
    pose = Pose(x, z, heading)
    inst = sc.new_instance(TRAIN)
    g = sc.new_group()
    faces = sc.solid(prism(pose, (-length / 2, length / 2), (-1.2, 1.2), (0.35, 3.4)), "paint_tram", TRAIN, g,
                     inst)
    for name, (sid, quad) in faces.items():
        if name in ("left", "right"):
            n = int(length / 1.8)
            sc.decal(sid, [inset(quad, (i + 0.1) / n, (i + 0.9) / n, 0.35, 0.8) for i in range(n)],
                     "vehicle_glass")
            sc.decal(sid, [inset(quad, 0, 1, 0, 0.1)], "trim")
        elif name in ("front", "back"):
            sc.decal(sid, [inset(quad, 0.08, 0.92, 0.4, 0.85)], "vehicle_glass")
            sc.decal(sid, [inset(quad, 0.2, 0.8, 0.88, 0.96)], "display")
            sc.decal(sid, [inset(quad, 0.06, 0.18, 0.12, 0.2), inset(quad, 0.82, 0.94, 0.12, 0.2)],
                     "headlight" if name == "front" else "taillight")
    pant = pose([0.0, 0.0, 0.0, 0.0], [3.4, 4.3, 4.35, 3.4], [-0.05, -0.6, -0.55, 0.0])
    sc.poly([pant], TRAIN, "trim", g, inst)
    sc.casters.append(prism(pose, (-length / 2, length / 2), (-1.2, 1.2), (0, 3.4)))
    sc.contacts.append(prism(pose, (-length / 2, length / 2), (-1.4, 1.4), (0, 0))[:4])


def two_wheeler(street: Street, base: np.ndarray, motor: bool, heading: float,
                rider: bool = True) -> None:
    """Bicycle or motorcycle, with or without a rider; side view when crossing, else rear / front view."""
    sc = street.scene
    label = MOTORCYCLE if motor else BICYCLE
    g = sc.new_group()
    to_cam = street.cam.to_camera(np.array([[0.0, 0, 0], [math.sin(heading), 0, math.cos(heading)]]))
    side_view = abs(to_cam[1, 0] - to_cam[0, 0]) > 0.5
    d = 1 if to_cam[1, 0] > to_cam[0, 0] else -1  # +1: the front points right in the image
    parts: list[tuple[str, list[np.ndarray]]]
    if side_view:
        wr = 0.31 if motor else 0.34
        wheels = [d * (0.7 if motor else 0.52), -d * (0.7 if motor else 0.52)]  # front, rear
        if motor:
            body = np.array([[-0.55, 0.4], [0.45, 0.4], [0.55, 0.72], [0.35, 0.95], [0.0, 0.88], [-0.35, 0.85],
                             [-0.72, 0.78]]) * (d, 1)
            hubs = [ellipse(x, wr, wr * 0.55, wr * 0.55, 10) for x in wheels]
            fork = limb((d * 0.45, 0.95), (wheels[0], wr), 0.06)
            exhaust = limb((-d * 0.1, 0.35), (-d * 0.8, 0.45), 0.08)
            parts = [("tire", [ellipse(x, wr, wr, wr, 14) for x in wheels]), ("chrome", hubs + [fork, exhaust]),
                     ("moto", [body])]
            seat, bar = (-d * 0.2, 0.9), (d * 0.4, 1.05)
        else:
            # each tyre is one even-odd contour: the outer circle, then the inner one reversed
            tyres = [np.concatenate([ellipse(x, wr, wr, wr, 16), ellipse(x, wr, wr - 0.05, wr - 0.05, 16)[::-1]])
                     for x in wheels]
            bb, seat_t, head_t, head_b = (0.0, 0.3), (-d * 0.12, 0.85), (d * 0.4, 0.85), (d * 0.45, 0.7)
            front, rear = (wheels[0], wr), (wheels[1], wr)
            joints = ((bb, seat_t), (seat_t, head_t), (bb, head_b), (rear, bb), (rear, seat_t), (head_b, front),
                      (head_t, (d * 0.38, 1.0)), ((d * 0.3, 1.0), (d * 0.45, 1.0)))
            saddle = limb((-d * 0.2, 0.9), (-d * 0.02, 0.9), 0.05)
            parts = [("tire", tyres), ("frame", [limb(a, b, 0.04) for a, b in joints] + [saddle])]
            seat, bar = (-d * 0.12, 0.92), (d * 0.38, 1.0)
    else:
        w = 0.16 if motor else 0.05
        h = 0.62 if motor else 0.68
        parts = [("tire", [np.array([[-w / 2, 0], [w / 2, 0], [w / 2, h], [-w / 2, h]])])]
        if motor:
            parts.append(("moto", [np.array([[-0.24, 0.4], [0.24, 0.4], [0.2, 0.95], [-0.2, 0.95]])]))
            parts.append(("chrome", [limb((-0.4, 1.08), (0.4, 1.08), 0.04)]))
        else:
            parts.append(("frame", [limb((-0.28, 1.0), (0.28, 1.0), 0.03), limb((0, 0.7), (0, 0.92), 0.04),
                                    np.array([[-0.07, 0.9], [0.07, 0.9], [0.07, 0.95], [-0.07, 0.95]])]))
        seat, bar = (0.0, 0.95 if motor else 0.92), (0.0, 1.05)
    sc.billboard(base, parts, label, g, sc.new_instance(label))
    if rider:
        seated_rider(street, base, seat, bar, side_view, d, motor)
    sc.casters.append(np.array([base + (dx, dy, 0) for dx in (-0.8, 0.8) for dy in (0, 1.6)]))


def parked_bicycles(street: Street) -> None:
    """Bicycles without riders on the sidewalks, seen from the side."""
    r = street.rng
    for _ in range(int(r.poisson(1.0))):
        side = r.choice([-1, 1])
        x = street.building_line[side] - side * r.uniform(0.4, 1.0)
        two_wheeler(street, np.array([x, street.curb, r.uniform(3, 40)]), motor=False,
                    heading=r.choice([-math.pi / 2, math.pi / 2]), rider=False)
