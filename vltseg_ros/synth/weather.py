"""Conditions: light and atmosphere per condition, and the passes that only rain and snow add (wet reflections,
streaks, flakes). Conditions change appearance only, never geometry or labels."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .materials import smooth_noise

CONDITIONS = ("clear", "fog", "night", "rain", "snow")


@dataclass
class Weather:
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


def draw_weather(condition: str, rng: np.random.Generator) -> Weather:
    """Randomised light and atmosphere for a condition."""
    u = rng.uniform
    if condition == "clear":
        return Weather(u(0.9, 1.4), u(0.3, 0.5), (1.0, 0.95, 0.86), (0.75, 0.85, 1.0), (0.62, 0.7, 0.82),
                       (0.16, 0.32, 0.75), u(0.0, 0.003), (0.8, 0.85, 0.95), 0.05, 0.2)
    if condition == "fog":
        grey = u(0.75, 0.95)
        return Weather(u(0.05, 0.2), u(0.7, 0.9), (1.0, 0.97, 0.92), (0.92, 0.94, 0.97), (grey,) * 3, (grey,) * 3,
                       u(0.02, 0.05), (grey, grey * 1.01, grey * 1.03), 0.4, 0.22)
    if condition == "night":
        return Weather(0.0, u(0.004, 0.012), (0, 0, 0), (0.5, 0.6, 1.0), (0.03, 0.022, 0.018), (0.002, 0.003, 0.008),
                       u(0.0, 0.004), (0.012, 0.011, 0.01), 1.0, u(0.02, 0.035))
    if condition == "rain":
        grey = u(0.45, 0.65)
        return Weather(u(0.0, 0.08), u(0.5, 0.7), (1.0, 1.0, 1.0), (0.85, 0.9, 1.0), (grey, grey * 1.03, grey * 1.08),
                       (grey * 0.7, grey * 0.72, grey * 0.78), u(0.006, 0.015), (grey * 0.8,) * 3, 0.5, 0.14)
    grey = u(0.8, 0.95)
    return Weather(u(0.1, 0.4), u(0.75, 0.95), (1.0, 0.98, 0.95), (0.9, 0.93, 1.0), (grey, grey, grey * 1.03),
                   (grey * 0.85, grey * 0.87, grey * 0.92), u(0.008, 0.02), (grey, grey, grey * 1.02), 0.3, 0.3)


def wet_reflections(radiance: np.ndarray, ground: np.ndarray, wet: np.ndarray, distance: np.ndarray) -> np.ndarray:
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


def rain_streaks(image: np.ndarray, rng: np.random.Generator, flat: bool) -> np.ndarray:
    """Slanted, blurred rain streaks over an sRGB 0-1 image (uneven density unless ``flat``)."""
    height, width = image.shape[:2]
    n = height * width // 220
    start = rng.uniform(0, 1, (n, 2)) * (width, height)
    length = rng.uniform(0.03, 0.1, n) * height
    angle = rng.normal(0.15, 0.05) + rng.normal(0, 0.03, n)
    end = start + np.stack([np.sin(angle), np.cos(angle)], -1) * length[:, None]
    mask = np.zeros((height, width), np.float32)
    cv2.polylines(mask, list(np.round(np.stack([start, end], 1) * 4).astype(np.int32)), False, 1.0, 1, cv2.LINE_AA, 2)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.6) * rng.uniform(0.3, 0.5) * (1 if flat else 1 + 0.5 * smooth_noise(
        rng, height, width, 6))
    return image * (1 - mask[..., None]) + 0.85 * mask[..., None]


def snowflakes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft white flakes of random size over an sRGB 0-1 image."""
    height, width = image.shape[:2]
    n = height * width // 300
    mask = np.zeros((height, width), np.float32)
    centres = np.round(rng.uniform(0, 1, (n, 2)) * (width, height)).astype(int)
    radii = np.maximum(rng.exponential(0.7, n) * height / 256, 0.5)
    for (x, y), r in zip(centres, radii):
        cv2.circle(mask, (int(x), int(y)), int(round(r)), float(rng.uniform(0.5, 1.0)), -1, cv2.LINE_AA)
    mask = np.clip(cv2.GaussianBlur(mask, (0, 0), 0.7), 0, 1)
    return image * (1 - mask[..., None]) + 0.95 * mask[..., None]
