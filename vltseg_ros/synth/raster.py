"""Camera, near-plane clipping and the z-buffer rasteriser that turns planar 3-D polygons into a surface-id map."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import cv2
import numpy as np

NEAR = 0.3  # near clipping plane (m); the ego hood is screen-space and needs none


class Camera:
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

    def project(self, pc: np.ndarray) -> np.ndarray:
        """Camera-space points (n x 3, z > 0) -> pixel coordinates (n x 2: column, row)."""
        return np.stack([self.cx + self.f * pc[:, 0] / pc[:, 2], self.cy - self.f * pc[:, 1] / pc[:, 2]], -1)

    @property
    def back(self) -> np.ndarray:
        """World unit vector pointing from the scene towards the camera (billboard normal)."""
        return np.array([-self.sin, 0.0, -self.cos])


def clip_near(poly: np.ndarray) -> Optional[np.ndarray]:
    """Sutherland-Hodgman clip of a camera-space polygon against z >= NEAR."""
    out = []
    inside = poly[:, 2] >= NEAR
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        if inside[i]:
            out.append(a)
        if inside[i] != inside[(i + 1) % len(poly)]:
            out.append(a + (NEAR - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out) if len(out) >= 3 else None


class Raster:
    """Z-buffer of inverse depth plus a surface-id map; a plane's 1/z is affine in (u, v), so depth is exact."""

    def __init__(self, cam: Camera):
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
        polys = [p if p[:, 2].min() >= NEAR else clip_near(p) for p in contours]
        polys = [p for p in polys if p is not None]
        if not polys:
            return False
        uv = [cam.project(p) for p in polys]
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
        normal = newell(polys[0])
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


def newell(p: np.ndarray) -> np.ndarray:
    """Polygon normal (Newell's method), robust for any planar polygon."""
    q = np.roll(p, -1, 0)
    return np.array([
        np.sum((p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2])),
        np.sum((p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0])),
        np.sum((p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1])),
    ])
