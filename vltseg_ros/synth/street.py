"""The street layout (lanes, sidewalks, camera, cross street, claimed road space) and the order in which a scene is
built from it; each kind of object lives in its own module."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .buildings import backdrop, frontage
from .furniture import street_furniture
from .people import pedestrians
from .raster import Camera
from .road import ground
from .scene import EGO_VEHICLE, Scene
from .vehicles import parked_bicycles, traffic

class Street:
    """Builds one street scene from a generator; all randomness of geometry and labels comes from ``rng``."""

    # Vehicles and people stand at most this far along the street (m). Farther ones are a few pixels at 256x512:
    # under the small-box rule they get no box, yet a detector that finds them scores false positives.
    thing_depth = 45.0

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
        self.cam = Camera(height, width, f=width * r.uniform(0.62, 0.95), cx=width * (0.5 + r.uniform(-0.02, 0.02)),
                          cy=height * r.uniform(0.38, 0.5), x=cam_x, h=r.uniform(1.3, 1.8),
                          yaw=r.uniform(-0.06, 0.06))
        self.scene = Scene(self.cam)
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

    def build(self) -> Scene:
        """Lay out the whole street and return the drawn scene."""
        ground(self)
        backdrop(self)
        for side in (-1, 1):
            frontage(self, side)
            street_furniture(self, side)
        traffic(self)
        pedestrians(self)
        parked_bicycles(self)
        if self.rng.random() < 0.35:
            self.ego_hood()
        return self.scene

    def free(self, x0: float, x1: float, z0: float, z1: float) -> bool:
        """Whether a road footprint is free; claims it if so."""
        for a0, a1, b0, b1 in self.occupied:
            if x0 < a1 and x1 > a0 and z0 < b1 and z1 > b0:
                return False
        self.occupied.append((x0, x1, z0, z1))
        return True

    def ego_hood(self) -> None:
        """Bonnet of the recording car at the bottom edge (Cityscapes' "ego vehicle", ignored in training)."""
        cam, r = self.cam, self.rng
        top = cam.height * (1 - r.uniform(0.05, 0.12))
        xs = np.linspace(-0.05, 1.05, 24) * cam.width
        ys = top + (cam.height - top) * 0.6 * ((xs / cam.width - 0.5) * 2) ** 2
        pts = np.concatenate([np.stack([xs, ys], -1), [[xs[-1], cam.height + 1], [xs[0], cam.height + 1]]])
        self.scene.screen(pts, EGO_VEHICLE, "hood")
