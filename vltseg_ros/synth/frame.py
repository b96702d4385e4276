"""One rendered frame: the scene from its seed, labels and boxes read off its surface table, and its appearance."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import TRAIN_LUT
from .shading import STYLES, shade
from .street import Street
from .weather import CONDITIONS

MIN_BOX_SIDE = 8
"""The small-box convention: a thing instance whose tight box is narrower or shorter than this many pixels gets no
box. It is written like a Cityscapes crowd region (its instanceIds pixels hold the bare labelId; its labelIds and
trainIds are unchanged), so every reader of the written frames sees the same boxes: training, offline evaluation,
replay bags and the online evaluator. Such objects (half of all instances at 256x512: distant people, vehicles
behind others) are a few pixels of stride-4 features and no anchor can match them."""

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


def check_look(style: str, condition: str, height: int, width: int) -> None:
    """Raise ValueError for an unknown style or condition, or a frame under 16x16."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if height < 16 or width < 16:
        raise ValueError(f"frame size must be at least 16x16, got {height}x{width}")


def boxed_instances(instance_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return instance_ids, boxes[keep].astype(np.float32), TRAIN_LUT[ids[starts][keep] // 1000].astype(np.int64)


def render_frame(seed: int, height: int = 256, width: int = 512, style: str = "synthetic",
                 condition: str = "clear") -> Frame:
    """Render one frame; deterministic in (seed, size, style, condition), with geometry and labels from (seed, size)."""
    check_look(style, condition, height, width)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    scene = Street(np.random.default_rng(np.random.SeedSequence([seed, _SCENE_STREAM])), height, width).build()
    style_rng = np.random.default_rng(np.random.SeedSequence([seed, _STYLE_STREAM, STYLES.index(style)]))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CONDITION_STREAM, STYLES.index(style),
                                                        CONDITIONS.index(condition)]))
    sid = scene.raster.surf
    label_ids = np.asarray(scene.label, np.uint8)[sid]
    instance_ids, boxes, box_train_ids = boxed_instances(np.asarray(scene.inst, np.int32)[sid])
    return Frame(image=shade(scene, style, condition, style_rng, rng), label_ids=label_ids,
                 train_ids=TRAIN_LUT[label_ids], instance_ids=instance_ids, boxes=boxes, box_train_ids=box_train_ids)
