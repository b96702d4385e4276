"""Label definitions: the 19 Cityscapes train classes, their palette, and source-dataset id mappings.

The 19-class table follows cityscapesscripts' ``labels.py`` (MIT); mappings of the other datasets: docs/design.md#label-mappings.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
"""Label value for unlabeled / ignored pixels in trainId maps (also the ROS ``label_mask`` unlabeled value)."""

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

CITYSCAPES_THING_CLASSES: tuple[str, ...] = (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
"""Default detection classes (VLTDet): the Cityscapes classes that have instances."""

# Cityscapes labelId -> trainId (also GTA5, whose labels are Cityscapes labelIds).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Return a uint8 LUT of ``size`` entries mapping source ids to trainIds (unmapped ids -> IGNORE_INDEX)."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


CITYSCAPES_TRAINID_TO_ID: np.ndarray = np.zeros(256, np.uint8)
"""uint8 LUT trainId -> Cityscapes labelId (test-server submissions); anything else, e.g. 255, -> 0 (unlabeled)."""
CITYSCAPES_TRAINID_TO_ID[list(CITYSCAPES_ID_TO_TRAINID.values())] = list(CITYSCAPES_ID_TO_TRAINID)
