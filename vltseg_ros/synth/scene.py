"""Scene description: Cityscapes labelIds, object frames and shape helpers, and the surface table a scene draws into
(surfaces, decals, billboards, lights and shadow casters)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from vltseg_ros.labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAINID, lookup_table

from .materials import MATERIAL_INDEX
from .raster import NEAR, Camera, Raster, newell

LABEL_ID = {CITYSCAPES_CLASSES[train_id]: label_id for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items()}
ROAD, SIDEWALK, BUILDING, WALL, FENCE = (LABEL_ID[n] for n in ("road", "sidewalk", "building", "wall", "fence"))
POLE, LIGHT, SIGN, VEGETATION = (LABEL_ID[n] for n in ("pole", "traffic light", "traffic sign", "vegetation"))
TERRAIN, SKY, PERSON, RIDER, CAR = (LABEL_ID[n] for n in ("terrain", "sky", "person", "rider", "car"))
TRUCK, BUS, TRAIN = (LABEL_ID[n] for n in ("truck", "bus", "train"))
MOTORCYCLE, BICYCLE = LABEL_ID["motorcycle"], LABEL_ID["bicycle"]
EGO_VEHICLE = 1  # Cityscapes labelId "ego vehicle": not a train class, so it exercises the 255 ignore path
TRAIN_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)


class Pose:
    """Object frame on the ground: local (a forward, y up, b right) -> world, heading measured from +z to +x."""

    def __init__(self, x: float, z: float, heading: float, y: float = 0.0):
        self.x, self.y, self.z = x, y, z
        self.sin, self.cos = math.sin(heading), math.cos(heading)

    def __call__(self, a, y, b) -> np.ndarray:
        """World points of local coordinates (broadcast)."""
        a, y, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(y, float), np.asarray(b, float))
        return np.stack([self.x + a * self.sin + b * self.cos, self.y + y, self.z + a * self.cos - b * self.sin], -1)


def ground_quad(x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> np.ndarray:
    """Horizontal world rectangle [x0, x1] x [z0, z1] at height y."""
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], float)


def side_quad(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Vertical world rectangle in the plane x = const (facades, curbs, fences along the street)."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], float)


def prism(pose: Pose, a: tuple[float, float], b: tuple[float, float], y: tuple[float, float],
          top_a: Optional[tuple[float, float]] = None, top_b: Optional[tuple[float, float]] = None) -> np.ndarray:
    """8 world vertices of a box or frustum: bottom rectangle a x b at y[0], top rectangle top_a x top_b at y[1]."""
    ta, tb = top_a or a, top_b or b
    bottom = [(a[0], b[0]), (a[1], b[0]), (a[1], b[1]), (a[0], b[1])]
    top = [(ta[0], tb[0]), (ta[1], tb[0]), (ta[1], tb[1]), (ta[0], tb[1])]
    pts = [(p, y[0], q) for p, q in bottom] + [(p, y[1], q) for p, q in top]
    return pose(*np.array(pts).T)


# Faces of a prism, each listed bottom-left, bottom-right, top-right, top-left so inset() maps (u, v) on it.
PRISM_FACES = {"back": (0, 3, 7, 4), "front": (2, 1, 5, 6), "left": (1, 0, 4, 5), "right": (3, 2, 6, 7),
               "top": (4, 5, 6, 7), "bottom": (0, 1, 2, 3)}


def inset(quad: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Sub-quad of a face quad by bilinear (u along the bottom edge, v up) coordinates."""
    return on_face(quad, np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]]))


def on_face(quad: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """World points of (u, v) face coordinates (n x 2) on a face quad, as in inset()."""
    u, v = uv[:, :1], uv[:, 1:]
    return (1 - v) * ((1 - u) * quad[0] + u * quad[1]) + v * ((1 - u) * quad[3] + u * quad[2])


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 14, a0: float = 0.0,
            a1: float = 2 * math.pi) -> np.ndarray:
    """Polygon (n x 2) approximating an ellipse or an elliptic sector."""
    t = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], -1)


def limb(p0: Sequence[float], p1: Sequence[float], w0: float, w1: Optional[float] = None) -> np.ndarray:
    """Tapered thick segment from p0 to p1 as a 2-D quad."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9)
    w1 = w0 if w1 is None else w1
    return np.array([p0 + n * w0 / 2, p1 + n * w1 / 2, p1 - n * w1 / 2, p0 - n * w0 / 2])


class Scene:
    """Scene under construction: the surface table plus the rasterised G-buffer, lights and shadow casters."""

    def __init__(self, cam: Camera):
        self.cam = cam
        self.eye = np.array([cam.x, cam.h, 0.0])  # camera centre in world coordinates
        self.raster = Raster(cam)
        self.label: list[int] = [SKY]
        self.inst: list[int] = [SKY]
        self.material: list[int] = [MATERIAL_INDEX["lamp_off"]]  # sky is shaded separately
        self.group: list[int] = [0]
        self.normal: list[np.ndarray] = [cam.back]
        self.lights: list[tuple[np.ndarray, tuple[float, float, float], float]] = []  # position, colour, radius
        self.casters: list[np.ndarray] = []  # world point sets whose ground shadow is their hull
        self.contacts: list[np.ndarray] = []  # vehicle footprints (ambient-occlusion shadow)
        self.wheel_tracks: list[float] = []  # world x of lane wheel paths (snow tracks)
        self._instances: dict[int, int] = {}
        self._groups = 0

    def new_group(self) -> int:
        """New colour group: surfaces of one object with the same material share one colour."""
        self._groups += 1
        return self._groups

    def new_instance(self, label: int) -> int:
        """Next Cityscapes instance id labelId*1000+k for a thing class."""
        k = self._instances.get(label, 0)
        self._instances[label] = k + 1
        return label * 1000 + k

    def _surface(self, label: int, inst: int, material: str, group: int, normal: np.ndarray) -> int:
        self.label.append(label)
        self.inst.append(inst)
        self.material.append(MATERIAL_INDEX[material])
        self.group.append(group)
        self.normal.append(normal / max(float(np.linalg.norm(normal)), 1e-12))
        return len(self.label) - 1

    def poly(self, contours: Sequence[np.ndarray] | np.ndarray, label: int, material: str, group: int,
             inst: Optional[int] = None, union: bool = False) -> Optional[int]:
        """Draw coplanar world contours as one surface; returns its id, or None when out of view."""
        first = contours[0]
        normal = newell(first)
        if normal @ (self.eye - first.mean(0)) < 0:
            normal = -normal
        sid = self._surface(label, label if inst is None else inst, material, group, normal)
        drawn = self.raster.fill(sid, [self.cam.to_camera(c) for c in contours], union=union)
        return sid if drawn else None

    def decal(self, parent: Optional[int], contours: Sequence[np.ndarray], material: str) -> None:
        """Recolour disjoint parts of a drawn surface (windows, markings, lights); labels stay the parent's."""
        if parent is None or len(contours) == 0:
            return
        sid = self._surface(self.label[parent], self.inst[parent], material, self.group[parent], self.normal[parent])
        self.raster.fill(sid, [self.cam.to_camera(c) for c in contours], parent=parent)

    def solid(self, verts: np.ndarray, materials: dict[str, str] | str, label: int, group: int,
              inst: Optional[int] = None,
              faces: dict[str, tuple[int, ...]] = PRISM_FACES) -> dict[str, tuple[int, np.ndarray]]:
        """Draw the camera-facing faces of a convex solid; returns {face name: (sid, world quad)} of drawn faces."""
        centre = verts.mean(0)
        drawn = {}
        for name, idx in faces.items():
            material = materials if isinstance(materials, str) else materials.get(name)
            if material is None:
                continue
            quad = verts[list(idx)]
            normal = newell(quad)
            mid = quad.mean(0)
            if normal @ (mid - centre) < 0:
                normal = -normal
            if normal @ (self.eye - mid) <= 1e-9:
                continue  # back face
            sid = self._surface(label, label if inst is None else inst, material, group, normal)
            if self.raster.fill(sid, [self.cam.to_camera(quad)]):
                drawn[name] = (sid, quad)
        return drawn

    def screen(self, pts: np.ndarray, label: int, material: str) -> None:
        """Draw a pixel-space polygon in front of everything (parts of the recording car)."""
        sid = self._surface(label, label, material, self.new_group(), np.array([0.0, 1.0, -0.3]))
        self.raster.fill_screen(sid, pts, 1.0 / NEAR)

    def billboard(self, anchor: np.ndarray, parts: Sequence[tuple[str, Sequence[np.ndarray]]], label: int,
                  group: int, inst: Optional[int] = None, lift: float = 0.0) -> None:
        """Draw camera-facing 2-D parts (metres around a world ground anchor) back to front.

        Each later part sits 2 mm nearer the camera so it wins the depth test against earlier ones.
        """
        base = self.cam.to_camera(anchor)
        for k, (material, shapes) in enumerate(parts):
            sid = self._surface(label, label if inst is None else inst, material, group, self.cam.back)
            zc = base[2] - lift - 0.002 * k
            self.raster.fill(sid, [np.column_stack([base[0] + s[:, 0], base[1] + s[:, 1], np.full(len(s), zc)])
                                   for s in shapes], union=True)
