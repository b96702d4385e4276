"""Human-viewable renderings of predictions: colorized masks and overlays with boxes (RGB, source resolution)."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

DISPLAY_SCORE_THRESHOLD = 0.3
"""Boxes drawn for people to look at (the node's default ``score_threshold``, replay overlays); AP is scored from
0.05, whose boxes would clutter every frame."""


def palette_lut(palette: np.ndarray) -> np.ndarray:
    """256x3 uint8 lookup table: class id -> RGB colour; ids beyond the palette (e.g. 255 unlabeled) are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW uint8 label map -> HxWx3 uint8 RGB image."""
    return palette_lut(palette)[label_map]


def draw_overlay(
    image: np.ndarray,
    image_format: str,
    label_map: Optional[np.ndarray],
    lut: np.ndarray,
    boxes: np.ndarray,
    class_ids: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.5,
) -> np.ndarray:
    """RGB image with the colorized mask blended in (unlabeled pixels untouched) and labelled boxes drawn."""
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image_format == "BGR" else np.ascontiguousarray(image)
    out = rgb.copy()
    if label_map is not None:
        blended = cv2.addWeighted(rgb, 1.0 - alpha, lut[label_map], alpha, 0.0)
        labelled = label_map != 255
        out[labelled] = blended[labelled]
    thickness = max(1, round(min(out.shape[:2]) / 300))
    for (x1, y1, x2, y2), cid, score in zip(boxes.tolist(), class_ids.tolist(), scores.tolist()):
        colour = tuple(int(c) for c in lut[cid]) if cid < 255 else (255, 255, 255)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, colour, thickness)
        text = f"{class_names[cid] if cid < len(class_names) else cid} {score:.2f}"
        cv2.putText(out, text, (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour,
                    thickness, cv2.LINE_AA)
    return out
