"""Procedural street-scene benchmark: a small, offline GTA5 -> Cityscapes / ACDC analogue (data.md §7).

A scene is built from the seed alone (camera, road, buildings, poles, vegetation, people, vehicles) as planar 3-D
polygons in metres and rasterised with a z-buffer into a surface-id map. Labels, instances and boxes are read off
the surface table, so they are exact and identical in every style and condition. Appearance is a second pass over
that G-buffer:

- ``synthetic``: flat colour per surface (class colour jittered, kept off the Cityscapes palette), flat sky, no
  textures, shadows or noise (the GTA5-like source domain);
- ``realistic``: procedural textures in world coordinates, sun light with cast shadows, contact shadows under
  vehicles, gradient sky with clouds, stronger colour variation, auto exposure and sensor noise;
- conditions ``fog`` (depth-based exponential blend), ``night`` (street lamps, head/tail lights, lit windows,
  glow), ``rain`` (wet reflections, streaks, haze) and ``snow`` (snow cover, flakes) change appearance only.

Frames are written in the Cityscapes layout (``leftImg8bit`` / ``gtFine`` with labelIds, labelTrainIds and 16-bit
instanceIds) so the dataset code reads real and synthetic data alike.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from vltseg_ros.cli import parse_size
from vltseg_ros.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_PALETTE,
    lookup_table,
)

STYLES = ("synthetic", "realistic")
CONDITIONS = ("clear", "fog", "night", "rain", "snow")

_LABEL = {CITYSCAPES_CLASSES[train_id]: label_id for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items()}
_ROAD, _SIDEWALK, _BUILDING, _WALL, _FENCE = (_LABEL[n] for n in ("road", "sidewalk", "building", "wall", "fence"))
_POLE, _LIGHT, _SIGN, _VEGETATION = (_LABEL[n] for n in ("pole", "traffic light", "traffic sign", "vegetation"))
_TERRAIN, _SKY, _PERSON, _RIDER, _CAR = (_LABEL[n] for n in ("terrain", "sky", "person", "rider", "car"))
_TRUCK, _BUS, _TRAIN = (_LABEL[n] for n in ("truck", "bus", "train"))
_MOTORCYCLE, _BICYCLE = _LABEL["motorcycle"], _LABEL["bicycle"]
_EGO_VEHICLE = 1  # Cityscapes labelId "ego vehicle": not a train class, so it exercises the 255 ignore path
_TRAIN_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)
_PALETTE = np.asarray(CITYSCAPES_PALETTE, np.float32)

MIN_BOX_SIDE = 8
"""The small-box convention: a thing instance whose tight box is narrower or shorter than this many pixels gets no
box. It is written like a Cityscapes crowd region (its instanceIds pixels hold the bare labelId; its labelIds and
trainIds are unchanged), so every reader of the written frames sees the same boxes: training, offline evaluation,
replay bags and the online evaluator. Such objects (half of all instances at 256x512: distant people, vehicles
behind others) are a few pixels of stride-4 features and no anchor can match them."""

_NEAR = 0.3  # near clipping plane (m); the ego hood is screen-space and needs none
_SCENE_STREAM, _STYLE_STREAM, _CONDITION_STREAM = 0, 1, 2


@dataclass
class Frame:
    """One rendered frame: RGB image, Cityscapes labelIds / trainIds / instanceIds and thing boxes."""

    image: np.ndarray  # HxWx3 uint8 RGB
    label_ids: np.ndarray  # HxW uint8 Cityscapes labelIds (0 = unlabeled, 1 = ego vehicle)
    train_ids: np.ndarray  # HxW uint8 trainIds 0..18, 255 = ignore; equals lookup_table(...)[label_ids]
    instance_ids: np.ndarray  # HxW int32: labelId*1000+k for boxed thing instances, labelId elsewhere
    boxes: np.ndarray  # Nx4 float32 xyxy pixel-edge boxes [min col, min row, max col + 1, max row + 1] (MIN_BOX_SIDE)
    box_train_ids: np.ndarray  # N int64 trainIds of the boxes


# ----------------------------------------------------------------------------------------------------------------
# Camera and z-buffer rasteriser


class _Camera:
    """Pinhole camera at (x, h, 0) in world metres (x right, y up, z along the road), yawed about y."""

    def __init__(self, height: int, width: int, f: float, cx: float, cy: float, x: float, h: float, yaw: float):
        self.height, self.width, self.f, self.cx, self.cy = height, width, f, cx, cy
        self.x, self.h = x, h
        self.sin, self.cos = math.sin(yaw), math.cos(yaw)

    def to_camera(self, p: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> camera coordinates (x right, y up, z forward)."""
        dx, dy, dz = p[..., 0] - self.x, p[..., 1] - self.h, p[..., 2]
        return np.stack([self.cos * dx - self.sin * dz, dy, self.sin * dx + self.cos * dz], -1)

    def to_world(self, xc: np.ndarray, yc: np.ndarray, zc: np.ndarray) -> tuple[np.ndarray, ...]:
        """Camera coordinates -> world x, y, z arrays."""
        return self.x + self.cos * xc + self.sin * zc, self.h + yc, self.cos * zc - self.sin * xc

    @property
    def back(self) -> np.ndarray:
        """World unit vector pointing from the scene towards the camera (billboard normal)."""
        return np.array([-self.sin, 0.0, -self.cos])


def _clip_near(poly: np.ndarray) -> Optional[np.ndarray]:
    """Sutherland-Hodgman clip of a camera-space polygon against z >= _NEAR."""
    out = []
    inside = poly[:, 2] >= _NEAR
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        if inside[i]:
            out.append(a)
        if inside[i] != inside[(i + 1) % len(poly)]:
            out.append(a + (_NEAR - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out) if len(out) >= 3 else None


class _Raster:
    """Z-buffer of inverse depth plus a surface-id map; a plane's 1/z is affine in (u, v), so depth is exact."""

    def __init__(self, cam: _Camera):
        self.cam = cam
        self.invz = np.zeros((cam.height, cam.width), np.float32)
        self.surf = np.zeros((cam.height, cam.width), np.int32)  # 0 = sky (nothing drawn)
        self.u = np.arange(cam.width, dtype=np.float32)
        self.v = np.arange(cam.height, dtype=np.float32)

    def fill(self, sid: int, contours: Iterable[np.ndarray], parent: int = -1, union: bool = False) -> bool:
        """Rasterise coplanar camera-space contours as surface ``sid``; returns whether any part is in view.

        Contours are filled in one even-odd call (disjoint pieces, or an outline plus its holes) unless ``union``.
        With ``parent`` >= 0 the contours are a decal: they only recolour pixels currently owned by ``parent``.
        """
        cam = self.cam
        polys = [p if p[:, 2].min() >= _NEAR else _clip_near(p) for p in contours]
        polys = [p for p in polys if p is not None]
        if not polys:
            return False
        uv = [np.stack([cam.cx + cam.f * p[:, 0] / p[:, 2], cam.cy - cam.f * p[:, 1] / p[:, 2]], -1) for p in polys]
        lo = np.min([q.min(0) for q in uv], 0)
        hi = np.max([q.max(0) for q in uv], 0)
        x0, y0 = max(math.floor(lo[0]), 0), max(math.floor(lo[1]), 0)
        x1, y1 = min(math.ceil(hi[0]) + 1, cam.width), min(math.ceil(hi[1]) + 1, cam.height)
        if x0 >= x1 or y0 >= y1:
            return False
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        pts = [np.round((q - (x0, y0)) * 16).astype(np.int32) for q in uv]
        for group in ([p] for p in pts) if union else [pts]:
            cv2.fillPoly(mask, group, 1, cv2.LINE_8, 4)
        surf = self.surf[y0:y1, x0:x1]
        if parent >= 0:
            surf[(mask > 0) & (surf == parent)] = sid
            return True
        normal = _newell(polys[0])
        d = float(normal @ polys[0].mean(0))
        if abs(d) < 1e-9 * max(float(np.abs(normal).max()), 1e-12):
            return False  # plane seen edge-on
        a, b = normal[0] / (cam.f * d), -normal[1] / (cam.f * d)
        c = (normal[2] - normal[0] * cam.cx / cam.f + normal[1] * cam.cy / cam.f) / d
        iz = (a * self.u[x0:x1])[None, :] + (b * self.v[y0:y1] + c)[:, None]
        zbuf = self.invz[y0:y1, x0:x1]
        win = (mask > 0) & (iz > zbuf)
        np.copyto(zbuf, iz.astype(np.float32), where=win)
        surf[win] = sid
        return True

    def fill_screen(self, sid: int, pts: np.ndarray, invz: float) -> None:
        """Fill a pixel-space polygon at constant inverse depth (ego hood)."""
        mask = np.zeros_like(self.surf, np.uint8)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        self.surf[mask > 0] = sid
        self.invz[mask > 0] = invz


def _newell(p: np.ndarray) -> np.ndarray:
    """Polygon normal (Newell's method), robust for any planar polygon."""
    q = np.roll(p, -1, 0)
    return np.array([
        np.sum((p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2])),
        np.sum((p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0])),
        np.sum((p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1])),
    ])


# ----------------------------------------------------------------------------------------------------------------
# Materials (appearance only; the scene refers to them by name)


@dataclass(frozen=True)
class _Material:
    colors: tuple[tuple[int, int, int], ...]  # sRGB base colours; each object picks one
    jitter: float = 0.08  # per-object relative colour jitter
    texture: str = "none"
    scale: float = 32.0  # texels per metre
    amp: float = 0.0  # texture contrast
    glow: tuple[float, float, float] = (0.0, 0.0, 0.0)  # linear emission at night (lamps, lit windows)
    wet: float = 0.0  # mirror reflectance of a wet surface
    snow: float = 0.0  # snow cover fraction


_GREY_PAINT = ((225, 225, 222), (30, 31, 34), (120, 122, 126), (172, 174, 178), (150, 24, 28), (28, 52, 118),
               (44, 72, 52), (200, 182, 150), (92, 22, 28), (226, 196, 48), (70, 74, 82))
_MATERIALS: dict[str, _Material] = {
    "asphalt": _Material(((80, 80, 84), (94, 92, 94), (66, 67, 72), (108, 104, 100)), 0.08, "asphalt", 48, 0.3,
                         wet=0.45, snow=0.8),
    "paint": _Material(((228, 228, 222), (232, 226, 214)), 0.04, "asphalt", 48, 0.15, wet=0.3, snow=0.8),
    "paint_yellow": _Material(((222, 186, 60),), 0.05, "asphalt", 48, 0.15, wet=0.3, snow=0.8),
    "rail": _Material(((142, 140, 136),), 0.05, "metal", 32, 0.2, wet=0.5, snow=0.5),
    "pavement": _Material(((152, 148, 142), (172, 162, 150), (132, 130, 127), (166, 150, 134), (120, 112, 108)),
                          0.08, "paving", 48, 0.3, wet=0.25, snow=0.95),
    "curb": _Material(((166, 164, 158), (140, 140, 138)), 0.05, "concrete", 32, 0.3, snow=0.6),
    "grass": _Material(((86, 118, 52), (104, 126, 60), (80, 100, 52), (120, 124, 70)), 0.1, "grass", 40, 0.45,
                       snow=1.0),
    "soil": _Material(((122, 102, 78), (106, 96, 82), (140, 124, 96)), 0.08, "grass", 40, 0.4, snow=1.0),
    "plaster": _Material(((202, 192, 172), (182, 172, 162), (216, 206, 186), (172, 152, 132), (192, 122, 92),
                          (152, 162, 172), (226, 216, 200), (160, 170, 150)), 0.1, "plaster", 16, 0.3),
    "brick": _Material(((152, 82, 62), (132, 72, 56), (166, 102, 76), (120, 96, 80)), 0.08, "brick", 64, 0.5),
    "concrete": _Material(((152, 152, 150), (126, 126, 126), (172, 170, 162), (140, 136, 128)), 0.06, "concrete",
                          24, 0.35),
    "roof": _Material(((120, 60, 50), (70, 70, 76), (96, 70, 60)), 0.08, "brick", 48, 0.35, snow=0.9),
    "glass": _Material(((62, 72, 84), (82, 96, 112), (46, 52, 62), (100, 110, 118)), 0.08, "plaster", 8, 0.35),
    "glass_lit": _Material(((62, 72, 84), (82, 96, 112), (46, 52, 62)), 0.08, "plaster", 8, 0.35,
                           glow=(1.6, 1.15, 0.6)),
    "door": _Material(((92, 72, 52), (62, 62, 66), (120, 40, 30)), 0.08, "bark", 32, 0.2),
    "far_building": _Material(((150, 152, 160), (172, 166, 160), (132, 136, 146), (120, 118, 116)), 0.08,
                              "concrete", 8, 0.25),
    "stone": _Material(((142, 136, 126), (166, 160, 150), (122, 112, 102), (180, 172, 160)), 0.08, "concrete",
                       32, 0.4),
    "fence_metal": _Material(((72, 76, 72), (112, 112, 106), (52, 62, 52), (40, 40, 42)), 0.06, "metal", 32, 0.1),
    "fence_wood": _Material(((142, 106, 72), (122, 92, 62), (162, 132, 96)), 0.08, "bark", 64, 0.3),
    "pole": _Material(((122, 122, 120), (92, 96, 96), (72, 76, 74), (152, 152, 146)), 0.06, "metal", 32, 0.15),
    "lamp": _Material(((232, 230, 212),), 0.02, glow=(3.0, 2.4, 1.5)),
    "sign_red": _Material(((196, 32, 36), (176, 28, 32)), 0.05, "metal", 64, 0.08),
    "sign_white": _Material(((236, 236, 230),), 0.03, "metal", 64, 0.08),
    "sign_blue": _Material(((22, 72, 162), (30, 90, 170)), 0.05, "metal", 64, 0.08),
    "sign_yellow": _Material(((242, 192, 24),), 0.04, "metal", 64, 0.08),
    "sign_green": _Material(((22, 112, 62),), 0.05, "metal", 64, 0.08),
    "sign_back": _Material(((152, 152, 150), (120, 122, 122)), 0.05, "metal", 32, 0.1),
    "housing": _Material(((36, 36, 36), (52, 52, 46), (196, 168, 44)), 0.05, "metal", 32, 0.1),
    "lamp_red": _Material(((240, 60, 40),), 0.03, glow=(3.0, 0.4, 0.2)),
    "lamp_amber": _Material(((246, 170, 30),), 0.03, glow=(3.0, 1.8, 0.2)),
    "lamp_green": _Material(((40, 220, 140),), 0.03, glow=(0.3, 2.6, 1.6)),
    "lamp_off": _Material(((46, 44, 40),), 0.03),
    "foliage": _Material(((62, 96, 42), (76, 112, 46), (52, 82, 36), (92, 112, 52), (72, 92, 42), (110, 120, 58)),
                         0.12, "foliage", 10, 0.6, snow=0.5),
    "far_trees": _Material(((52, 76, 44), (66, 86, 50), (80, 92, 60)), 0.1, "foliage", 4, 0.4, snow=0.5),
    "trunk": _Material(((82, 66, 52), (96, 82, 62), (72, 62, 56)), 0.08, "bark", 48, 0.35),
    "skin": _Material(((232, 192, 162), (202, 152, 122), (162, 112, 82), (112, 76, 56), (240, 206, 182)), 0.05,
                      "fabric", 64, 0.05),
    "hair": _Material(((42, 32, 26), (92, 62, 36), (22, 22, 22), (162, 132, 82), (122, 122, 122)), 0.06,
                      "fabric", 64, 0.15),
    "top": _Material(((42, 42, 46), (202, 202, 202), (162, 32, 32), (32, 62, 132), (62, 102, 62), (152, 122, 92),
                      (232, 182, 42), (92, 42, 102), (20, 20, 22), (110, 60, 40)), 0.1, "fabric", 64, 0.2),
    "bottom": _Material(((42, 46, 72), (32, 32, 32), (92, 92, 96), (132, 112, 82), (62, 72, 92), (20, 20, 24)),
                        0.08, "fabric", 64, 0.2),
    "shoe": _Material(((30, 30, 30), (200, 200, 200), (80, 50, 30)), 0.05),
    "paint_car": _Material(_GREY_PAINT, 0.06, "metal", 32, 0.06),
    "paint_truck": _Material(((232, 232, 232), (202, 42, 32), (32, 72, 152), (80, 80, 80), (202, 162, 32),
                              (52, 102, 62)), 0.06, "metal", 24, 0.1),
    "paint_bus": _Material(((222, 222, 216), (202, 42, 36), (240, 200, 32), (32, 122, 182), (42, 132, 72)), 0.05,
                           "metal", 24, 0.08),
    "paint_tram": _Material(((232, 232, 222), (202, 32, 32), (240, 192, 42), (40, 90, 160)), 0.05, "metal", 24,
                            0.08),
    "vehicle_glass": _Material(((26, 30, 40), (42, 46, 56), (60, 70, 80)), 0.06, "plaster", 8, 0.3),
    "tire": _Material(((26, 26, 26), (34, 33, 32)), 0.03, "fabric", 64, 0.1),
    "trim": _Material(((40, 40, 42), (60, 60, 62)), 0.04, "metal", 32, 0.1),
    "chrome": _Material(((170, 172, 176),), 0.04, "metal", 32, 0.1),
    "headlight": _Material(((226, 226, 216),), 0.02, glow=(3.0, 2.8, 2.4)),
    "taillight": _Material(((170, 24, 24),), 0.04, glow=(2.2, 0.15, 0.1)),
    "display": _Material(((30, 30, 30),), 0.02, glow=(2.0, 1.4, 0.2)),
    "plate": _Material(((232, 232, 226), (240, 210, 40)), 0.02),
    "frame": _Material(((32, 32, 32), (182, 32, 32), (32, 82, 162), (202, 202, 202), (42, 122, 62)), 0.06, "metal",
                       64, 0.05),
    "moto": _Material(((22, 22, 22), (192, 32, 32), (32, 52, 122), (202, 202, 202), (230, 120, 20)), 0.06, "metal",
                      48, 0.06),
    "helmet": _Material(((22, 22, 22), (232, 232, 232), (202, 42, 42), (40, 60, 140)), 0.05, "metal", 64, 0.05),
    "hood": _Material(((22, 22, 24), (202, 202, 206), (62, 72, 82)), 0.04, "metal", 32, 0.05),
}
_MATERIAL_INDEX = {name: i for i, name in enumerate(_MATERIALS)}
_TEXTURES = ("none", "asphalt", "paving", "concrete", "plaster", "brick", "grass", "foliage", "bark", "fabric",
             "metal")
_TEX_SIZE = 128  # power of two: texel indices wrap with a bit mask
_MIP_SIGMAS = (0.0, 1.0, 2.0, 4.0)


@functools.lru_cache(maxsize=1)
def _texture_bank() -> np.ndarray:
    """Tileable zero-mean textures as [mip level, texture, T, T] float32 (fixed seed: part of the renderer)."""
    rng = np.random.default_rng(20240519)
    size = _TEX_SIZE
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]

    def noise(beta: float, stretch: float = 1.0) -> np.ndarray:
        # 1/f^beta filtered white noise is periodic by construction, hence seamless when tiled
        radius = np.hypot(fx, fy * stretch)
        radius[0, 0] = 1.0
        spectrum = np.fft.fft2(rng.standard_normal((size, size))) / radius**beta
        spectrum[0, 0] = 0.0
        n = np.fft.ifft2(spectrum).real
        return n / n.std()

    yy, xx = np.mgrid[:size, :size]
    tiles = rng.normal(0, 0.5, (size // 32, size // 32))[yy // 32, xx // 32]
    row = yy // 8
    shifted = xx + (row % 2) * 8
    bricks = rng.normal(0, 0.6, (size // 8, size // 16 + 1))[row, shifted // 16 % (size // 16)]
    mortar = (yy % 8 == 0) | (shifted % 16 == 0)
    textures = {
        "none": np.zeros((size, size)),
        "asphalt": 0.6 * noise(0.3) + 0.5 * noise(1.6) + 2.5 * (rng.random((size, size)) > 0.985),
        "paving": tiles + 0.4 * noise(0.8) - 3.0 * ((xx % 32 < 2) | (yy % 32 < 2)),
        "concrete": 0.7 * noise(1.3) + 0.3 * noise(0.4),
        "plaster": 0.9 * noise(2.0) + 0.15 * noise(0.3),
        "brick": bricks + 0.3 * noise(0.5) - 2.5 * mortar,
        "grass": 0.7 * noise(0.5) + 0.6 * noise(1.6),
        "foliage": np.tanh(1.5 * noise(1.1)) + 0.5 * noise(0.4),
        "bark": noise(1.2, stretch=8.0) + 0.3 * noise(0.5),
        "fabric": noise(0.2),
        "metal": 0.4 * noise(1.8) + 0.2 * noise(0.2),
    }
    bank = np.stack([(t - t.mean()) / max(t.std(), 1e-6) for t in (textures[k] for k in _TEXTURES)])
    spectrum = np.fft.fft2(bank)
    levels = [np.fft.ifft2(spectrum * np.exp(-2 * (np.pi * s) ** 2 * (fx**2 + fy**2))).real for s in _MIP_SIGMAS]
    return np.stack(levels).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Scene description: surfaces, decals, billboards, lights and shadow casters


class _Pose:
    """Object frame on the ground: local (a forward, y up, b right) -> world, heading measured from +z to +x."""

    def __init__(self, x: float, z: float, heading: float, y: float = 0.0):
        self.x, self.y, self.z = x, y, z
        self.sin, self.cos = math.sin(heading), math.cos(heading)

    def __call__(self, a, y, b) -> np.ndarray:
        """World points of local coordinates (broadcast)."""
        a, y, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(y, float), np.asarray(b, float))
        return np.stack([self.x + a * self.sin + b * self.cos, self.y + y, self.z + a * self.cos - b * self.sin], -1)


def _ground_quad(x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> np.ndarray:
    """Horizontal world rectangle [x0, x1] x [z0, z1] at height y."""
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], float)


def _side_quad(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Vertical world rectangle in the plane x = const (facades, curbs, fences along the street)."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], float)


def _prism(pose: _Pose, a: tuple[float, float], b: tuple[float, float], y: tuple[float, float],
           top_a: Optional[tuple[float, float]] = None, top_b: Optional[tuple[float, float]] = None) -> np.ndarray:
    """8 world vertices of a box or frustum: bottom rectangle a x b at y[0], top rectangle top_a x top_b at y[1]."""
    ta, tb = top_a or a, top_b or b
    bottom = [(a[0], b[0]), (a[1], b[0]), (a[1], b[1]), (a[0], b[1])]
    top = [(ta[0], tb[0]), (ta[1], tb[0]), (ta[1], tb[1]), (ta[0], tb[1])]
    pts = [(p, y[0], q) for p, q in bottom] + [(p, y[1], q) for p, q in top]
    return pose(*np.array(pts).T)


# Faces of a _prism, each listed bottom-left, bottom-right, top-right, top-left so _inset() maps (u, v) on it.
_PRISM_FACES = {"back": (0, 3, 7, 4), "front": (2, 1, 5, 6), "left": (1, 0, 4, 5), "right": (3, 2, 6, 7),
                "top": (4, 5, 6, 7), "bottom": (0, 1, 2, 3)}


def _inset(quad: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Sub-quad of a face quad by bilinear (u along the bottom edge, v up) coordinates."""
    return _on_face(quad, np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]]))


def _on_face(quad: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """World points of (u, v) face coordinates (n x 2) on a face quad, as in _inset()."""
    u, v = uv[:, :1], uv[:, 1:]
    return (1 - v) * ((1 - u) * quad[0] + u * quad[1]) + v * ((1 - u) * quad[3] + u * quad[2])


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 14, a0: float = 0.0,
             a1: float = 2 * math.pi) -> np.ndarray:
    """Polygon (n x 2) approximating an ellipse or an elliptic sector."""
    t = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], -1)


def _limb(p0: Sequence[float], p1: Sequence[float], w0: float, w1: Optional[float] = None) -> np.ndarray:
    """Tapered thick segment from p0 to p1 as a 2-D quad."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9)
    w1 = w0 if w1 is None else w1
    return np.array([p0 + n * w0 / 2, p1 + n * w1 / 2, p1 - n * w1 / 2, p0 - n * w0 / 2])


class _Scene:
    """Scene under construction: the surface table plus the rasterised G-buffer, lights and shadow casters."""

    def __init__(self, cam: _Camera):
        self.cam = cam
        self.eye = np.array([cam.x, cam.h, 0.0])  # camera centre in world coordinates
        self.raster = _Raster(cam)
        self.label: list[int] = [_SKY]
        self.inst: list[int] = [_SKY]
        self.material: list[int] = [_MATERIAL_INDEX["lamp_off"]]  # sky is shaded separately
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
        self.material.append(_MATERIAL_INDEX[material])
        self.group.append(group)
        self.normal.append(normal / max(float(np.linalg.norm(normal)), 1e-12))
        return len(self.label) - 1

    def poly(self, contours: Sequence[np.ndarray] | np.ndarray, label: int, material: str, group: int,
             inst: Optional[int] = None, union: bool = False) -> Optional[int]:
        """Draw coplanar world contours as one surface; returns its id, or None when out of view."""
        first = contours[0]
        normal = _newell(first)
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
              faces: dict[str, tuple[int, ...]] = _PRISM_FACES) -> dict[str, tuple[int, np.ndarray]]:
        """Draw the camera-facing faces of a convex solid; returns {face name: (sid, world quad)} of drawn faces."""
        centre = verts.mean(0)
        drawn = {}
        for name, idx in faces.items():
            material = materials if isinstance(materials, str) else materials.get(name)
            if material is None:
                continue
            quad = verts[list(idx)]
            normal = _newell(quad)
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
        self.raster.fill_screen(sid, pts, 1.0 / _NEAR)

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


# ----------------------------------------------------------------------------------------------------------------
# Scene content


class _Street:
    """Builds one street scene from a generator; all randomness of geometry and labels comes from ``rng``."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng
        r = rng
        self.lane_w = r.uniform(3.0, 3.6)
        self.n_right = int(r.integers(1, 3))
        self.n_left = int(r.choice([0, 1, 2], p=[0.15, 0.5, 0.35]))
        self.park_right = bool(r.random() < 0.55)
        self.park_left = self.n_left > 0 and bool(r.random() < 0.45)
        self.x_right = self.n_right * self.lane_w + 2.2 * self.park_right
        self.x_left = -(self.n_left * self.lane_w + 2.2 * self.park_left)
        self.urban = bool(r.random() < 0.6)
        self.z_far = r.uniform(110, 200)
        self.curb = r.uniform(0.1, 0.17)
        cam_x = (int(r.integers(self.n_right)) + 0.5) * self.lane_w + r.uniform(-0.3, 0.3)
        self.cam = _Camera(height, width, f=width * r.uniform(0.62, 0.95), cx=width * (0.5 + r.uniform(-0.02, 0.02)),
                           cy=height * r.uniform(0.38, 0.5), x=cam_x, h=r.uniform(1.3, 1.8),
                           yaw=r.uniform(-0.06, 0.06))
        self.scene = _Scene(self.cam)
        self.crossing: Optional[tuple[float, float]] = None
        if r.random() < 0.45:
            zi = r.uniform(14, 55)
            self.crossing = (zi, zi + r.uniform(8, 14))
        self.sidewalk = {s: r.uniform(1.8, 5.0) for s in (-1, 1)}
        self.verge = {s: r.uniform(0.8, 2.5) if r.random() < (0.2 if self.urban else 0.4) else 0.0 for s in (-1, 1)}
        self.yard = {s: r.uniform(1.0, 6.0) if r.random() < (0.15 if self.urban else 0.7) else 0.0 for s in (-1, 1)}
        self.occupied: list[tuple[float, float, float, float]] = []  # (x0, x1, z0, z1) footprints on the road
        self.building_line: dict[int, float] = {}
        self.road_sid: Optional[int] = None

    def edge(self, side: int) -> float:
        """World x of the curb on a side (+1 right, -1 left)."""
        return self.x_right if side > 0 else self.x_left

    def in_crossing(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        """Whether [z0, z1] overlaps the cross street (with margin)."""
        return self.crossing is not None and z1 > self.crossing[0] - margin and z0 < self.crossing[1] + margin

    def segments(self, z0: float, z1: float) -> list[tuple[float, float]]:
        """[z0, z1] minus the cross street."""
        if self.crossing is None:
            return [(z0, z1)]
        return [(a, b) for a, b in ((z0, min(z1, self.crossing[0])), (max(z0, self.crossing[1]), z1)) if b > a]

    def build(self) -> _Scene:
        """Lay out the whole street and return the drawn scene."""
        self.ground()
        self.backdrop()
        for side in (-1, 1):
            self.frontage(side)
            self.street_furniture(side)
        self.traffic()
        self.pedestrians()
        if self.rng.random() < 0.35:
            self.ego_hood()
        return self.scene

    # -- ground --------------------------------------------------------------------------------------------------

    def ground(self) -> None:
        sc, r = self.scene, self.rng
        g = sc.new_group()
        z_end = self.z_far + 60
        # terrain under everything, slightly lower so the road and sidewalks win the depth test
        sc.poly([_ground_quad(-700, 700, -5, 2000, -0.05)], _TERRAIN, "grass" if r.random() < 0.7 else "soil", g)
        road = sc.poly([_ground_quad(self.x_left, self.x_right, -5, z_end)], _ROAD, "asphalt", g)
        self.road_sid = road
        for side in (-1, 1):
            x = self.edge(side)
            widths = [(self.verge[side], _TERRAIN, "grass"), (self.sidewalk[side], _SIDEWALK, "pavement"),
                      (self.yard[side], _TERRAIN, "grass" if r.random() < 0.8 else "soil")]
            for z0, z1 in self.segments(-5, z_end):
                sc.poly([_side_quad(x, z0, z1, 0, self.curb)], _SIDEWALK, "curb", g)
                xs = x
                for w, label, material in widths:
                    if w > 0:
                        sc.poly([_ground_quad(xs, xs + side * w, z0, z1, self.curb)], label, material, g)
                    xs += side * w
            self.building_line[side] = x + side * sum(w for w, _, _ in widths)
        if self.crossing is not None:
            zc0, zc1 = self.crossing
            for side in (-1, 1):
                x = self.edge(side)
                sc.poly([_ground_quad(x, side * 400, zc0, zc1)], _ROAD, "asphalt", g)
                w = r.uniform(2.0, 4.0)
                for z0, z1 in ((zc0 - w, zc0), (zc1, zc1 + w)):
                    sc.poly([_ground_quad(self.building_line[side], side * 400, z0, z1, self.curb)], _SIDEWALK,
                            "pavement", g)
                sc.poly([np.array([[x, 0, zc1], [x, self.curb, zc1], [side * 400, self.curb, zc1],
                                   [side * 400, 0, zc1]])], _SIDEWALK, "curb", g)
        self.markings(road)

    def markings(self, road: Optional[int]) -> None:
        sc, r = self.scene, self.rng
        dashes, solid, yellow = [], [], []
        dash, period = r.uniform(2.0, 4.0), r.uniform(6.0, 12.0)
        edge_lines = r.random() < 0.6
        w = 0.12
        z_end = self.z_far + 60
        for z0, z1 in self.segments(-5, z_end):
            starts = np.arange(z0 - r.uniform(0, period), z1, period)
            dividers = [k * self.lane_w for k in range(1, self.n_right)] + [-k * self.lane_w
                                                                              for k in range(1, self.n_left)]
            dashes += [_ground_quad(x - w, x + w, s, s + dash) for x in dividers for s in starts]
            if self.n_left > 0:
                yellow += [_ground_quad(x - 0.06, x + 0.06, z0, z1) for x in (-0.12, 0.12)]
            for x, parking in ((self.n_right * self.lane_w, self.park_right),
                               (-self.n_left * self.lane_w, self.park_left)):
                if parking or edge_lines:
                    solid.append(_ground_quad(x - w, x + w, z0, z1))
        if self.crossing is not None:
            zc0, zc1 = self.crossing
            stripe = r.uniform(0.4, 0.6)
            xs = np.arange(self.x_left + 0.3, self.x_right - 0.3, 2 * stripe)
            for z0 in (zc0 - 3.6, zc1 + 0.6):
                solid += [_ground_quad(x, x + stripe, z0, z0 + 3.0) for x in xs]
            solid.append(_ground_quad(0.2, self.x_right - 2.2 * self.park_right, zc0 - 5.0, zc0 - 4.6))
        sc.decal(road, dashes + solid, "paint")
        sc.decal(road, yellow, "paint_yellow" if r.random() < 0.5 else "paint")

    # -- buildings, walls, fences, vegetation beside the street --------------------------------------------------

    def backdrop(self) -> None:
        """Far end of the street (and of the cross street): hides the void beyond z_far."""
        sc, r = self.scene, self.rng
        g = sc.new_group()
        z = self.z_far + r.uniform(0, 30)
        x = -400.0
        while x < 400:
            w = r.uniform(10, 40)
            if r.random() < 0.7:
                h = r.uniform(8, 45) if self.urban else r.uniform(5, 14)
                sc.poly([np.array([[x, 0, z], [x + w, 0, z], [x + w, h, z], [x, h, z]])], _BUILDING, "far_building",
                        g)
            x += w
        tops = np.cumsum(r.normal(0, 0.8, 60)) * 0.6 + r.uniform(8, 16)
        xs = np.linspace(-600, 600, 60)
        band = np.concatenate([np.stack([xs, np.maximum(tops, 4), np.full(60, z + 40)], -1),
                               [[600, 0, z + 40], [-600, 0, z + 40]]])
        sc.poly([band], _VEGETATION, "far_trees", g)
        if self.crossing is not None:
            zc0, zc1 = self.crossing
            for side in (-1, 1):
                x = side * r.uniform(50, 110)
                h = r.uniform(10, 30)
                sc.poly([_side_quad(x, zc0 - 12, zc1 + 12, 0, h)], _BUILDING, "far_building", sc.new_group())

    def frontage(self, side: int) -> None:
        """Row of buildings with gaps (vegetation, walls, fences, open ground) along one side."""
        r = self.rng
        xb = self.building_line[side]
        for z0, z1 in self.segments(r.uniform(-16, -4), self.z_far):
            if self.crossing is not None and z1 <= self.crossing[0]:
                z1 -= 3.0  # keep the corner sidewalk free
            if self.crossing is not None and z0 >= self.crossing[1]:
                z0 += 3.0
            z = z0
            while z < z1 - 2:
                if r.random() < (0.72 if self.urban else 0.5):
                    length = min(r.uniform(6, 26) if self.urban else r.uniform(8, 15), z1 - z)
                    self.building(side, xb + side * r.uniform(0, 0.6 if self.urban else 3), z, z + length)
                    z += length + (0.0 if self.urban and r.random() < 0.6 else r.uniform(1, 6))
                else:
                    length = min(r.uniform(4, 14), z1 - z)
                    self.gap(side, xb, z, z + length)
                    z += length
            if self.urban and r.random() < 0.8:
                self.back_row(side, xb + side * r.uniform(14, 28), z0, z1)

    def building(self, side: int, x: float, z0: float, z1: float) -> None:
        sc, r = self.scene, self.rng
        g = sc.new_group()
        depth = r.uniform(8, 18)
        height = r.uniform(9, 32) if self.urban else r.uniform(4.5, 8)
        xs = (x, x + side * depth)
        pose = _Pose(0, 0, 0, y=self.curb)
        # at heading 0 a _Pose maps (a, y, b) to (x=b, y, z=a): the prism's a-range is z and its b-range x
        verts = _prism(pose, (z0, z1), (min(xs), max(xs)), (0, height))
        material = r.choice(["plaster", "brick", "concrete"], p=[0.5, 0.25, 0.25])
        faces = sc.solid(verts, material, _BUILDING, g)
        if not self.urban and r.random() < 0.8:
            ridge = x + side * depth / 2
            top = height + self.curb
            apex = top + r.uniform(2, 4)
            roof = np.array([[x, top, z0], [xs[1], top, z0], [xs[1], top, z1], [x, top, z1], [ridge, apex, z0],
                             [ridge, apex, z1]])
            sc.solid(roof, "roof", _BUILDING, g, faces={"near": (0, 3, 5, 4), "far": (1, 2, 5, 4),
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
                    doors.append(_inset(quad, u - du * 1.2, u + du * 1.2, 0.0, min(2.3 / height, 0.9)))
                for j in range(rows):
                    v = (j * floor_h + floor_h * 0.35 + 0.3) / height
                    dv = win_h * floor_h / height / 2
                    if v + dv < 0.97:
                        (lit if r.random() < lit_fraction else windows).append(_inset(quad, u - du, u + du, v - dv,
                                                                                       v + dv))
            sc.decal(sid, windows, "glass")
            sc.decal(sid, lit, "glass_lit")
            sc.decal(sid, doors, "door")
        sc.casters.append(verts)

    def back_row(self, side: int, x: float, z0: float, z1: float) -> None:
        """Taller second-row blocks seen through gaps and above low buildings."""
        sc, r = self.scene, self.rng
        z = z0
        while z < z1:
            length = r.uniform(15, 40)
            verts = _prism(_Pose(0, 0, 0), (z, min(z + length, z1)), tuple(sorted((x, x + side * 20))),
                           (0, r.uniform(15, 40)))
            sc.solid(verts, r.choice(["plaster", "concrete", "brick"]), _BUILDING, sc.new_group())
            z += length + r.uniform(0, 6)

    def gap(self, side: int, xb: float, z0: float, z1: float) -> None:
        """Space between buildings: hedge, wall, fence, trees or open ground (the terrain plane)."""
        sc, r = self.scene, self.rng
        kind = r.choice(["hedge", "wall", "fence", "trees", "open"], p=[0.2, 0.25, 0.25, 0.2, 0.1])
        y = self.curb
        x = xb + side * r.uniform(0, 0.5)
        if kind == "hedge":
            h = r.uniform(0.8, 1.8)
            verts = _prism(_Pose(0, 0, 0, y=y), (z0, z1), tuple(sorted((x, x + side * r.uniform(0.6, 1.2)))), (0, h))
            sc.solid(verts, "foliage", _VEGETATION, sc.new_group())
        elif kind == "wall":
            self.wall(x, z0, z1, r.uniform(1.0, 3.2))
        elif kind == "fence":
            self.fence(x, z0, z1, r.uniform(1.0, 2.2))
        if kind in ("trees", "hedge", "open") or r.random() < 0.4:
            for z in np.arange(z0 + r.uniform(0.5, 2), z1, r.uniform(3, 7)):
                self.tree(np.array([x + side * r.uniform(1.5, 6), y, z]))

    def wall(self, x: float, z0: float, z1: float, h: float) -> None:
        verts = _prism(_Pose(0, 0, 0, y=self.curb), (z0, z1), tuple(sorted((x, x + 0.3))), (0, h))
        self.scene.solid(verts, "stone" if self.rng.random() < 0.6 else "concrete", _WALL, self.scene.new_group())

    def fence(self, x: float, z0: float, z1: float, h: float) -> None:
        """Fence along z at x: posts and rails, wooden slats or a wire mesh (see-through, so labels have holes)."""
        sc, r = self.scene, self.rng
        y = self.curb
        kind = r.choice(["rails", "slats", "mesh"])
        pieces = [_side_quad(x, z, z + 0.1, y, y + h) for z in np.arange(z0, z1, r.uniform(1.8, 3.0))]
        if kind == "rails":
            pieces += [_side_quad(x, z0, z1, y + yy, y + yy + 0.08)
                       for yy in np.linspace(0.3, h - 0.1, int(r.integers(2, 4)))]
            material = "fence_wood" if r.random() < 0.5 else "fence_metal"
        elif kind == "slats":
            pieces += [_side_quad(x, z, z + 0.1, y + 0.05, y + h) for z in np.arange(z0, z1, r.uniform(0.13, 0.2))]
            pieces += [_side_quad(x, z0, z1, y + h - 0.1, y + h)]
            material = "fence_wood"
        else:
            step = r.uniform(0.15, 0.3)
            pieces += [_side_quad(x, z, z + 0.025, y, y + h) for z in np.arange(z0, z1, step)]
            pieces += [_side_quad(x, z0, z1, y + yy, y + yy + 0.025) for yy in np.arange(0, h, step)]
            pieces += [_side_quad(x, z0, z1, y + h - 0.06, y + h)]
            material = "fence_metal"
        sc.poly(pieces, _FENCE, material, sc.new_group(), union=True)

    def tree(self, base: np.ndarray, scale: float = 1.0) -> None:
        """Trunk plus a lumpy crown; both are vegetation in Cityscapes."""
        sc, r = self.scene, self.rng
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
        sc.billboard(base, [("trunk", [trunk]), ("foliage", lobes)], _VEGETATION, g)
        sc.casters.append(np.array([base + (dx, dy, dz) for dx in (-radius, radius) for dz in (-radius, radius)
                                    for dy in (trunk_h, trunk_h + 2 * radius)]))

    # -- poles, signs, traffic lights, street lamps ------------------------------------------------------------

    def street_furniture(self, side: int) -> None:
        r = self.rng
        x = self.edge(side) + side * (self.verge[side] / 2 if self.verge[side] else r.uniform(0.4, 0.7))
        tree_row = r.random() < (0.45 if self.urban else 0.75)
        tree_gap = r.uniform(6, 14)
        furniture = (self.lamp, self.sign, self.light)
        for z0, z1 in self.segments(r.uniform(1, 8), self.z_far * 0.9):
            for z in np.arange(z0, z1 - 1, r.uniform(10, 28)):
                furniture[r.choice(3, p=[0.45, 0.4, 0.15])](side, x, z + r.uniform(-2, 2))
            if tree_row:
                for z in np.arange(z0 + r.uniform(2, 6), z1 - 1, tree_gap):
                    self.tree(np.array([x + side * r.uniform(0.3, 1.2), self.curb, z]))
        if self.crossing is not None:
            self.light(side, x, self.crossing[0] - 1.0, overhead=side > 0 and r.random() < 0.6)
            self.light(side, x, self.crossing[1] + 1.0, facing=False)

    def pole(self, x: float, z: float, height: float, width: float) -> tuple[np.ndarray, int]:
        """Pole standing on the sidewalk; returns its base point and colour group."""
        sc = self.scene
        g = sc.new_group()
        base = np.array([x, self.curb, z])
        sc.billboard(base, [("pole", [np.array([[-width / 2, 0], [width / 2, 0], [width * 0.4, height],
                                                [-width * 0.4, height]])])], _POLE, g)
        sc.casters.append(np.array([base, base + (0, height, 0), base + (0.05, 0, 0), base + (0.05, height, 0)]))
        return base, g

    def lamp(self, side: int, x: float, z: float) -> None:
        """Street lamp: pole, arm over the road and a lamp head that glows at night."""
        sc, r = self.scene, self.rng
        h = r.uniform(6, 9)
        base, g = self.pole(x, z, h, r.uniform(0.14, 0.24))
        reach = r.uniform(1.0, 3.0)
        top = base + (0, h, 0)
        arm = np.array([top, top + (-side * reach, 0.3, 0), top + (-side * reach, 0.42, 0), top + (0, 0.12, 0)])
        sc.poly([arm], _POLE, "pole", g)
        head = _prism(_Pose(top[0] - side * reach, top[2], 0, y=top[1] + 0.1), (-0.25, 0.25), (-0.5, 0.5), (0, 0.22))
        sc.solid(head, {"back": "pole", "left": "pole", "right": "pole", "bottom": "lamp"}, _POLE, g)
        sc.lights.append((top + (-side * reach, 0, 0), (1.0, 0.78, 0.5), 9.0))
        if r.random() < 0.3:
            self.sign_plate(base + (0, r.uniform(2.2, 3.0), -0.05), g)

    def sign(self, side: int, x: float, z: float) -> None:
        r = self.rng
        h = r.uniform(2.4, 3.6)
        base, g = self.pole(x, z, h, r.uniform(0.06, 0.1))
        for k in range(int(r.integers(1, 3))):
            self.sign_plate(base + (0, h - 0.35 - 0.8 * k, -0.04), g)

    def sign_plate(self, centre: np.ndarray, pole_group: int) -> None:
        """A sign facing the camera (or its grey back): circle, triangle, square, diamond, octagon or board."""
        sc, r = self.scene, self.rng
        shape = r.choice(["circle", "triangle", "square", "diamond", "octagon", "board"])
        s = r.uniform(0.3, 0.45)
        if shape == "circle":
            outline = _ellipse(0, 0, s, s, 16)
        elif shape == "triangle":
            outline = np.array([[-s * 1.1, -s * 0.6], [s * 1.1, -s * 0.6], [0, s * 1.3]])
        elif shape == "square":
            outline = np.array([[-s, -s], [s, -s], [s, s], [-s, s]]) * 0.9
        elif shape == "diamond":
            outline = np.array([[0, -s], [s, 0], [0, s], [-s, 0]]) * 1.2
        elif shape == "octagon":
            outline = _ellipse(0, 0, s, s, 8, math.pi / 8, math.pi / 8 + 2 * math.pi)
        else:
            outline = np.array([[-2.2 * s, -s], [2.2 * s, -s], [2.2 * s, s], [-2.2 * s, s]])

        def world(pts: np.ndarray) -> np.ndarray:
            return np.column_stack([centre[0] + pts[:, 0], centre[1] + pts[:, 1], np.full(len(pts), centre[2])])

        if r.random() < 0.2:
            sc.poly([world(outline)], _SIGN, "sign_back", pole_group)
            return
        scheme = {"circle": ("sign_red", "sign_white"), "triangle": ("sign_red", "sign_white"),
                  "square": ("sign_blue", "sign_white"), "diamond": ("sign_white", "sign_yellow"),
                  "octagon": ("sign_red", "sign_white"), "board": (r.choice(["sign_blue", "sign_green"]),
                                                                   "sign_white")}[shape]
        if shape == "circle" and r.random() < 0.4:
            scheme = ("sign_blue", "sign_white")
        sid = sc.poly([world(outline)], _SIGN, scheme[0], sc.new_group())
        if shape == "board":  # lines of text
            inner = [np.array([[-1.8, y - 0.12], [1.4, y - 0.12], [1.4, y + 0.12], [-1.8, y + 0.12]]) * s
                     for y in (-0.4, 0.1, 0.55)]
        elif shape == "square":  # a bar ("one way", "parking")
            inner = [_limb((0, -0.5 * s), (0, 0.55 * s), 0.35 * s)]
        else:
            inner = [outline * 0.72]
        sc.decal(sid, [world(p) for p in inner], scheme[1])

    def light(self, side: int, x: float, z: float, overhead: bool = False, facing: bool = True) -> None:
        """Traffic light on a pole (optionally on a mast arm over the road); seen from the back if not facing."""
        sc, r = self.scene, self.rng
        h = r.uniform(2.4, 3.2) if not overhead else r.uniform(5.5, 6.5)
        base, g = self.pole(x, z, h + (0 if overhead else 0.9), r.uniform(0.1, 0.18))
        heads = [base + (0, h, 0)]
        if overhead:
            reach = r.uniform(3, min(7, abs(self.edge(side)) + 2))
            top = base + (0, h + 0.6, 0)
            sc.poly([np.array([top, top + (-side * reach, 0, 0), top + (-side * reach, 0.15, 0), top + (0, 0.15, 0)])],
                    _POLE, "pole", g)
            heads = [base + (-side * reach * 0.9, h - 0.5, 0), base + (-side * reach * 0.45, h - 0.5, 0)]
        lit = r.choice(["lamp_red", "lamp_amber", "lamp_green"], p=[0.5, 0.15, 0.35])
        for head in heads:
            tg = sc.new_group()
            w, hh = r.uniform(0.28, 0.36), r.uniform(0.8, 1.0)
            verts = _prism(_Pose(head[0], head[2], 0, y=head[1]), (-0.3, 0.0), (-w / 2, w / 2), (0, hh))
            faces = sc.solid(verts, "housing", _LIGHT, tg)
            if facing and "back" in faces:
                sid, quad = faces["back"]
                backplate = np.array([head + (-w * 0.9, -0.1, -0.2), head + (w * 0.9, -0.1, -0.2),
                                      head + (w * 0.9, hh + 0.1, -0.2), head + (-w * 0.9, hh + 0.1, -0.2)])
                sc.poly([backplate], _LIGHT, "housing", tg)
                for k, colour in enumerate(("lamp_green", "lamp_amber", "lamp_red")):
                    pts = _on_face(quad, _ellipse(0.5, (k + 0.5) / 3, 0.11 / w, 0.11 / hh, 12))
                    sc.decal(sid, [pts], colour if colour == lit else "lamp_off")

    # -- traffic --------------------------------------------------------------------------------------------------

    def free(self, x0: float, x1: float, z0: float, z1: float) -> bool:
        """Whether a road footprint is free; claims it if so."""
        for a0, a1, b0, b1 in self.occupied:
            if x0 < a1 and x1 > a0 and z0 < b1 and z1 > b0:
                return False
        self.occupied.append((x0, x1, z0, z1))
        return True

    def traffic(self) -> None:
        r = self.rng
        cam = self.cam
        self.occupied.append((cam.x - 1.2, cam.x + 1.2, -6, 4))  # the ego car
        cross_traffic = self.crossing is not None and r.random() < 0.5
        if r.random() < 0.22 and self.n_left > 0:
            self.tram()
        for side, parked in ((1, self.park_right), (-1, self.park_left)):
            if parked:
                x = self.edge(side) - side * 1.1
                z = r.uniform(2, 10)
                while z < self.z_far * 0.7:
                    kind = r.choice(["car", "van", "pickup", "empty"], p=[0.66, 0.1, 0.06, 0.18])
                    length = {"car": r.uniform(3.8, 4.9), "van": r.uniform(4.8, 5.6), "pickup": r.uniform(5.0, 5.8),
                              "empty": r.uniform(3, 10)}[kind]
                    if kind != "empty" and not self.in_crossing(z, z + length, 6):
                        if self.free(x - 1, x + 1, z, z + length):
                            self.vehicle(kind, x + r.uniform(-0.15, 0.15), z + length / 2,
                                         r.choice([0, math.pi], p=[0.8, 0.2]) + r.normal(0, 0.03), length)
                    z += length + r.uniform(0.6, 4)
        lanes = [((k + 0.5) * self.lane_w, 0.0) for k in range(self.n_right)]
        lanes += [(-(k + 0.5) * self.lane_w, math.pi) for k in range(self.n_left)]
        self.scene.wheel_tracks = [x + s * 0.8 for x, _ in lanes for s in (-1, 1)]
        for x, heading in lanes:
            z = r.uniform(5, 25)
            while z < self.z_far * 0.85:
                kind = r.choice(["car", "van", "truck", "pickup", "bus", "motorcycle"],
                                p=[0.66, 0.08, 0.06, 0.04, 0.08, 0.08])
                length = {"car": r.uniform(3.8, 4.9), "van": r.uniform(4.8, 5.6), "truck": r.uniform(7, 10),
                          "pickup": r.uniform(5.0, 5.8), "bus": r.uniform(10, 13), "motorcycle": 2.1}[kind]
                blocked = cross_traffic and self.in_crossing(z, z + length, 3)
                xx = x + r.normal(0, 0.25)
                if not blocked and self.free(xx - 1.3, xx + 1.3, z, z + length):
                    if kind == "motorcycle":
                        self.two_wheeler(np.array([xx, 0, z + 1]), motor=True, heading=heading)
                    else:
                        self.vehicle(kind, xx, z + length / 2, heading + r.normal(0, 0.02), length)
                z += length + r.uniform(4, 35)
        # cyclists along the right edge of the carriageway
        for _ in range(int(r.poisson(0.9))):
            x = self.x_right - 2.2 * self.park_right - r.uniform(0.6, 1.0)
            z = r.uniform(5, 45)
            if self.free(x - 0.4, x + 0.4, z - 1, z + 1):
                self.two_wheeler(np.array([x, 0, z]), motor=False, heading=0.0)
        if cross_traffic:
            zc0, zc1 = self.crossing
            mid = (zc0 + zc1) / 2
            for _ in range(int(r.integers(1, 4))):
                heading = r.choice([-math.pi / 2, math.pi / 2])
                z = mid + (1.8 if heading > 0 else -1.8) * r.uniform(0.8, 1.2)
                x = r.uniform(-35, 35)
                kind = r.choice(["car", "car", "van", "bus", "truck"])
                length = {"car": 4.5, "van": 5.2, "bus": 11.0, "truck": 8.0}[kind]
                if self.free(x - length / 2, x + length / 2, z - 1.3, z + 1.3):
                    self.vehicle(kind, x, z, heading, length)
            for _ in range(int(r.poisson(0.6))):
                x = r.uniform(-25, 25)
                z = mid + r.uniform(-3, 3)
                if self.free(x - 1, x + 1, z - 0.4, z + 0.4):
                    self.two_wheeler(np.array([x, 0, z]), motor=r.random() < 0.4,
                                     heading=r.choice([-math.pi / 2, math.pi / 2]))

    def vehicle(self, kind: str, x: float, z: float, heading: float, length: float) -> None:
        """Car / van (car), pickup / box truck (truck) or bus as frusta and boxes with decals."""
        sc, r = self.scene, self.rng
        pose = _Pose(x, z, heading)
        g = sc.new_group()
        label = {"car": _CAR, "van": _CAR, "pickup": _TRUCK, "truck": _TRUCK, "bus": _BUS}[kind]
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
        body_faces = sc.solid(_prism(pose, (-half, half), (-w / 2, w / 2), (clear, body)), paint, label, g, inst)
        for s, name in ((-1, "left"), (1, "right")):
            if name in body_faces:
                for a in axles:
                    disc = _ellipse(a, wheel_r, wheel_r, wheel_r, 12)
                    sid = sc.poly([pose(disc[:, 0], disc[:, 1], s * (w / 2 + 0.02))], label, "tire", g, inst)
                    hub = _ellipse(a, wheel_r, wheel_r * 0.55, wheel_r * 0.55, 10)
                    sc.decal(sid, [pose(hub[:, 0], hub[:, 1], s * (w / 2 + 0.02))], "chrome")
        if kind == "truck":
            box = _prism(pose, (-half, half - 2.5), (-w / 2 - 0.03, w / 2 + 0.03), (body, r.uniform(3.2, 3.8)))
            cargo = sc.solid(box, paint, label, g, inst)
            if "back" in cargo:
                sc.decal(cargo["back"][0], [_inset(cargo["back"][1], 0.495, 0.505, 0.02, 0.98)], "trim")
        if cab is not None:
            cab_faces = sc.solid(_prism(pose, cab, (-w / 2 + 0.08, w / 2 - 0.08), (body, roof), top,
                                        (-w / 2 + 0.2, w / 2 - 0.2)), paint, label, g, inst)
            glass = []
            for name, (sid, quad) in cab_faces.items():
                if name in ("left", "right"):
                    glass.append((sid, [_inset(quad, 0.06, 0.47, 0.12, 0.85), _inset(quad, 0.53, 0.94, 0.12, 0.85)]))
                elif name in ("front", "back"):
                    glass.append((sid, [_inset(quad, 0.06, 0.94, 0.1, 0.88)]))
            for sid, pieces in glass:
                sc.decal(sid, pieces, "vehicle_glass")
        if kind == "bus":
            for name in ("left", "right", "front", "back"):
                if name not in body_faces:
                    continue
                sid, quad = body_faces[name]
                if name in ("left", "right"):
                    n = max(int(length / 1.6), 2)
                    panes = [_inset(quad, (i + 0.08) / n, (i + 0.92) / n, 0.4, 0.85) for i in range(n)]
                else:
                    panes = [_inset(quad, 0.05, 0.95, 0.35 if name == "front" else 0.5, 0.86)]
                sc.decal(sid, panes, "vehicle_glass")
                if name == "front":
                    sc.decal(sid, [_inset(quad, 0.15, 0.85, 0.89, 0.97)], "display")
        for name, lamp, (v0, v1) in (("back", "taillight", (0.45, 0.75)), ("front", "headlight", (0.45, 0.7))):
            if name not in body_faces:
                continue
            sid, quad = body_faces[name]
            lamps = [_inset(quad, 0.04, 0.2, v0, v1), _inset(quad, 0.8, 0.96, v0, v1)]
            if kind == "bus":
                lamps = [_inset(quad, 0.04, 0.14, 0.08, 0.2), _inset(quad, 0.86, 0.96, 0.08, 0.2)]
            sc.decal(sid, [_inset(quad, 0.0, 1.0, 0.0, 0.16 if kind != "bus" else 0.06)], "trim")
            sc.decal(sid, lamps, lamp)
            sc.decal(sid, [_inset(quad, 0.38, 0.62, 0.2, 0.38 if kind != "bus" else 0.26)], "plate")
            if name == "front":
                sc.lights.append((pose(half + 5, 0.6, 0), (1.2, 1.1, 0.95), 5.0))  # headlight pool on the road
        sc.casters.append(_prism(pose, (-half, half), (-w / 2, w / 2), (0, roof)))
        sc.contacts.append(_prism(pose, (-half - 0.25, half + 0.25), (-w / 2 - 0.25, w / 2 + 0.25), (0, 0))[:4])

    def tram(self) -> None:
        """Tram (Cityscapes "train") in a left lane, with rails in the road."""
        sc, r = self.scene, self.rng
        x = -0.5 * self.lane_w
        heading = r.choice([0.0, math.pi])
        length = r.uniform(24, 34)
        z = r.uniform(12, 50)
        if not self.free(x - 1.5, x + 1.5, z - length / 2, z + length / 2):
            return
        rails = [_ground_quad(xr - 0.04, xr + 0.04, -5, self.z_far) for xr in (x - 0.72, x + 0.72)]
        sc.decal(self.road_sid, rails, "rail")
        pose = _Pose(x, z, heading)
        inst = sc.new_instance(_TRAIN)
        g = sc.new_group()
        faces = sc.solid(_prism(pose, (-length / 2, length / 2), (-1.2, 1.2), (0.35, 3.4)), "paint_tram", _TRAIN, g,
                         inst)
        for name, (sid, quad) in faces.items():
            if name in ("left", "right"):
                n = int(length / 1.8)
                sc.decal(sid, [_inset(quad, (i + 0.1) / n, (i + 0.9) / n, 0.35, 0.8) for i in range(n)],
                         "vehicle_glass")
                sc.decal(sid, [_inset(quad, 0, 1, 0, 0.1)], "trim")
            elif name in ("front", "back"):
                sc.decal(sid, [_inset(quad, 0.08, 0.92, 0.4, 0.85)], "vehicle_glass")
                sc.decal(sid, [_inset(quad, 0.2, 0.8, 0.88, 0.96)], "display")
                sc.decal(sid, [_inset(quad, 0.06, 0.18, 0.12, 0.2), _inset(quad, 0.82, 0.94, 0.12, 0.2)],
                         "headlight" if name == "front" else "taillight")
        pant = pose([0.0, 0.0, 0.0, 0.0], [3.4, 4.3, 4.35, 3.4], [-0.05, -0.6, -0.55, 0.0])
        sc.poly([pant], _TRAIN, "trim", g, inst)
        sc.casters.append(_prism(pose, (-length / 2, length / 2), (-1.2, 1.2), (0, 3.4)))
        sc.contacts.append(_prism(pose, (-length / 2, length / 2), (-1.4, 1.4), (0, 0))[:4])

    # -- people ------------------------------------------------------------------------------------------------------

    def pedestrians(self) -> None:
        r = self.rng
        for side in (-1, 1):
            x_in = self.edge(side) + side * self.verge[side]
            for _ in range(int(r.poisson(r.uniform(1.5, 9)))):
                z = r.uniform(2, 70)
                if self.in_crossing(z, z, 1):
                    continue
                x = x_in + side * r.uniform(0.4, self.sidewalk[side] - 0.3)
                for k in range(1 if r.random() < 0.7 else int(r.integers(2, 4))):
                    self.person(np.array([x + side * 0.6 * k, self.curb, z + r.normal(0, 0.4)]),
                                side_view=r.random() < 0.25)
        if self.crossing is not None:
            for _ in range(int(r.poisson(2.0))):
                z = self.crossing[0] - r.uniform(0.8, 3.4)
                x = r.uniform(self.x_left, self.x_right)
                if self.free(x - 0.3, x + 0.3, z - 0.3, z + 0.3):
                    self.person(np.array([x, 0, z]), side_view=True)
        for _ in range(int(r.poisson(0.5))):  # parked bicycles on the sidewalk
            side = r.choice([-1, 1])
            x = self.building_line[side] - side * r.uniform(0.4, 1.0)
            self.two_wheeler(np.array([x, self.curb, r.uniform(3, 40)]), motor=False,
                             heading=r.choice([-math.pi / 2, math.pi / 2]), rider=False)

    def person(self, base: np.ndarray, side_view: bool) -> None:
        """Pedestrian silhouette: walking in profile (crossing) or seen from the front / back (on the sidewalk)."""
        sc, r = self.scene, self.rng
        height = r.uniform(1.5, 1.95)
        s = height / 1.75
        hip, shoulder = 0.52 * height, 0.8 * height
        stride = r.uniform(0, 0.3) * s
        hem = hip - (r.uniform(0.2, 0.3) * s if r.random() < 0.25 else 0.0)  # coats reach below the hip
        parts: list[tuple[str, list[np.ndarray]]]
        if side_view:
            d = r.choice([-1, 1])

            def leg(foot: float) -> np.ndarray:
                return _limb((0, hip), (foot, 0.05), 0.15 * s, 0.1 * s)

            def arm(hand: float) -> np.ndarray:
                return _limb((0, shoulder), (hand, hip * 0.95), 0.09 * s, 0.07 * s)

            shoe = np.array([[-0.06, 0], [0.16 * s, 0], [0.1, 0.07], [-0.06, 0.07]]) * (d, 1) + (d * stride, 0)
            torso = np.array([[-0.1 * s, hem], [0.11 * s, hem], [0.12 * s, shoulder + 0.02],
                              [-0.1 * s, shoulder + 0.02]])
            parts = [("bottom", [leg(-d * stride)]), ("top", [arm(d * stride * 0.6)]), ("top", [torso]),
                     ("bottom", [leg(d * stride)]), ("shoe", [shoe]), ("top", [arm(-d * stride * 0.6)])]
            head_x = d * 0.02
        else:
            spread = 0.09 * s
            legs = [_limb((k * spread, hip), (k * (spread + r.uniform(0, 0.04)), 0.05), 0.15 * s, 0.11 * s)
                    for k in (-1, 1)]
            shoes = [np.array([[-0.06, 0], [0.06, 0], [0.06, 0.06], [-0.06, 0.06]]) + (k * spread, 0) for k in (-1, 1)]
            torso = np.array([[-0.17 * s, hem], [0.17 * s, hem], [0.21 * s, shoulder], [0.12 * s, shoulder + 0.05],
                              [-0.12 * s, shoulder + 0.05], [-0.21 * s, shoulder]])
            arms = [_limb((k * 0.2 * s, shoulder - 0.02), (k * 0.25 * s, hip * 0.9), 0.09 * s, 0.07 * s)
                    for k in (-1, 1)]
            parts = [("bottom", legs), ("shoe", shoes), ("top", [torso] + arms)]
            if r.random() < 0.25:
                backpack = np.array([[-0.14, hip + 0.1], [0.14, hip + 0.1], [0.14, shoulder - 0.05],
                                     [-0.14, shoulder - 0.05]]) * (s, 1)
                parts.append(("top", [backpack]))
            head_x = 0.0
        parts += [("skin", [_limb((head_x, shoulder), (head_x, shoulder + 0.06), 0.07 * s),
                            _ellipse(head_x, height - 0.11 * s, 0.085 * s, 0.115 * s)]),
                  ("hair", [_ellipse(head_x, height - 0.09 * s, 0.09 * s, 0.09 * s, 10, 0, math.pi)])]
        sc.billboard(base, parts, _PERSON, sc.new_group(), sc.new_instance(_PERSON))
        sc.casters.append(np.array([base + (dx, dy, 0) for dx in (-0.25, 0.25) for dy in (0, height)]))

    def two_wheeler(self, base: np.ndarray, motor: bool, heading: float, rider: bool = True) -> None:
        """Bicycle or motorcycle, with or without a rider; side view when crossing, else rear / front view."""
        sc = self.scene
        label = _MOTORCYCLE if motor else _BICYCLE
        g = sc.new_group()
        to_cam = self.cam.to_camera(np.array([[0.0, 0, 0], [math.sin(heading), 0, math.cos(heading)]]))
        side_view = abs(to_cam[1, 0] - to_cam[0, 0]) > 0.5
        d = 1 if to_cam[1, 0] > to_cam[0, 0] else -1  # +1: the front points right in the image
        parts: list[tuple[str, list[np.ndarray]]]
        if side_view:
            wr = 0.31 if motor else 0.34
            wheels = [d * (0.7 if motor else 0.52), -d * (0.7 if motor else 0.52)]  # front, rear
            if motor:
                body = np.array([[-0.55, 0.4], [0.45, 0.4], [0.55, 0.72], [0.35, 0.95], [0.0, 0.88], [-0.35, 0.85],
                                 [-0.72, 0.78]]) * (d, 1)
                hubs = [_ellipse(x, wr, wr * 0.55, wr * 0.55, 10) for x in wheels]
                fork = _limb((d * 0.45, 0.95), (wheels[0], wr), 0.06)
                exhaust = _limb((-d * 0.1, 0.35), (-d * 0.8, 0.45), 0.08)
                parts = [("tire", [_ellipse(x, wr, wr, wr, 14) for x in wheels]), ("chrome", hubs + [fork, exhaust]),
                         ("moto", [body])]
                seat, bar = (-d * 0.2, 0.9), (d * 0.4, 1.05)
            else:
                # each tyre is one even-odd contour: the outer circle, then the inner one reversed
                tyres = [np.concatenate([_ellipse(x, wr, wr, wr, 16), _ellipse(x, wr, wr - 0.05, wr - 0.05, 16)[::-1]])
                         for x in wheels]
                bb, seat_t, head_t, head_b = (0.0, 0.3), (-d * 0.12, 0.85), (d * 0.4, 0.85), (d * 0.45, 0.7)
                front, rear = (wheels[0], wr), (wheels[1], wr)
                joints = ((bb, seat_t), (seat_t, head_t), (bb, head_b), (rear, bb), (rear, seat_t), (head_b, front),
                          (head_t, (d * 0.38, 1.0)), ((d * 0.3, 1.0), (d * 0.45, 1.0)))
                saddle = _limb((-d * 0.2, 0.9), (-d * 0.02, 0.9), 0.05)
                parts = [("tire", tyres), ("frame", [_limb(a, b, 0.04) for a, b in joints] + [saddle])]
                seat, bar = (-d * 0.12, 0.92), (d * 0.38, 1.0)
        else:
            w = 0.16 if motor else 0.05
            h = 0.62 if motor else 0.68
            parts = [("tire", [np.array([[-w / 2, 0], [w / 2, 0], [w / 2, h], [-w / 2, h]])])]
            if motor:
                parts.append(("moto", [np.array([[-0.24, 0.4], [0.24, 0.4], [0.2, 0.95], [-0.2, 0.95]])]))
                parts.append(("chrome", [_limb((-0.4, 1.08), (0.4, 1.08), 0.04)]))
            else:
                parts.append(("frame", [_limb((-0.28, 1.0), (0.28, 1.0), 0.03), _limb((0, 0.7), (0, 0.92), 0.04),
                                        np.array([[-0.07, 0.9], [0.07, 0.9], [0.07, 0.95], [-0.07, 0.95]])]))
            seat, bar = (0.0, 0.95 if motor else 0.92), (0.0, 1.05)
        sc.billboard(base, parts, label, g, sc.new_instance(label))
        if rider:
            self.rider(base, seat, bar, side_view, d, motor)
        sc.casters.append(np.array([base + (dx, dy, 0) for dx in (-0.8, 0.8) for dy in (0, 1.6)]))

    def rider(self, base: np.ndarray, seat: tuple[float, float], bar: tuple[float, float], side_view: bool, d: int,
              motor: bool) -> None:
        """Seated rider on the two-wheeler at ``base`` (seat and handlebar in its billboard metres)."""
        sc, r = self.scene, self.rng
        s = r.uniform(0.92, 1.08)
        g = sc.new_group()
        sx, sy = seat
        head_mat = "helmet" if motor or r.random() < 0.4 else "hair"
        if side_view:
            shoulder = (sx + d * 0.25 * s, sy + 0.52 * s)
            knee = (sx + d * 0.35 * s, sy + (0.02 if motor else 0.05))
            legs = [_limb((sx, sy), knee, 0.16 * s, 0.12 * s), _limb(knee, (sx + d * 0.2, 0.3), 0.12 * s, 0.1 * s)]
            body = [_limb((sx, sy - 0.02), shoulder, 0.26 * s, 0.3 * s), _limb(shoulder, bar, 0.09 * s, 0.07 * s)]
            hx, hy = shoulder[0] + d * 0.06, shoulder[1] + 0.16 * s
            parts = [("bottom", legs), ("top", body), ("skin", [_ellipse(hx, hy, 0.085 * s, 0.11 * s)]),
                     (head_mat, [_ellipse(hx, hy + 0.03 * s, 0.11 * s, 0.1 * s, 10, 0, math.pi)])]
        else:
            top = sy + 0.6 * s
            parts = [("bottom", [_limb((-0.14 * s, sy), (-0.2 * s, 0.15), 0.14 * s, 0.11 * s),
                                 _limb((0.14 * s, sy), (0.2 * s, 0.15), 0.14 * s, 0.11 * s)]),
                     ("top", [np.array([[-0.18 * s, sy - 0.05], [0.18 * s, sy - 0.05], [0.22 * s, top],
                                        [-0.22 * s, top]]),
                              _limb((-0.21 * s, top - 0.05), (-0.3 * s, bar[1]), 0.09 * s, 0.07 * s),
                              _limb((0.21 * s, top - 0.05), (0.3 * s, bar[1]), 0.09 * s, 0.07 * s)]),
                     ("skin", [_ellipse(0, top + 0.14 * s, 0.085 * s, 0.115 * s)]),
                     (head_mat, [_ellipse(0, top + 0.17 * s, 0.1 * s, 0.1 * s, 10, 0, math.pi)])]
        # the rider sits a little nearer the camera than the bike's centre plane, so it occludes it
        sc.billboard(base, parts, _RIDER, g, sc.new_instance(_RIDER), lift=0.08)

    def ego_hood(self) -> None:
        """Bonnet of the recording car at the bottom edge (Cityscapes' "ego vehicle", ignored in training)."""
        cam, r = self.cam, self.rng
        top = cam.height * (1 - r.uniform(0.05, 0.12))
        xs = np.linspace(-0.05, 1.05, 24) * cam.width
        ys = top + (cam.height - top) * 0.6 * ((xs / cam.width - 0.5) * 2) ** 2
        pts = np.concatenate([np.stack([xs, ys], -1), [[xs[-1], cam.height + 1], [xs[0], cam.height + 1]]])
        self.scene.screen(pts, _EGO_VEHICLE, "hood")


# ----------------------------------------------------------------------------------------------------------------
# Appearance: styles and conditions over the G-buffer

_SRGB_GAMMA = 2.2


def _material_table() -> dict[str, np.ndarray]:
    """Material properties as arrays indexed by material id, for vectorised shading (colours in sRGB 0-1)."""
    mats = list(_MATERIALS.values())
    colors = np.zeros((len(mats), max(len(m.colors) for m in mats), 3), np.float32)
    for i, m in enumerate(mats):
        colors[i, : len(m.colors)] = np.asarray(m.colors, np.float32) / 255
    return {
        "colors": colors,
        "count": np.array([len(m.colors) for m in mats]),
        "jitter": np.array([m.jitter for m in mats], np.float32),
        "texture": np.array([_TEXTURES.index(m.texture) for m in mats]),
        "scale": np.array([m.scale for m in mats], np.float32),
        "amp": np.array([m.amp for m in mats], np.float32),
        "glow": np.array([m.glow for m in mats], np.float32),
        "wet": np.array([m.wet for m in mats], np.float32),
        "snow": np.array([m.snow for m in mats], np.float32),
    }


_MAT_TABLE = _material_table()
_GROUND_LABELS = np.array([_ROAD, _SIDEWALK, _TERRAIN])


@dataclass
class _Weather:
    """Light and atmosphere of a condition (linear RGB, scene-referred)."""

    sun: float  # direct sun intensity
    ambient: float  # sky light intensity
    sun_color: tuple[float, float, float]
    ambient_color: tuple[float, float, float]
    horizon: tuple[float, float, float]  # sky colour at the horizon
    zenith: tuple[float, float, float]
    haze: float  # extinction coefficient (1/m) of fog / rain / snow haze
    airlight: tuple[float, float, float]
    glow: float  # emission scale of lamps and lit windows
    key: float  # auto-exposure target (mean luminance)


def _weather(condition: str, rng: np.random.Generator) -> _Weather:
    """Randomised light and atmosphere for a condition."""
    u = rng.uniform
    if condition == "clear":
        return _Weather(u(0.9, 1.4), u(0.3, 0.5), (1.0, 0.95, 0.86), (0.75, 0.85, 1.0), (0.62, 0.7, 0.82),
                        (0.16, 0.32, 0.75), u(0.0, 0.003), (0.8, 0.85, 0.95), 0.05, 0.2)
    if condition == "fog":
        grey = u(0.75, 0.95)
        return _Weather(u(0.05, 0.2), u(0.7, 0.9), (1.0, 0.97, 0.92), (0.92, 0.94, 0.97), (grey,) * 3, (grey,) * 3,
                        u(0.02, 0.05), (grey, grey * 1.01, grey * 1.03), 0.4, 0.22)
    if condition == "night":
        return _Weather(0.0, u(0.004, 0.012), (0, 0, 0), (0.5, 0.6, 1.0), (0.03, 0.022, 0.018), (0.002, 0.003, 0.008),
                        u(0.0, 0.004), (0.012, 0.011, 0.01), 1.0, u(0.02, 0.035))
    if condition == "rain":
        grey = u(0.45, 0.65)
        return _Weather(u(0.0, 0.08), u(0.5, 0.7), (1.0, 1.0, 1.0), (0.85, 0.9, 1.0), (grey, grey * 1.03, grey * 1.08),
                        (grey * 0.7, grey * 0.72, grey * 0.78), u(0.006, 0.015), (grey * 0.8,) * 3, 0.5, 0.14)
    grey = u(0.8, 0.95)
    return _Weather(u(0.1, 0.4), u(0.75, 0.95), (1.0, 0.98, 0.95), (0.9, 0.93, 1.0), (grey, grey, grey * 1.03),
                    (grey * 0.85, grey * 0.87, grey * 0.92), u(0.008, 0.02), (grey, grey, grey * 1.02), 0.3, 0.3)


def _surface_colors(scene: _Scene, style: str, rng: np.random.Generator) -> np.ndarray:
    """sRGB colour per surface; surfaces of one object with one material share it."""
    mat, group = np.asarray(scene.material), np.asarray(scene.group)
    keys, inverse = np.unique(group * len(_MATERIALS) + mat, return_inverse=True)
    m = keys % len(_MATERIALS)
    pick = (rng.random(len(keys)) * _MAT_TABLE["count"][m]).astype(int)
    base = _MAT_TABLE["colors"][m, pick]
    jitter = _MAT_TABLE["jitter"][m][:, None]
    if style == "synthetic":
        colors = base * (1 + rng.normal(0, 1, (len(keys), 1)) * jitter * 0.6)
        grey = colors.mean(1, keepdims=True)
        colors = grey + (colors - grey) * 1.3  # cleaner, more saturated "game" colours
    else:
        colors = base * (1 + rng.normal(0, 1, (len(keys), 1)) * jitter * 1.6) * (1 + rng.normal(0, 1, (len(keys), 3))
                                                                                 * jitter * 0.5)
    return np.clip(colors, 0.02, 1.0)[inverse.ravel()].astype(np.float32)


def _off_palette(srgb: np.ndarray, labels: np.ndarray, margin: float = 24 / 255) -> np.ndarray:
    """Move flat colours that come within ``margin`` of their class's Cityscapes palette colour away from it.

    Otherwise a network could solve the synthetic domain by colour lookup (data.md §7.3).
    """
    train = _TRAIN_LUT[labels]
    valid = train != 255
    palette = _PALETTE[np.where(valid, train, 0)] / 255
    near = valid & (np.abs(srgb - palette).max(1) < margin)
    pushed = np.clip(palette + np.where(palette < 0.5, 1.2, -1.2) * margin, 0, 1)
    return np.where(near[:, None], pushed, srgb)


def _dot3(a: np.ndarray, v: Sequence[float]) -> np.ndarray:
    """Dot product over the last axis (3) with a constant vector, without BLAS threads (workers stay on one core)."""
    return a[..., 0] * np.float32(v[0]) + a[..., 1] * np.float32(v[1]) + a[..., 2] * np.float32(v[2])


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.power(np.clip(srgb, 0, 1), _SRGB_GAMMA).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int = 8) -> np.ndarray:
    """Low-frequency screen-space noise in about [-1, 1] (clouds, fog density, grime)."""
    small = rng.standard_normal((cells, max(cells * width // max(height, 1), 1))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _shadow_masks(scene: _Scene, sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen-space masks of cast sun shadows (object hulls projected along the sun) and vehicle contact shadows."""
    cam = scene.cam
    masks = []
    for polygons in (_sun_polygons(scene.casters, sun) if sun[1] > 0.05 else [], scene.contacts):
        mask = np.zeros((cam.height, cam.width), np.uint8)
        for poly in polygons:
            clipped = _clip_near(cam.to_camera(poly))
            if clipped is not None:
                uv = np.stack([cam.cx + cam.f * clipped[:, 0] / clipped[:, 2],
                               cam.cy - cam.f * clipped[:, 1] / clipped[:, 2]], -1)
                cv2.fillPoly(mask, [np.round(uv * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        sigma = max(cam.width / 400, 0.6)
        masks.append(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma))
    return masks[0], masks[1]


def _sun_polygons(casters: list[np.ndarray], sun: np.ndarray) -> list[np.ndarray]:
    polys = []
    for pts in casters:
        ground = pts[:, [0, 2]] - pts[:, 1:2] / sun[1] * sun[[0, 2]]
        hull = cv2.convexHull(np.concatenate([ground, pts[:, [0, 2]]]).astype(np.float32))[:, 0]
        polys.append(np.column_stack([hull[:, 0], np.full(len(hull), 0.01), hull[:, 1]]))
    return polys


def _point_lights(scene: _Scene, xyz: tuple[np.ndarray, ...], normal: np.ndarray) -> np.ndarray:
    """Linear light of lamps and headlight pools, evaluated only inside each light's screen footprint."""
    cam = scene.cam
    out = np.zeros((cam.height, cam.width, 3), np.float32)
    for pos, color, radius in scene.lights:
        pc = cam.to_camera(pos)
        reach = 3.0 * radius
        if pc[2] + reach < _NEAR:
            continue
        zc = max(pc[2] - reach, _NEAR)
        u0 = int(max(cam.cx + cam.f * (pc[0] - reach) / zc, 0))
        u1 = int(min(cam.cx + cam.f * (pc[0] + reach) / zc + 1, cam.width))
        v0 = int(max(cam.cy - cam.f * (pc[1] + reach) / zc, 0))
        v1 = int(min(cam.cy - cam.f * (pc[1] - reach) / zc + 1, cam.height))
        if u0 >= u1 or v0 >= v1:
            continue
        d = np.stack([c[v0:v1, u0:u1] - p for c, p in zip(xyz, pos)], -1)
        dist2 = np.sum(d * d, -1)
        facing = np.clip(-np.sum(d * normal[v0:v1, u0:u1], -1) / np.sqrt(dist2 + 1e-6), 0, 1)
        out[v0:v1, u0:u1] += ((0.25 + 0.75 * facing) / (1 + dist2 / radius**2))[..., None] * np.asarray(color,
                                                                                                          np.float32)
    return out


@dataclass
class _GBuffer:
    """Per-pixel geometry of a rendered scene: surface ids and what shading needs from them."""

    sid: np.ndarray  # HxW surface ids (0 = sky)
    sky: np.ndarray  # HxW bool
    label: np.ndarray  # HxW labelIds
    material: np.ndarray  # HxW material ids
    normal: np.ndarray  # HxWx3 world normals (facing the camera)
    xyz: tuple[np.ndarray, np.ndarray, np.ndarray]  # world coordinates of the visible points
    depth: np.ndarray  # HxW camera z (large for sky)
    distance: np.ndarray  # HxW distance along the ray (inf for sky)
    elevation: np.ndarray  # HxW tangent of the ray's elevation angle

    @classmethod
    def of(cls, scene: _Scene) -> "_GBuffer":
        """Read the G-buffer off a rasterised scene."""
        cam, sid = scene.cam, scene.raster.surf
        depth = 1.0 / np.maximum(scene.raster.invz, 1e-6)
        ray_x = ((np.arange(cam.width, dtype=np.float32) - cam.cx) / cam.f)[None, :]
        ray_y = ((cam.cy - np.arange(cam.height, dtype=np.float32)) / cam.f)[:, None]
        sky = sid == 0
        return cls(sid=sid, sky=sky, label=np.asarray(scene.label)[sid], material=np.asarray(scene.material)[sid],
                   normal=np.asarray(scene.normal, np.float32)[sid],
                   xyz=cam.to_world(ray_x * depth, ray_y * depth, depth), depth=depth,
                   distance=np.where(sky, np.inf, depth * np.sqrt(1 + ray_x**2 + ray_y**2)),
                   elevation=np.broadcast_to(ray_y, sid.shape))


def _shade(scene: _Scene, seed: int, style: str, condition: str) -> np.ndarray:
    """Render the G-buffer of ``scene`` to an HxWx3 uint8 RGB image."""
    style_rng = np.random.default_rng(np.random.SeedSequence([seed, _STYLE_STREAM, STYLES.index(style)]))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CONDITION_STREAM, STYLES.index(style),
                                                        CONDITIONS.index(condition)]))
    flat = style == "synthetic"
    weather = _weather(condition, rng)
    g = _GBuffer.of(scene)
    srgb = _surface_colors(scene, style, style_rng)
    if flat:
        radiance = _flat_radiance(scene, g, srgb, weather, condition, style_rng)
    else:
        radiance = _lit_radiance(scene, g, srgb, weather, condition, style_rng, rng)
    emission = _MAT_TABLE["glow"][g.material] * np.float32(weather.glow)
    radiance = radiance + emission  # the sky's material does not glow
    if weather.glow > 0.2:
        spread = scene.cam.width / 512
        radiance += 0.35 * cv2.GaussianBlur(emission, (0, 0), 3 * spread) + 0.25 * cv2.GaussianBlur(
            emission, (0, 0), 12 * spread)
    if weather.haze > 0 and not (flat and condition == "clear"):  # the flat source has no aerial perspective
        density = weather.haze * (1 + (0 if flat else 0.25 * _smooth_noise(rng, *g.sky.shape, 4)))
        transmission = np.exp(-density * np.minimum(g.distance, 1e4))[..., None]
        radiance = radiance * transmission + np.float32(weather.airlight) * (1 - transmission)
    if flat:
        image = np.power(np.clip(radiance, 0, 1), 1 / _SRGB_GAMMA)
    else:
        image = _expose(radiance, g.sky, weather, condition, rng)
    if condition == "rain":
        image = _rain_streaks(image, rng, flat)
    elif condition == "snow":
        image = _snowflakes(image, rng)
    if not flat:
        image = _sensor(image, condition, rng)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def _flat_radiance(scene: _Scene, g: _GBuffer, srgb: np.ndarray, weather: _Weather, condition: str,
                   rng: np.random.Generator) -> np.ndarray:
    """Synthetic style: one colour per surface (flat-shaded from a fixed light), off-palette, and a flat sky."""
    normals = np.asarray(scene.normal, np.float32)
    brightness = 0.8 + 0.2 * np.clip(_dot3(normals, (0.35, 0.85, -0.4)), -1, 1)
    srgb = _off_palette(np.clip(srgb * brightness[:, None], 0, 1), np.asarray(scene.label))
    light = {"clear": 1.0, "night": 0.1, "fog": 0.85, "rain": 0.6, "snow": 0.95}[condition]
    sky = _to_linear(np.clip(np.array(weather.horizon) ** (1 / _SRGB_GAMMA) * rng.uniform(0.9, 1.05), 0, 1))
    albedo = _to_linear(srgb)[g.sid] * np.float32(light)
    return np.where(g.sky[..., None], sky * np.float32(0.08 if condition == "night" else 1.0), albedo)


def _lit_radiance(scene: _Scene, g: _GBuffer, srgb: np.ndarray, weather: _Weather, condition: str,
                  style_rng: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    """Realistic style: textured albedo, sun with cast and contact shadows, sky light, lamps, snow, wet ground."""
    cam = scene.cam
    height, width = g.sid.shape
    m = g.material
    azimuth, sun_elevation = style_rng.uniform(0, 2 * math.pi), style_rng.uniform(0.25, 1.05)
    sun = np.array([math.cos(sun_elevation) * math.sin(azimuth), math.sin(sun_elevation),
                    math.cos(sun_elevation) * math.cos(azimuth)], np.float32)
    # textures live in world coordinates on each plane: ground (x, z), facades along z (z, y), others (x, y)
    offsets = style_rng.uniform(0, _TEX_SIZE, (len(scene.label), 2)).astype(np.float32)[g.sid]
    horizontal = np.abs(g.normal[..., 1]) > 0.7
    along_z = ~horizontal & (np.abs(g.normal[..., 0]) > np.abs(g.normal[..., 2]))
    x, y, z = g.xyz
    scale = _MAT_TABLE["scale"][m]
    s_coord = np.where(horizontal | ~along_z, x, z) * scale + offsets[..., 0]
    t_coord = np.where(horizontal, z, y) * scale + offsets[..., 1]
    # mip level from the pixel footprint in texels; grazing ground is foreshortened by about depth / camera height
    footprint = scale * g.depth / cam.f * np.sqrt(np.maximum(1.0, np.abs(g.normal[..., 1]) * g.depth / cam.h))
    level = np.clip(np.rint(np.log2(np.maximum(footprint, 1.0))), 0, len(_MIP_SIGMAS) - 1).astype(np.intp)
    texture = _sample(_texture_bank(), level, _MAT_TABLE["texture"][m], s_coord, t_coord)
    grime = _smooth_noise(style_rng, height, width, 6)
    albedo = _to_linear(srgb)[g.sid] * np.clip(1 + _MAT_TABLE["amp"][m] * texture + 0.08 * grime, 0.15, 2.5)[..., None]
    if condition == "snow":
        cover = _MAT_TABLE["snow"][m] * np.clip(0.8 + 0.35 * _smooth_noise(rng, height, width, 12), 0, 1)
        cover = np.where(horizontal | (g.normal[..., 1] > 0.55), cover, 0)
        tracks = np.min([np.abs(x - track) for track in scene.wheel_tracks] or [np.full_like(x, 9.0)], 0)
        cover = np.where((g.label == _ROAD) & (tracks < 0.22), cover * 0.35, cover)
        cover = np.where(g.label == _VEGETATION, _MAT_TABLE["snow"][m] * (texture > 0.4), cover)
        albedo = albedo * (1 - cover[..., None]) + 0.85 * cover[..., None]
    elif condition == "rain":
        albedo = albedo * (1 - 0.45 * _MAT_TABLE["wet"][m])[..., None]  # wet surfaces are darker
    ground = np.isin(g.label, _GROUND_LABELS)
    cast, contact = _shadow_masks(scene, sun)
    direct = np.clip(_dot3(g.normal, sun), 0, 1) * (1 - np.where(ground, cast, 0)) * (1 - contact)
    occlusion = 1 - 0.4 * np.exp(-np.maximum(y, 0) / 0.7) * (1 - np.abs(g.normal[..., 1]))  # darker wall bases
    ambient = (weather.ambient * occlusion * (1 - 0.65 * contact))[..., None] * np.float32(weather.ambient_color)
    radiance = albedo * (ambient + (weather.sun * direct)[..., None] * np.float32(weather.sun_color))
    if condition == "night":
        radiance += albedo * _point_lights(scene, g.xyz, g.normal)
    t = (np.clip(g.elevation / 0.35, 0, 1) ** 0.7)[..., None]
    sky = np.float32(weather.horizon) * (1 - t) + np.float32(weather.zenith) * t
    clouds = np.clip(_smooth_noise(style_rng, height, width, 5) * 0.8 - 0.1, 0, 1)[..., None]
    sky = sky * (1 - 0.7 * clouds) + 0.7 * clouds * np.float32(weather.horizon) * 1.05
    sky = sky * (1 + 0.02 * _smooth_noise(rng, height, width, 12))[..., None]
    radiance = np.where(g.sky[..., None], sky, radiance)
    if condition == "rain":
        radiance = _wet_reflections(radiance, ground, _MAT_TABLE["wet"][m], g.distance)
    return radiance


def _expose(radiance: np.ndarray, sky: np.ndarray, weather: _Weather, condition: str,
            rng: np.random.Generator) -> np.ndarray:
    """White balance, auto exposure on the non-sky pixels and a soft-shoulder tone curve to sRGB 0-1."""
    radiance = radiance * (1 + rng.normal(0, 0.04, 3)).astype(np.float32)
    luminance = _dot3(radiance, (0.2126, 0.7152, 0.0722))
    mean = float(luminance[~sky].mean()) if (~sky).any() else float(luminance.mean())
    # a night camera cannot expose a dark street like day: it stays dark around the lights
    exposure = min(weather.key / max(mean, 1e-4), 6.0 if condition == "night" else 40.0)
    x = radiance * np.float32(exposure)
    return np.power(np.clip(x * (1 + x / 4) / (1 + x), 0, 1), 1 / _SRGB_GAMMA)


def _sensor(image: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """Lens blur, vignetting and sensor noise (stronger at night, where the gain is high)."""
    height, width = image.shape[:2]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8) * width / 512)
    yy, xx = np.mgrid[-1:1:height * 1j, -1:1:width * 1j].astype(np.float32)
    image = image * (1 - rng.uniform(0.1, 0.3) * (xx**2 + yy**2) / 2)[..., None]
    sigma = rng.uniform(0.025, 0.045) if condition == "night" else rng.uniform(0.006, 0.018)
    luma_noise = rng.normal(0, sigma, (height, width, 1)).astype(np.float32)
    return image + luma_noise + rng.normal(0, sigma / 2, (height, width, 3)).astype(np.float32)


def _sample(bank: np.ndarray, level: np.ndarray, texture: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of texel coordinates (s, t) in the texture bank (magnified texels stay smooth)."""
    mask = _TEX_SIZE - 1
    s0, t0 = np.floor(s), np.floor(t)
    fs, ft = (s - s0).astype(np.float32), (t - t0).astype(np.float32)
    i0, j0 = s0.astype(np.int32) & mask, t0.astype(np.int32) & mask
    i1, j1 = (i0 + 1) & mask, (j0 + 1) & mask
    top = bank[level, texture, j0, i0] * (1 - fs) + bank[level, texture, j0, i1] * fs
    bottom = bank[level, texture, j1, i0] * (1 - fs) + bank[level, texture, j1, i1] * fs
    return top * (1 - ft) + bottom * ft


def _wet_reflections(radiance: np.ndarray, ground: np.ndarray, wet: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Mirror what stands on wet ground about its contact row, per column (a flat puddle reflects uprights)."""
    height, width = ground.shape
    rows = np.arange(height)[:, None]
    contact = np.maximum.accumulate(np.where(~ground, rows, -1), axis=0)
    source = 2 * contact - rows
    valid = ground & (contact >= 0) & (source >= 0)
    mirrored = radiance[np.clip(source, 0, height - 1), np.arange(width)[None, :]]
    mirrored = cv2.blur(mirrored, (1, max(height // 64, 3)))
    weight = (wet * np.clip(0.45 + distance / 80, 0.45, 1.0) * valid)[..., None].astype(np.float32)
    return radiance * (1 - weight) + mirrored * weight


def _rain_streaks(image: np.ndarray, rng: np.random.Generator, flat: bool) -> np.ndarray:
    height, width = image.shape[:2]
    n = height * width // 220
    start = rng.uniform(0, 1, (n, 2)) * (width, height)
    length = rng.uniform(0.03, 0.1, n) * height
    angle = rng.normal(0.15, 0.05) + rng.normal(0, 0.03, n)
    end = start + np.stack([np.sin(angle), np.cos(angle)], -1) * length[:, None]
    mask = np.zeros((height, width), np.float32)
    cv2.polylines(mask, list(np.round(np.stack([start, end], 1) * 4).astype(np.int32)), False, 1.0, 1, cv2.LINE_AA, 2)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.6) * rng.uniform(0.3, 0.5) * (1 if flat else 1 + 0.5 * _smooth_noise(
        rng, height, width, 6))
    return image * (1 - mask[..., None]) + 0.85 * mask[..., None]


def _snowflakes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    n = height * width // 300
    mask = np.zeros((height, width), np.float32)
    centres = np.round(rng.uniform(0, 1, (n, 2)) * (width, height)).astype(int)
    radii = np.maximum(rng.exponential(0.7, n) * height / 256, 0.5)
    for (x, y), r in zip(centres, radii):
        cv2.circle(mask, (int(x), int(y)), int(round(r)), float(rng.uniform(0.5, 1.0)), -1, cv2.LINE_AA)
    mask = np.clip(cv2.GaussianBlur(mask, (0, 0), 0.7), 0, 1)
    return image * (1 - mask[..., None]) + 0.95 * mask[..., None]


# ----------------------------------------------------------------------------------------------------------------
# Public API


def _check(style: str, condition: str, height: int, width: int) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if height < 16 or width < 16:
        raise ValueError(f"frame size must be at least 16x16, got {height}x{width}")


def _boxed_instances(instance_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the small-box convention to an instanceIds map (labelId*1000+k for thing instances): returns the map
    with instances under ``MIN_BOX_SIDE`` turned into bare labelIds, and the tight xyxy pixel-edge boxes (float32
    Nx4) and trainIds (int64 N) of the instances that remain."""
    flat = instance_ids.ravel()
    index = np.flatnonzero(flat >= 1000)
    ids = flat[index]
    order = np.argsort(ids, kind="stable")
    ids, index = ids[order], index[order]
    if len(ids) == 0:
        return instance_ids, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    rows, cols = np.divmod(index, instance_ids.shape[1])
    boxes = np.stack([np.minimum.reduceat(cols, starts), np.minimum.reduceat(rows, starts),
                      np.maximum.reduceat(cols, starts) + 1, np.maximum.reduceat(rows, starts) + 1], -1)
    keep = (boxes[:, 2:] - boxes[:, :2]).min(1) >= MIN_BOX_SIDE
    small = np.isin(instance_ids, ids[starts][~keep])
    instance_ids = np.where(small, instance_ids // 1000, instance_ids)
    return instance_ids, boxes[keep].astype(np.float32), _TRAIN_LUT[ids[starts][keep] // 1000].astype(np.int64)


def render_frame(seed: int, height: int = 256, width: int = 512, style: str = "synthetic",
                 condition: str = "clear") -> Frame:
    """Render one frame; deterministic in (seed, size, style, condition), with geometry and labels from (seed, size)."""
    _check(style, condition, height, width)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    scene = _Street(np.random.default_rng(np.random.SeedSequence([seed, _SCENE_STREAM])), height, width).build()
    sid = scene.raster.surf
    label_ids = np.asarray(scene.label, np.uint8)[sid]
    instance_ids, boxes, box_train_ids = _boxed_instances(np.asarray(scene.inst, np.int32)[sid])
    return Frame(image=_shade(scene, seed, style, condition), label_ids=label_ids, train_ids=_TRAIN_LUT[label_ids],
                 instance_ids=instance_ids, boxes=boxes, box_train_ids=box_train_ids)


def _init_worker() -> None:
    """Worker processes render one frame at a time on one core each; OpenCV's own thread pool would oversubscribe."""
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class _SplitJob:
    """One split to write: frames 0..count-1 with seeds seed..seed+count-1 under root in the Cityscapes layout."""

    root: str
    split: str
    city: str
    count: int
    seed: int
    height: int
    width: int
    style: str
    condition: str


def _write_frames(job: _SplitJob, indices: Sequence[int]) -> int:
    """Render and write frames ``indices`` of a split (one worker task); returns how many."""
    image_dir = os.path.join(job.root, "leftImg8bit", job.split, job.city)
    label_dir = os.path.join(job.root, "gtFine", job.split, job.city)
    for i in indices:
        frame = render_frame(job.seed + i, job.height, job.width, job.style, job.condition)
        stem = f"{job.city}_{i:06d}_000019"
        outputs = {
            os.path.join(image_dir, f"{stem}_leftImg8bit.png"): frame.image[..., ::-1],
            os.path.join(label_dir, f"{stem}_gtFine_labelIds.png"): frame.label_ids,
            os.path.join(label_dir, f"{stem}_gtFine_labelTrainIds.png"): frame.train_ids,
            os.path.join(label_dir, f"{stem}_gtFine_instanceIds.png"): frame.instance_ids.astype(np.uint16),
        }
        for path, array in outputs.items():
            if not cv2.imwrite(path, np.ascontiguousarray(array)):
                raise OSError(f"could not write {path}")
    return len(indices)


def _write_splits(jobs: Sequence[_SplitJob], workers: int, progress: bool) -> int:
    """Write all frames of ``jobs``, in chunks spread over ``workers`` processes when > 1; returns the frame count."""
    for job in jobs:
        _check(job.style, job.condition, job.height, job.width)
        if job.count < 0 or job.seed < 0:
            raise ValueError(f"count and seed must be >= 0, got count={job.count}, seed={job.seed}")
        for top in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(job.root, top, job.split, job.city), exist_ok=True)
    chunk = 8
    tasks = [(job, range(i, min(i + chunk, job.count))) for job in jobs for i in range(0, job.count, chunk)]
    total = sum(job.count for job in jobs)
    with tqdm(total=total, unit="frame", disable=not progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                bar.update(_write_frames(*task))
        else:
            # spawn: safe with torch / OpenCV threads in the parent, and the same on every platform
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker) as pool:
                for n in pool.map(_write_frames, *zip(*tasks)):
                    bar.update(n)
    return total


def write_split(root: str, split: str, count: int, seed: int, height: int, width: int, style: str,
                condition: str = "clear", city: str | None = None, workers: int = 1, progress: bool = False) -> int:
    """Write ``count`` frames (seeds seed..seed+count-1) of one split in the Cityscapes layout; returns the count."""
    job = _SplitJob(root, split, city or f"{style}_{condition}", count, seed, height, width, style, condition)
    return _write_splits([job], workers, progress)


def write_benchmark(root: str, train: int = 300, val: int = 60, height: int = 256, width: int = 512, seed: int = 0,
                    workers: int = 1, progress: bool = False) -> dict[str, str]:
    """Write the source domain (synthetic/clear train + val) and realistic target domains (val, one per condition).

    Target seeds start after the source's and are shared by all target conditions, so the targets show the same
    scenes in different weather. Returns {domain name: dataset root}; root/benchmark.json describes the layout.
    """
    domains = {"source": ("synthetic", "clear", {"train": (train, seed), "val": (val, seed + train)})}
    target_seed = seed + train + val
    for condition in CONDITIONS:
        domains[f"target_{condition}"] = ("realistic", condition, {"val": (val, target_seed)})
    roots, summary, jobs = {}, {}, []
    for name, (style, condition, splits) in domains.items():
        roots[name] = os.path.join(root, name)
        city = f"{style}_{condition}"
        jobs += [_SplitJob(roots[name], split, city, count, first, height, width, style, condition)
                 for split, (count, first) in splits.items()]
        summary[name] = {"root": name, "style": style, "condition": condition, "city": city,
                         "splits": {s: {"count": c, "first_seed": fs} for s, (c, fs) in splits.items()}}
    _write_splits(jobs, workers, progress)
    meta = {
        "generator": "training.synth",
        "layout": "cityscapes",
        "size": [height, width],
        "seed": seed,
        "classes": list(CITYSCAPES_CLASSES),
        "label_files": ["gtFine_labelIds", "gtFine_labelTrainIds", "gtFine_instanceIds"],
        "domains": summary,
    }
    with open(os.path.join(root, "benchmark.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return roots


# ----------------------------------------------------------------------------------------------------------------
# Command line (`vltseg synth`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vltseg synth`: the whole benchmark, or one split with --style/--condition/--split/--count."""
    parser.add_argument("--out", required=True, help="output root directory")
    parser.add_argument("--train", type=int, default=300, help="source train frames (default 300)")
    parser.add_argument("--val", type=int, default=60, help="val frames per domain (default 60)")
    parser.add_argument("--size", type=parse_size, default=[256, 512], help="frame size HxW (default 256x512)")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    single = parser.add_argument_group("single split (instead of the whole benchmark)")
    single.add_argument("--style", choices=STYLES, help="appearance style (default synthetic)")
    single.add_argument("--condition", choices=CONDITIONS, help="weather / light condition (default clear)")
    single.add_argument("--split", help="split name, e.g. train or val (default train)")
    single.add_argument("--count", type=int, help="frames to write (default --train for train, else --val)")


def run(args: argparse.Namespace) -> int:
    """Write what ``args`` asks for and print one summary line per domain; returns the exit code."""
    height, width = args.size
    progress = sys.stderr.isatty()
    start = time.perf_counter()
    if any(getattr(args, k) is not None for k in ("style", "condition", "split", "count")):
        style, condition, split = args.style or "synthetic", args.condition or "clear", args.split or "train"
        count = args.count if args.count is not None else (args.train if split == "train" else args.val)
        n = write_split(args.out, split, count, args.seed, height, width, style, condition, workers=args.workers,
                        progress=progress)
        print(f"{split}: {n} frames {style}/{condition} {height}x{width}, seeds {args.seed}.."
              f"{args.seed + n - 1} -> {args.out} ({time.perf_counter() - start:.1f} s)")
        return 0
    roots = write_benchmark(args.out, args.train, args.val, height, width, args.seed, args.workers, progress)
    with open(os.path.join(args.out, "benchmark.json")) as f:
        domains = json.load(f)["domains"]
    for name, root in roots.items():
        d = domains[name]
        splits = " + ".join(f"{s['count']} {split}" for split, s in d["splits"].items())
        print(f"{name}: {splits} {d['style']}/{d['condition']} {height}x{width} -> {root}")
    print(f"wrote {os.path.join(args.out, 'benchmark.json')} ({time.perf_counter() - start:.1f} s)")
    return 0
