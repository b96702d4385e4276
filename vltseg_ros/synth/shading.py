"""Appearance over the G-buffer: the flat-shaded ``synthetic`` style and the textured, lit ``realistic`` one.

``synthetic``: flat colour per surface (class colour jittered, kept off the Cityscapes palette), flat sky, no
textures, shadows or noise (the GTA5-like source domain). ``realistic``: procedural textures in world coordinates,
sun light with cast shadows, contact shadows under vehicles, gradient sky with clouds, stronger colour variation,
auto exposure and sensor noise. The condition's passes (``weather``) apply to both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from vltseg_ros.labels import CITYSCAPES_PALETTE

from .materials import MAT_TABLE, MATERIALS, MIP_SIGMAS, TEX_SIZE, sample_texture, smooth_noise, texture_bank
from .raster import NEAR, clip_near
from .scene import ROAD, SIDEWALK, TERRAIN, TRAIN_LUT, VEGETATION, Scene
from .weather import Weather, draw_weather, rain_streaks, snowflakes, wet_reflections

STYLES = ("synthetic", "realistic")
SRGB_GAMMA = 2.2
_PALETTE = np.asarray(CITYSCAPES_PALETTE, np.float32)
_GROUND_LABELS = np.array([ROAD, SIDEWALK, TERRAIN])

def _surface_colors(scene: Scene, style: str, rng: np.random.Generator) -> np.ndarray:
    """sRGB colour per surface; surfaces of one object with one material share it."""
    mat, group = np.asarray(scene.material), np.asarray(scene.group)
    keys, inverse = np.unique(group * len(MATERIALS) + mat, return_inverse=True)
    m = keys % len(MATERIALS)
    pick = (rng.random(len(keys)) * MAT_TABLE["count"][m]).astype(int)
    base = MAT_TABLE["colors"][m, pick]
    jitter = MAT_TABLE["jitter"][m][:, None]
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

    Otherwise a network could solve the synthetic domain by colour lookup (docs/design.md#synthetic-benchmark).
    """
    train = TRAIN_LUT[labels]
    valid = train != 255
    palette = _PALETTE[np.where(valid, train, 0)] / 255
    near = valid & (np.abs(srgb - palette).max(1) < margin)
    pushed = np.clip(palette + np.where(palette < 0.5, 1.2, -1.2) * margin, 0, 1)
    return np.where(near[:, None], pushed, srgb)


def _dot3(a: np.ndarray, v: Sequence[float]) -> np.ndarray:
    """Dot product over the last axis (3) with a constant vector, without BLAS threads (workers stay on one core)."""
    return a[..., 0] * np.float32(v[0]) + a[..., 1] * np.float32(v[1]) + a[..., 2] * np.float32(v[2])


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.power(np.clip(srgb, 0, 1), SRGB_GAMMA).astype(np.float32)


def _shadow_masks(scene: Scene, sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen-space masks of cast sun shadows (object hulls projected along the sun) and vehicle contact shadows."""
    cam = scene.cam
    masks = []
    for polygons in (_sun_polygons(scene.casters, sun) if sun[1] > 0.05 else [], scene.contacts):
        mask = np.zeros((cam.height, cam.width), np.uint8)
        for poly in polygons:
            clipped = clip_near(cam.to_camera(poly))
            if clipped is not None:
                cv2.fillPoly(mask, [np.round(cam.project(clipped) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
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


def _point_lights(scene: Scene, xyz: tuple[np.ndarray, ...], normal: np.ndarray) -> np.ndarray:
    """Linear light of lamps and headlight pools, evaluated only inside each light's screen footprint."""
    cam = scene.cam
    out = np.zeros((cam.height, cam.width, 3), np.float32)
    for pos, color, radius in scene.lights:
        pc = cam.to_camera(pos)
        reach = 3.0 * radius
        if pc[2] + reach < NEAR:
            continue
        zc = max(pc[2] - reach, NEAR)
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
    def of(cls, scene: Scene) -> "_GBuffer":
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


def shade(scene: Scene, style: str, condition: str, style_rng: np.random.Generator,
          rng: np.random.Generator) -> np.ndarray:
    """Render the G-buffer of ``scene`` to an HxWx3 uint8 RGB image; ``style_rng`` draws what a style fixes for a
    scene (colours, sun, texture offsets), ``rng`` what its condition adds (weather, noise)."""
    flat = style == "synthetic"
    weather = draw_weather(condition, rng)
    g = _GBuffer.of(scene)
    srgb = _surface_colors(scene, style, style_rng)
    if flat:
        radiance = _flat_radiance(scene, g, srgb, weather, condition, style_rng)
    else:
        radiance = _lit_radiance(scene, g, srgb, weather, condition, style_rng, rng)
    emission = MAT_TABLE["glow"][g.material] * np.float32(weather.glow)
    radiance = radiance + emission  # the sky's material does not glow
    if weather.glow > 0.2:
        spread = scene.cam.width / 512
        radiance += 0.35 * cv2.GaussianBlur(emission, (0, 0), 3 * spread) + 0.25 * cv2.GaussianBlur(
            emission, (0, 0), 12 * spread)
    if weather.haze > 0 and not (flat and condition == "clear"):  # the flat source has no aerial perspective
        density = weather.haze * (1 + (0 if flat else 0.25 * smooth_noise(rng, *g.sky.shape, 4)))
        transmission = np.exp(-density * np.minimum(g.distance, 1e4))[..., None]
        radiance = radiance * transmission + np.float32(weather.airlight) * (1 - transmission)
    if flat:
        image = np.power(np.clip(radiance, 0, 1), 1 / SRGB_GAMMA)
    else:
        image = _expose(radiance, g.sky, weather, condition, rng)
    if condition == "rain":
        image = rain_streaks(image, rng, flat)
    elif condition == "snow":
        image = snowflakes(image, rng)
    if not flat:
        image = _sensor(image, condition, rng)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def _flat_radiance(scene: Scene, g: _GBuffer, srgb: np.ndarray, weather: Weather, condition: str,
                   rng: np.random.Generator) -> np.ndarray:
    """Synthetic style: one colour per surface (flat-shaded from a fixed light), off-palette, and a flat sky."""
    normals = np.asarray(scene.normal, np.float32)
    brightness = 0.8 + 0.2 * np.clip(_dot3(normals, (0.35, 0.85, -0.4)), -1, 1)
    srgb = _off_palette(np.clip(srgb * brightness[:, None], 0, 1), np.asarray(scene.label))
    light = {"clear": 1.0, "night": 0.1, "fog": 0.85, "rain": 0.6, "snow": 0.95}[condition]
    sky = _to_linear(np.clip(np.array(weather.horizon) ** (1 / SRGB_GAMMA) * rng.uniform(0.9, 1.05), 0, 1))
    albedo = _to_linear(srgb)[g.sid] * np.float32(light)
    return np.where(g.sky[..., None], sky * np.float32(0.08 if condition == "night" else 1.0), albedo)


def _lit_radiance(scene: Scene, g: _GBuffer, srgb: np.ndarray, weather: Weather, condition: str,
                  style_rng: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    """Realistic style: textured albedo, sun with cast and contact shadows, sky light, lamps, snow, wet ground."""
    cam = scene.cam
    height, width = g.sid.shape
    m = g.material
    azimuth, sun_elevation = style_rng.uniform(0, 2 * math.pi), style_rng.uniform(0.25, 1.05)
    sun = np.array([math.cos(sun_elevation) * math.sin(azimuth), math.sin(sun_elevation),
                    math.cos(sun_elevation) * math.cos(azimuth)], np.float32)
    # textures live in world coordinates on each plane: ground (x, z), facades along z (z, y), others (x, y)
    offsets = style_rng.uniform(0, TEX_SIZE, (len(scene.label), 2)).astype(np.float32)[g.sid]
    horizontal = np.abs(g.normal[..., 1]) > 0.7
    along_z = ~horizontal & (np.abs(g.normal[..., 0]) > np.abs(g.normal[..., 2]))
    x, y, z = g.xyz
    scale = MAT_TABLE["scale"][m]
    s_coord = np.where(horizontal | ~along_z, x, z) * scale + offsets[..., 0]
    t_coord = np.where(horizontal, z, y) * scale + offsets[..., 1]
    # mip level from the pixel footprint in texels; grazing ground is foreshortened by about depth / camera height
    footprint = scale * g.depth / cam.f * np.sqrt(np.maximum(1.0, np.abs(g.normal[..., 1]) * g.depth / cam.h))
    level = np.clip(np.rint(np.log2(np.maximum(footprint, 1.0))), 0, len(MIP_SIGMAS) - 1).astype(np.intp)
    texture = sample_texture(texture_bank(), level, MAT_TABLE["texture"][m], s_coord, t_coord)
    grime = smooth_noise(style_rng, height, width, 6)
    albedo = _to_linear(srgb)[g.sid] * np.clip(1 + MAT_TABLE["amp"][m] * texture + 0.08 * grime, 0.15, 2.5)[..., None]
    if condition == "snow":
        cover = MAT_TABLE["snow"][m] * np.clip(0.8 + 0.35 * smooth_noise(rng, height, width, 12), 0, 1)
        cover = np.where(horizontal | (g.normal[..., 1] > 0.55), cover, 0)
        tracks = np.min([np.abs(x - track) for track in scene.wheel_tracks] or [np.full_like(x, 9.0)], 0)
        cover = np.where((g.label == ROAD) & (tracks < 0.22), cover * 0.35, cover)
        cover = np.where(g.label == VEGETATION, MAT_TABLE["snow"][m] * (texture > 0.4), cover)
        albedo = albedo * (1 - cover[..., None]) + 0.85 * cover[..., None]
    elif condition == "rain":
        albedo = albedo * (1 - 0.45 * MAT_TABLE["wet"][m])[..., None]  # wet surfaces are darker
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
    clouds = np.clip(smooth_noise(style_rng, height, width, 5) * 0.8 - 0.1, 0, 1)[..., None]
    sky = sky * (1 - 0.7 * clouds) + 0.7 * clouds * np.float32(weather.horizon) * 1.05
    sky = sky * (1 + 0.02 * smooth_noise(rng, height, width, 12))[..., None]
    radiance = np.where(g.sky[..., None], sky, radiance)
    if condition == "rain":
        radiance = wet_reflections(radiance, ground, MAT_TABLE["wet"][m], g.distance)
    return radiance


def _expose(radiance: np.ndarray, sky: np.ndarray, weather: Weather, condition: str,
            rng: np.random.Generator) -> np.ndarray:
    """White balance, auto exposure on the non-sky pixels and a soft-shoulder tone curve to sRGB 0-1."""
    radiance = radiance * (1 + rng.normal(0, 0.04, 3)).astype(np.float32)
    luminance = _dot3(radiance, (0.2126, 0.7152, 0.0722))
    mean = float(luminance[~sky].mean()) if (~sky).any() else float(luminance.mean())
    # a night camera cannot expose a dark street like day: it stays dark around the lights
    exposure = min(weather.key / max(mean, 1e-4), 6.0 if condition == "night" else 40.0)
    x = radiance * np.float32(exposure)
    return np.power(np.clip(x * (1 + x / 4) / (1 + x), 0, 1), 1 / SRGB_GAMMA)


def _sensor(image: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """Lens blur, vignetting and sensor noise (stronger at night, where the gain is high)."""
    height, width = image.shape[:2]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8) * width / 512)
    yy, xx = np.mgrid[-1:1:height * 1j, -1:1:width * 1j].astype(np.float32)
    image = image * (1 - rng.uniform(0.1, 0.3) * (xx**2 + yy**2) / 2)[..., None]
    sigma = rng.uniform(0.025, 0.045) if condition == "night" else rng.uniform(0.006, 0.018)
    luma_noise = rng.normal(0, sigma, (height, width, 1)).astype(np.float32)
    return image + luma_noise + rng.normal(0, sigma / 2, (height, width, 3)).astype(np.float32)
