"""Materials (appearance only; the scene refers to them by name) and the procedural textures they use."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Material:
    """Base colours and texture, and how the surface reacts to night, rain and snow."""

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
MATERIALS: dict[str, Material] = {
    "asphalt": Material(((80, 80, 84), (94, 92, 94), (66, 67, 72), (108, 104, 100)), 0.08, "asphalt", 48, 0.3,
                        wet=0.45, snow=0.8),
    "paint": Material(((228, 228, 222), (232, 226, 214)), 0.04, "asphalt", 48, 0.15, wet=0.3, snow=0.8),
    "paint_yellow": Material(((222, 186, 60),), 0.05, "asphalt", 48, 0.15, wet=0.3, snow=0.8),
    "rail": Material(((142, 140, 136),), 0.05, "metal", 32, 0.2, wet=0.5, snow=0.5),
    "pavement": Material(((152, 148, 142), (172, 162, 150), (132, 130, 127), (166, 150, 134), (120, 112, 108)),
                         0.08, "paving", 48, 0.3, wet=0.25, snow=0.95),
    "curb": Material(((166, 164, 158), (140, 140, 138)), 0.05, "concrete", 32, 0.3, snow=0.6),
    "grass": Material(((86, 118, 52), (104, 126, 60), (80, 100, 52), (120, 124, 70)), 0.1, "grass", 40, 0.45,
                      snow=1.0),
    "soil": Material(((122, 102, 78), (106, 96, 82), (140, 124, 96)), 0.08, "grass", 40, 0.4, snow=1.0),
    "plaster": Material(((202, 192, 172), (182, 172, 162), (216, 206, 186), (172, 152, 132), (192, 122, 92),
                         (152, 162, 172), (226, 216, 200), (160, 170, 150)), 0.1, "plaster", 16, 0.3),
    "brick": Material(((152, 82, 62), (132, 72, 56), (166, 102, 76), (120, 96, 80)), 0.08, "brick", 64, 0.5),
    "concrete": Material(((152, 152, 150), (126, 126, 126), (172, 170, 162), (140, 136, 128)), 0.06, "concrete",
                         24, 0.35),
    "roof": Material(((120, 60, 50), (70, 70, 76), (96, 70, 60)), 0.08, "brick", 48, 0.35, snow=0.9),
    "glass": Material(((62, 72, 84), (82, 96, 112), (46, 52, 62), (100, 110, 118)), 0.08, "plaster", 8, 0.35),
    "glass_lit": Material(((62, 72, 84), (82, 96, 112), (46, 52, 62)), 0.08, "plaster", 8, 0.35,
                          glow=(1.6, 1.15, 0.6)),
    "door": Material(((92, 72, 52), (62, 62, 66), (120, 40, 30)), 0.08, "bark", 32, 0.2),
    "far_building": Material(((150, 152, 160), (172, 166, 160), (132, 136, 146), (120, 118, 116)), 0.08,
                             "concrete", 8, 0.25),
    "stone": Material(((142, 136, 126), (166, 160, 150), (122, 112, 102), (180, 172, 160)), 0.08, "concrete",
                      32, 0.4),
    "fence_metal": Material(((72, 76, 72), (112, 112, 106), (52, 62, 52), (40, 40, 42)), 0.06, "metal", 32, 0.1),
    "fence_wood": Material(((142, 106, 72), (122, 92, 62), (162, 132, 96)), 0.08, "bark", 64, 0.3),
    "pole": Material(((122, 122, 120), (92, 96, 96), (72, 76, 74), (152, 152, 146)), 0.06, "metal", 32, 0.15),
    "lamp": Material(((232, 230, 212),), 0.02, glow=(3.0, 2.4, 1.5)),
    "sign_red": Material(((196, 32, 36), (176, 28, 32)), 0.05, "metal", 64, 0.08),
    "sign_white": Material(((236, 236, 230),), 0.03, "metal", 64, 0.08),
    "sign_blue": Material(((22, 72, 162), (30, 90, 170)), 0.05, "metal", 64, 0.08),
    "sign_yellow": Material(((242, 192, 24),), 0.04, "metal", 64, 0.08),
    "sign_green": Material(((22, 112, 62),), 0.05, "metal", 64, 0.08),
    "sign_back": Material(((152, 152, 150), (120, 122, 122)), 0.05, "metal", 32, 0.1),
    "housing": Material(((36, 36, 36), (52, 52, 46), (196, 168, 44)), 0.05, "metal", 32, 0.1),
    "lamp_red": Material(((240, 60, 40),), 0.03, glow=(3.0, 0.4, 0.2)),
    "lamp_amber": Material(((246, 170, 30),), 0.03, glow=(3.0, 1.8, 0.2)),
    "lamp_green": Material(((40, 220, 140),), 0.03, glow=(0.3, 2.6, 1.6)),
    "lamp_off": Material(((46, 44, 40),), 0.03),
    "foliage": Material(((62, 96, 42), (76, 112, 46), (52, 82, 36), (92, 112, 52), (72, 92, 42), (110, 120, 58)),
                        0.12, "foliage", 10, 0.6, snow=0.5),
    "far_trees": Material(((52, 76, 44), (66, 86, 50), (80, 92, 60)), 0.1, "foliage", 4, 0.4, snow=0.5),
    "trunk": Material(((82, 66, 52), (96, 82, 62), (72, 62, 56)), 0.08, "bark", 48, 0.35),
    "skin": Material(((232, 192, 162), (202, 152, 122), (162, 112, 82), (112, 76, 56), (240, 206, 182)), 0.05,
                     "fabric", 64, 0.05),
    "hair": Material(((42, 32, 26), (92, 62, 36), (22, 22, 22), (162, 132, 82), (122, 122, 122)), 0.06,
                     "fabric", 64, 0.15),
    "top": Material(((42, 42, 46), (202, 202, 202), (162, 32, 32), (32, 62, 132), (62, 102, 62), (152, 122, 92),
                     (232, 182, 42), (92, 42, 102), (20, 20, 22), (110, 60, 40)), 0.1, "fabric", 64, 0.2),
    "bottom": Material(((42, 46, 72), (32, 32, 32), (92, 92, 96), (132, 112, 82), (62, 72, 92), (20, 20, 24)),
                       0.08, "fabric", 64, 0.2),
    "shoe": Material(((30, 30, 30), (200, 200, 200), (80, 50, 30)), 0.05),
    "paint_car": Material(_GREY_PAINT, 0.06, "metal", 32, 0.06),
    "paint_truck": Material(((232, 232, 232), (202, 42, 32), (32, 72, 152), (80, 80, 80), (202, 162, 32),
                             (52, 102, 62)), 0.06, "metal", 24, 0.1),
    "paint_bus": Material(((222, 222, 216), (202, 42, 36), (240, 200, 32), (32, 122, 182), (42, 132, 72)), 0.05,
                          "metal", 24, 0.08),
    "paint_tram": Material(((232, 232, 222), (202, 32, 32), (240, 192, 42), (40, 90, 160)), 0.05, "metal", 24,
                           0.08),
    "vehicle_glass": Material(((26, 30, 40), (42, 46, 56), (60, 70, 80)), 0.06, "plaster", 8, 0.3),
    "tire": Material(((26, 26, 26), (34, 33, 32)), 0.03, "fabric", 64, 0.1),
    "trim": Material(((40, 40, 42), (60, 60, 62)), 0.04, "metal", 32, 0.1),
    "chrome": Material(((170, 172, 176),), 0.04, "metal", 32, 0.1),
    "headlight": Material(((226, 226, 216),), 0.02, glow=(3.0, 2.8, 2.4)),
    "taillight": Material(((170, 24, 24),), 0.04, glow=(2.2, 0.15, 0.1)),
    "display": Material(((30, 30, 30),), 0.02, glow=(2.0, 1.4, 0.2)),
    "plate": Material(((232, 232, 226), (240, 210, 40)), 0.02),
    "frame": Material(((32, 32, 32), (182, 32, 32), (32, 82, 162), (202, 202, 202), (42, 122, 62)), 0.06, "metal",
                      64, 0.05),
    "moto": Material(((22, 22, 22), (192, 32, 32), (32, 52, 122), (202, 202, 202), (230, 120, 20)), 0.06, "metal",
                     48, 0.06),
    "helmet": Material(((22, 22, 22), (232, 232, 232), (202, 42, 42), (40, 60, 140)), 0.05, "metal", 64, 0.05),
    "hood": Material(((22, 22, 24), (202, 202, 206), (62, 72, 82)), 0.04, "metal", 32, 0.05),
}
MATERIAL_INDEX = {name: i for i, name in enumerate(MATERIALS)}
TEXTURES = ("none", "asphalt", "paving", "concrete", "plaster", "brick", "grass", "foliage", "bark", "fabric",
            "metal")
TEX_SIZE = 128  # power of two: texel indices wrap with a bit mask
MIP_SIGMAS = (0.0, 1.0, 2.0, 4.0)


@functools.lru_cache(maxsize=1)
def texture_bank() -> np.ndarray:
    """Tileable zero-mean textures as [mip level, texture, T, T] float32 (fixed seed: part of the renderer)."""
    rng = np.random.default_rng(20240519)
    size = TEX_SIZE
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
    bank = np.stack([(t - t.mean()) / max(t.std(), 1e-6) for t in (textures[k] for k in TEXTURES)])
    spectrum = np.fft.fft2(bank)
    levels = [np.fft.ifft2(spectrum * np.exp(-2 * (np.pi * s) ** 2 * (fx**2 + fy**2))).real for s in MIP_SIGMAS]
    return np.stack(levels).astype(np.float32)


def _material_table() -> dict[str, np.ndarray]:
    """Material properties as arrays indexed by material id, for vectorised shading (colours in sRGB 0-1)."""
    mats = list(MATERIALS.values())
    colors = np.zeros((len(mats), max(len(m.colors) for m in mats), 3), np.float32)
    for i, m in enumerate(mats):
        colors[i, : len(m.colors)] = np.asarray(m.colors, np.float32) / 255
    return {
        "colors": colors,
        "count": np.array([len(m.colors) for m in mats]),
        "jitter": np.array([m.jitter for m in mats], np.float32),
        "texture": np.array([TEXTURES.index(m.texture) for m in mats]),
        "scale": np.array([m.scale for m in mats], np.float32),
        "amp": np.array([m.amp for m in mats], np.float32),
        "glow": np.array([m.glow for m in mats], np.float32),
        "wet": np.array([m.wet for m in mats], np.float32),
        "snow": np.array([m.snow for m in mats], np.float32),
    }


MAT_TABLE = _material_table()

def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int = 8) -> np.ndarray:
    """Low-frequency screen-space noise in about [-1, 1] (clouds, fog density, grime)."""
    small = rng.standard_normal((cells, max(cells * width // max(height, 1), 1))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def sample_texture(bank: np.ndarray, level: np.ndarray, texture: np.ndarray, s: np.ndarray,
                   t: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of texel coordinates (s, t) in the texture bank (magnified texels stay smooth)."""
    mask = TEX_SIZE - 1
    s0, t0 = np.floor(s), np.floor(t)
    fs, ft = (s - s0).astype(np.float32), (t - t0).astype(np.float32)
    i0, j0 = s0.astype(np.int32) & mask, t0.astype(np.int32) & mask
    i1, j1 = (i0 + 1) & mask, (j0 + 1) & mask
    top = bank[level, texture, j0, i0] * (1 - fs) + bank[level, texture, j0, i1] * fs
    bottom = bank[level, texture, j1, i0] * (1 - fs) + bank[level, texture, j1, i1] * fs
    return top * (1 - ft) + bottom * ft
