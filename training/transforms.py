"""Training and evaluation transforms: the mmseg training pipeline of VLTSeg (docs/design.md#method) in numpy/OpenCV.

Input is a dataset sample ``dict(image=HxWx3 uint8 RGB, label=HxW uint8 trainIds, boxes=Nx4 float32 xyxy
pixel-edge coordinates, box_labels=N int64, name=str)``; output holds torch tensors: ``image`` float32 [3,H,W] RGB
in 0..255 (not normalised: the model applies mean/std), ``label`` int64 [H,W], ``boxes`` float32 [N,4],
``box_labels`` int64 [N], ``name``.

Randomness: ``TrainTransform(sample, rng)`` is a pure function of the sample and ``rng``. Without ``rng`` it seeds
a fresh ``np.random.default_rng`` per call from torch's global generator, which a DataLoader reseeds in every
worker to ``base_seed + worker_id`` (``torch.initial_seed()`` there), ``base_seed`` coming from the loader's
``generator`` (or torch's global seed) once per epoch. So with ``torch.manual_seed(s)`` (or
``DataLoader(generator=torch.Generator().manual_seed(s))``) and a fixed ``num_workers``, a run's augmentations are
reproducible, workers never repeat each other's draws, and in the main process (``num_workers=0``) successive
calls differ. Seeding from ``torch.initial_seed()`` alone would repeat one augmentation for every call in a worker.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

from vltseg_ros.labels import IGNORE_INDEX
from vltseg_ros.synth import MIN_BOX_SIDE

# mmseg PhotoMetricDistortion defaults. Hue is in OpenCV 8-bit units (2 degrees each).
_BRIGHTNESS_DELTA = 32.0
_CONTRAST_RANGE = (0.5, 1.5)
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 18
_CROP_RETRIES = 10


def _seeded_rng() -> np.random.Generator:
    """Fresh generator seeded from torch's global RNG (per-worker seeded by DataLoader)."""
    return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)))


def _resize(image: np.ndarray, label: np.ndarray, boxes: np.ndarray,
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize to exactly ``size`` = (W, H): image bilinear, label nearest, boxes scaled."""
    height, width = label.shape
    if (width, height) == tuple(size):
        return image, label, boxes
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    scale = np.array([size[0] / width, size[1] / height] * 2, np.float32)
    return image, label, boxes * scale


def _crop_boxes(boxes: np.ndarray, box_labels: np.ndarray, x0: int, y0: int, width: int, height: int,
                min_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Shift boxes into a crop at (x0, y0) of ``width`` x ``height``, clip, and drop those under ``min_size``."""
    boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], np.float32))
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep], box_labels[keep]


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror xyxy pixel-edge boxes in an image ``width`` wide."""
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def _contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        image = np.clip(image * rng.uniform(*_CONTRAST_RANGE), 0, 255)
    return image


def _photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion on a float32 RGB image in 0..255; every step has p=0.5."""
    if rng.random() < 0.5:
        image = np.clip(image + rng.uniform(-_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA), 0, 255)
    contrast_first = rng.random() < 0.5
    if contrast_first:
        image = _contrast(image, rng)
    saturation = rng.uniform(*_SATURATION_RANGE) if rng.random() < 0.5 else None
    hue_shift = int(rng.integers(-_HUE_DELTA, _HUE_DELTA + 1)) if rng.random() < 0.5 else None
    if saturation is not None or hue_shift is not None:
        # float32 HSV in OpenCV: H in degrees 0..360, S in 0..1, V in the input's 0..255.
        hsv = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2HSV)
        if saturation is not None:
            hsv[:, :, 1] = np.clip(hsv[:, :, 1] * saturation, 0, 1)
        if hue_shift is not None:
            hsv[:, :, 0] = (hsv[:, :, 0] + 2 * hue_shift) % 360
        image = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 255)
    if not contrast_first:
        image = _contrast(image, rng)
    return image.astype(np.float32)


def _to_tensors(image: np.ndarray, label: np.ndarray, boxes: np.ndarray, box_labels: np.ndarray,
                name: str) -> dict:
    """HxWx3 image -> float32 [3,H,W]; label -> int64 [H,W]; boxes float32 [N,4]; box_labels int64 [N]."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
        "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
        "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "box_labels": torch.from_numpy(np.ascontiguousarray(box_labels, dtype=np.int64).reshape(-1)),
        "name": name,
    }


def _boxes_of(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(sample["boxes"], np.float32).reshape(-1, 4),
            np.asarray(sample["box_labels"], np.int64).reshape(-1))


class TrainTransform:
    """Resize -> RandomCrop(cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion -> Pad, as mmseg trains VLTSeg.

    ``crop_size`` is (H, W) like mmseg's RandomCrop; ``resize`` is the exact (W, H) of mmcv's
    ``Resize(scale, keep_ratio=False)``, or None to keep the input size. A crop is accepted, as in mmseg, when it
    holds at least two non-ignore classes and the largest covers less than ``cat_max_ratio`` of them; after
    ``_CROP_RETRIES`` rejected crops the next random one is taken unchecked. Boxes are cropped, clipped and
    flipped with the image and dropped when a side is shorter than ``min_box_size`` pixels (the small-box
    convention, ``vltseg_ros.synth.MIN_BOX_SIDE``: a box the crop cuts to a sliver gets none, as one the frame edge
    cuts does); padding (bottom and right) fills the image with 0 and the label with ``ignore_index``.
    """

    def __init__(self, crop_size: tuple[int, int], resize: Optional[tuple[int, int]] = None,
                 cat_max_ratio: float = 0.75, flip_prob: float = 0.5, photometric: bool = True,
                 ignore_index: int = IGNORE_INDEX, min_box_size: float = MIN_BOX_SIDE):
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be two positive ints (H, W), got {crop_size}")
        if resize is not None and (len(resize) != 2 or min(resize) <= 0):
            raise ValueError(f"resize must be two positive ints (W, H) or None, got {resize}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.ignore_index = ignore_index
        self.min_box_size = min_box_size

    def __call__(self, sample: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """Augment one dataset sample to tensors of exactly ``crop_size`` (see the class docstring)."""
        rng = _seeded_rng() if rng is None else rng
        image, label = sample["image"], sample["label"]
        boxes, box_labels = _boxes_of(sample)
        if self.resize is not None:
            image, label, boxes = _resize(image, label, boxes, self.resize)

        y0, x0 = self._crop_origin(label, rng)
        crop_h, crop_w = self.crop_size
        image, label = image[y0:y0 + crop_h, x0:x0 + crop_w], label[y0:y0 + crop_h, x0:x0 + crop_w]
        height, width = label.shape
        boxes, box_labels = _crop_boxes(boxes, box_labels, x0, y0, width, height, self.min_box_size)

        if rng.random() < self.flip_prob:
            image, label, boxes = image[:, ::-1], label[:, ::-1], _flip_boxes(boxes, width)

        image = np.ascontiguousarray(image, dtype=np.float32)
        if self.photometric:
            image = _photometric_distortion(image, rng)

        padded_image = np.zeros((crop_h, crop_w, 3), np.float32)
        padded_label = np.full((crop_h, crop_w), self.ignore_index, np.int64)
        padded_image[:height, :width] = image
        padded_label[:height, :width] = label
        return _to_tensors(padded_image, padded_label, boxes, box_labels, sample["name"])

    def _crop_origin(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left (y, x) of a random crop, retried while one class dominates it (mmseg RandomCrop)."""
        margin_h = max(label.shape[0] - self.crop_size[0], 0)
        margin_w = max(label.shape[1] - self.crop_size[1], 0)

        def draw() -> tuple[int, int]:
            return int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))

        origin = draw()
        if self.cat_max_ratio >= 1:
            return origin
        for _ in range(_CROP_RETRIES):
            y0, x0 = origin
            counts = np.bincount(label[y0:y0 + self.crop_size[0], x0:x0 + self.crop_size[1]].ravel())
            if self.ignore_index < len(counts):
                counts[self.ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
            origin = draw()
        return origin


class EvalTransform:
    """Converts a sample to tensors without geometric change: image float32 [3,H,W] RGB 0..255, label int64 [H,W]."""

    def __call__(self, sample: dict) -> dict:
        """Convert one dataset sample to tensors."""
        return _to_tensors(sample["image"], sample["label"], *_boxes_of(sample), sample["name"])


def collate(batch: list[dict]) -> dict:
    """Stack ``image`` [B,3,H,W] and ``label`` [B,H,W]; keep ``boxes``, ``box_labels`` and ``name`` as lists."""
    sizes = {tuple(item["image"].shape) for item in batch}
    if len(sizes) > 1:
        raise ValueError(f"collate needs equally sized images (crop them with TrainTransform), got {sorted(sizes)}")
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "label": torch.stack([item["label"] for item in batch]),
        "boxes": [item["boxes"] for item in batch],
        "box_labels": [item["box_labels"] for item in batch],
        "name": [item["name"] for item in batch],
    }
