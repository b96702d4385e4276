"""Readers for the six VLTSeg datasets (BDD100K as two: 10k sem-seg, 100k detection); all yield Cityscapes trainIds.

Label values are trainIds 0-18, 255 = ignore. The exact files each reader expects: README.md §4.

Each reader lists and pairs its files once at construction (``samples``) and decodes one sample per
``__getitem__``: ``dict(image=HxWx3 uint8 RGB, label=HxW uint8 trainIds, boxes=Nx4 float32 xyxy,
box_labels=N int64 trainIds, name=str)``, passed through ``transform`` when one is given. Boxes use pixel-edge
coordinates: a box covering columns 3..5 is ``x1=3, x2=6``. On-disk layouts and label mappings:
docs/design.md#label-mappings and the README's dataset table.

Labels are read from the split's label directory whenever it exists. Only splits whose ground truth is withheld
(``unlabeled_splits``, e.g. ``test``) may lack it; their samples have ``label=None`` and load as all-ignore maps, as
do the images of a set that has no semantic labels (BDD100K-100k).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Optional, Union

import cv2
import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import Dataset, get_worker_info

from vltseg_ros.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_THING_CLASSES,
    IGNORE_INDEX,
    lookup_table,
)

logger = logging.getLogger(__name__)

Transform = Callable[[dict], dict]
PathLike = Union[str, os.PathLike]

THING_TRAINIDS: tuple[int, ...] = tuple(CITYSCAPES_CLASSES.index(name) for name in CITYSCAPES_THING_CLASSES)
"""trainIds of the classes that carry boxes (person ... bicycle = 11..18)."""

SYNTHIA_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15,
    20: 16, 12: 17, 11: 18,
}
"""SYNTHIA-RAND-CITYSCAPES class id -> trainId (DAFormer ``synthia.py``, from the SYNTHIA README's class table).

Terrain (16), truck (18) and train (20) are in that table though DAFormer notes them "not present in synthia"; they
are mapped as it maps them."""

SYNTHIA_16_CLASSES: tuple[int, ...] = tuple(
    train_id for train_id in range(len(CITYSCAPES_CLASSES)) if train_id not in (9, 14, 16)
)
"""trainIds of the mIoU16 protocol: the 19 classes minus terrain (9), truck (14) and train (16)."""

# trainId -> Mapillary v1.2 ids. HRDA reproduces VLTSeg numbers; Rein is the broader name-based rule of
# Rein/tqdm/DepthForge (docs/design.md#label-mappings). Grouped by trainId, one row per class.
_MAPILLARY_HRDA_GROUPS: dict[int, tuple[int, ...]] = {
    0: (13, 24, 41), 1: (2, 15), 2: (17,), 3: (6,), 4: (3,), 5: (45, 47), 6: (48,), 7: (50,), 8: (30,), 9: (29,),
    10: (27,), 11: (19,), 12: (20, 21, 22), 13: (55,), 14: (61,), 15: (54,), 16: (58,), 17: (57,), 18: (52,),
}
_MAPILLARY_REIN_GROUPS: dict[int, tuple[int, ...]] = {
    0: (7, 8, 10, 13, 14, 23, 24), 1: (2, 9, 11, 15), 2: (17,), 3: (6,), 4: (3,), 5: (44, 45, 47), 6: (48,),
    7: (46, 49, 50), 8: (30,), 9: (29,), 10: (27,), 11: (19,), 12: (20, 21, 22), 13: (55,), 14: (61,), 15: (54,),
    16: (58,), 17: (57,), 18: (52,),
}

BDD_DET_TO_TRAINID: dict[str, int] = {
    "pedestrian": 11, "rider": 12, "car": 13, "truck": 14, "bus": 15, "train": 16, "motorcycle": 17, "bicycle": 18,
}
"""BDD100K det_20 category -> Cityscapes trainId; the others (traffic light/sign, other person/vehicle, trailer)
are dropped."""

_TRAINID_LUT = lookup_table({i: i for i in range(len(CITYSCAPES_CLASSES))})
_CITYSCAPES_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)
_CITYSCAPES_THING_LUT = lookup_table({k: v for k, v in CITYSCAPES_ID_TO_TRAINID.items() if v in THING_TRAINIDS})
_SYNTHIA_LUT = lookup_table(SYNTHIA_TO_TRAINID)
MAPILLARY_LUTS: dict[str, np.ndarray] = {
    name: lookup_table({src: dst for dst, srcs in groups.items() for src in srcs})
    for name, groups in (("hrda", _MAPILLARY_HRDA_GROUPS), ("rein", _MAPILLARY_REIN_GROUPS))
}
"""Mapillary id -> trainId LUTs (256 entries) by mapping name."""

# Worker i of a DataLoader counts into slot 1 + i, the main process into slot 0, so no two processes race on one
# slot (beyond this many workers, slots are shared and a simultaneous skip may be lost).
_SKIP_COUNTER_SLOTS = 257


class DatasetError(RuntimeError):
    """Wrong root or missing split: the message names the expected path."""


class _UnreadableFile(Exception):
    """A sample file exists but cannot be decoded (or does not fit its image)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")


@dataclass
class Sample:
    """File paths of one dataset item."""

    name: str
    image: str
    label: Optional[str]
    instances: Optional[str] = None
    boxes_json: Optional[str] = None


def _read_image(path: str) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB."""
    try:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise _UnreadableFile(path, str(err)) from err
    if bgr is None:
        raise _UnreadableFile(path, "not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_ids(path: str) -> np.ndarray:
    """Stored ids of a label-like PNG: palette indices of a "P" image, else the values at their stored depth.

    cv2 expands a palette to colours and PIL truncates 16-bit colour PNGs to 8 bits, so palette images are read
    with PIL and everything else with cv2.IMREAD_UNCHANGED (8/16-bit, any channel count).
    """
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return np.asarray(image)
        array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    except (OSError, SyntaxError, ValueError, cv2.error) as err:
        raise _UnreadableFile(path, str(err)) from err
    if array is None:
        raise _UnreadableFile(path, "not a decodable image")
    return array


def _check_map(array: np.ndarray, shape: tuple[int, int], path: str) -> np.ndarray:
    """Return ``array`` if it is a single-channel map of ``shape``; otherwise the file counts as unreadable."""
    if array.ndim != 2:
        raise _UnreadableFile(path, f"expected a single-channel map, got shape {array.shape}")
    if array.shape != shape:
        raise _UnreadableFile(path, f"size {array.shape} differs from its image {shape}")
    return array


def _apply_lut(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map an integer id map through a 256-entry LUT; ids beyond 255 become ignore (every LUT maps 255 to 255)."""
    if ids.dtype != np.uint8:
        ids = np.clip(ids, 0, len(lut) - 1)
    return lut[ids]


def _no_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def instance_boxes(instance_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes (Nx4 float32) and trainIds (N int64) of the thing instances in a Cityscapes instanceIds map.

    Ids >= 1000 encode ``labelId * 1000 + instance``; smaller ids are stuff or crowd regions and give no box.
    """
    is_instance = (instance_ids >= 1000) & (_apply_lut(instance_ids // 1000, _CITYSCAPES_THING_LUT) != IGNORE_INDEX)
    ids, inverse = np.unique(instance_ids[is_instance], return_inverse=True)
    if len(ids) == 0:
        return _no_boxes()
    compact = np.zeros(instance_ids.shape, np.int32)
    compact[is_instance] = inverse.ravel() + 1
    # find_objects sweeps the map once for all instances; slices are half-open, i.e. pixel-edge coordinates.
    boxes = [(cols.start, rows.start, cols.stop, rows.stop) for rows, cols in ndimage.find_objects(compact)]
    return np.asarray(boxes, np.float32), _CITYSCAPES_THING_LUT[ids // 1000].astype(np.int64)


def _require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise DatasetError naming it."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: expected directory {path}")
    return path


def _pair_samples(
    image_dir: Path,
    image_suffix: str,
    label_dir: Optional[Path],
    label_suffixes: Iterable[str] = (),
    labels_optional: bool = False,
    instance_suffix: Optional[str] = None,
    only: Optional[Collection[str]] = None,
) -> list[Sample]:
    """Pair every ``*{image_suffix}`` file under ``image_dir`` (any depth) with its label under ``label_dir``.

    The label sits at the same relative sub-path, named ``{stem}{suffix}`` for the first of ``label_suffixes``
    that exists. A split without ``label_dir`` is unlabeled if ``labels_optional``, else an error;
    ``label_dir=None`` lists an image set that has no semantic labels. ``only`` restricts the samples to those stems
    (every one must exist).
    """
    _require_dir(image_dir, "image directory")
    label_suffixes = tuple(label_suffixes)
    has_labels = label_dir is not None and label_dir.is_dir()
    if label_dir is not None and not has_labels and not labels_optional:
        raise DatasetError(f"label directory not found: expected directory {label_dir}")
    images = sorted(image_dir.rglob(f"*{image_suffix}"))
    if only is not None:
        by_stem = {image.name[: -len(image_suffix)]: image for image in images}
        missing = [stem for stem in only if stem not in by_stem]
        if missing:
            expected = image_dir / (missing[0] + image_suffix)
            raise DatasetError(f"split lists '{missing[0]}' but found no image {expected} ({len(missing)} missing)")
        images = [by_stem[stem] for stem in only]
    if not images:
        raise DatasetError(f"no '*{image_suffix}' images under {image_dir}")
    samples = []
    for image in images:
        relative = image.relative_to(image_dir)
        stem = relative.name[: -len(image_suffix)]
        label = instances = None
        if has_labels:
            base = str(label_dir / relative.parent / stem)
            candidates = [base + suffix for suffix in label_suffixes]
            label = next((path for path in candidates if os.path.isfile(path)), None)
            if label is None:
                raise DatasetError(f"missing label for image {image}: expected {' or '.join(candidates)}")
            if instance_suffix is not None and os.path.isfile(base + instance_suffix):
                instances = base + instance_suffix
        samples.append(Sample(name=stem, image=str(image), label=label, instances=instances))
    return samples


def _split_names(root: Path, split: str, split_file: Optional[PathLike]) -> Optional[list[str]]:
    """Image stems of a list-file split (one name per line, extension optional); None for ``split='all'``."""
    if split == "all" and split_file is None:
        return None
    path = Path(split_file) if split_file is not None else root / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(f"split '{split}' not found: expected split list {path} (or use split='all')")
    names = [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split list {path} is empty")
    return names


class SegmentationDataset(Dataset):
    """Base reader: decodes ``samples`` to trainId dicts, skipping unreadable files.

    A corrupt image, label or instance file is logged (warning naming the file) and replaced by the next readable
    sample; ``skipped`` counts these events. The count lives in shared memory and each DataLoader worker writes
    its own slot, so ``dataset.skipped`` in the main process is the total over the main process and all workers
    (events, not files: a corrupt file read in every epoch counts once per epoch). DatasetError is raised only
    when no sample at all is readable.

    Subclasses set ``label_formats`` (label file suffix -> LUT from its stored ids to trainIds, in order of
    preference) and may override ``_read_label_ids`` / ``_read_boxes``. ``eval_fit_sizes`` fixes the dataset's
    test size ([H, W] box) per evaluation protocol (``vltseg_ros.config.EVAL_PROTOCOLS``) where the paper's
    protocol does not simply fit the images into the protocol's box.
    """

    label_formats: dict[str, np.ndarray] = {}
    unlabeled_splits: tuple[str, ...] = ("test",)
    eval_fit_sizes: dict[str, list[int]] = {}

    def __init__(self, samples: list[Sample], transform: Optional[Transform] = None):
        self.samples = samples
        self.transform = transform
        self._skip_counts = torch.zeros(_SKIP_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.samples)

    @property
    def skipped(self) -> int:
        """Unreadable samples skipped so far, summed over the main process and all DataLoader workers."""
        return int(self._skip_counts.sum())

    def __getitem__(self, index: int) -> dict:
        """Decoded (and transformed) sample ``index``, or the next readable one if its files are corrupt."""
        count = len(self.samples)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} samples")
        for offset in range(count):
            sample = self.samples[(index + offset) % count]
            try:
                data = self._load(sample)
            except _UnreadableFile as err:
                logger.warning("%s: skipping sample %s, unreadable file %s", type(self).__name__, sample.name, err)
                self._count_skip()
                continue
            return self.transform(data) if self.transform is not None else data
        raise DatasetError(f"{type(self).__name__}: all {count} samples are unreadable")

    def _count_skip(self) -> None:
        worker = get_worker_info()
        slot = 0 if worker is None else 1 + worker.id % (_SKIP_COUNTER_SLOTS - 1)
        self._skip_counts[slot] += 1

    def _load(self, sample: Sample) -> dict:
        """Decode one sample; raises _UnreadableFile naming the first bad file."""
        image = _read_image(sample.image)
        shape = image.shape[:2]
        if sample.label is None:
            label = np.full(shape, IGNORE_INDEX, np.uint8)
        else:
            ids = _check_map(self._read_label_ids(sample.label), shape, sample.label)
            label = _apply_lut(ids, self._label_lut(sample.label))
        boxes, box_labels = self._read_boxes(sample, shape)
        return {"image": image, "label": label, "boxes": boxes, "box_labels": box_labels, "name": sample.name}

    def _label_lut(self, label_path: str) -> np.ndarray:
        return next(lut for suffix, lut in self.label_formats.items() if label_path.endswith(suffix))

    def _read_label_ids(self, path: str) -> np.ndarray:
        """Stored class ids of a label file (HxW, or a multi-channel array that _check_map rejects)."""
        return _read_ids(path)

    def _read_boxes(self, sample: Sample, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and trainIds of one sample: from its Cityscapes-style instanceIds map, if it has one."""
        if sample.instances is None:
            return _no_boxes()
        return instance_boxes(_check_map(_read_ids(sample.instances), shape, sample.instances))


class CityscapesDataset(SegmentationDataset):
    """Cityscapes (and the procedural benchmark written in its layout).

    ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``root/gtFine/{split}/{city}/*_gtFine_labelTrainIds.png``, falling back to ``*_gtFine_labelIds.png`` (mapped to
    trainIds) per image; boxes from ``*_gtFine_instanceIds.png`` (16-bit, ``labelId * 1000 + k``) when present.
    ``_gtFine_color.png`` and ``_gtFine_polygons.json`` are not read.
    """

    label_formats = {"_gtFine_labelTrainIds.png": _TRAINID_LUT, "_gtFine_labelIds.png": _CITYSCAPES_LUT}

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None):
        root = _require_dir(Path(root), "Cityscapes root")
        samples = _pair_samples(
            root / "leftImg8bit" / split, "_leftImg8bit.png", root / "gtFine" / split, self.label_formats,
            labels_optional=split in self.unlabeled_splits, instance_suffix="_gtFine_instanceIds.png",
        )
        super().__init__(samples, transform)


class GTA5Dataset(SegmentationDataset):
    """GTA5: ``root/images/*.png`` with ``root/labels/*.png`` ("P" PNGs whose palette index is the Cityscapes labelId).

    A converted ``labels/{name}_labelTrainIds.png`` (DAFormer converter) is preferred when present. A few GTA5
    labels differ in size from their image by some pixels; like any label that does not fit, they count as
    unreadable and are skipped (DAFormer's converter does not resize them, and stretching could misalign them).
    ``split='all'`` uses every image (the usual DG source); any other split name reads the image names listed in
    ``root/{split}.txt``, or in ``split_file`` if given (one name per line, extension optional). No boxes.
    """

    label_formats = {"_labelTrainIds.png": _TRAINID_LUT, ".png": _CITYSCAPES_LUT}

    def __init__(self, root: PathLike, split: str = "all", transform: Optional[Transform] = None,
                 split_file: Optional[PathLike] = None):
        root = _require_dir(Path(root), "GTA5 root")
        samples = _pair_samples(root / "images", ".png", root / "labels", self.label_formats,
                                only=_split_names(root, split, split_file))
        super().__init__(samples, transform)


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES: ``root/RGB/*.png`` with ``root/GT/LABELS/*.png`` (16-bit 3-channel, class id first).

    A converted ``GT/LABELS/{name}_labelTrainIds.png`` (DAFormer converter) is preferred when present; ``GT/COLOR``
    is not read. Terrain, truck and train never occur, so the 16-class protocol scores only ``SYNTHIA_16_CLASSES``
    (VLTSeg itself reports all 19). Splits as in GTA5Dataset: ``'all'`` or a list file. No boxes.
    """

    label_formats = {"_labelTrainIds.png": _TRAINID_LUT, ".png": _SYNTHIA_LUT}

    def __init__(self, root: PathLike, split: str = "all", transform: Optional[Transform] = None,
                 split_file: Optional[PathLike] = None):
        root = _require_dir(Path(root), "SYNTHIA root")
        samples = _pair_samples(root / "RGB", ".png", root / "GT" / "LABELS", self.label_formats,
                                only=_split_names(root, split, split_file))
        super().__init__(samples, transform)

    def _read_label_ids(self, path: str) -> np.ndarray:
        """Class ids of a 3-channel GT PNG: the file's first channel, last in cv2's BGR order (DAFormer reads it so)."""
        ids = _read_ids(path)
        return ids[:, :, 2] if ids.ndim == 3 and ids.shape[2] == 3 else ids


class MapillaryDataset(SegmentationDataset):
    """Mapillary Vistas v1.2: ``root/{training,validation}/images/*.jpg`` + ``.../v1.2/labels/*.png`` (or ``labels/``).

    ``split`` is ``train``/``val``/``test`` or the folder name. Class ids 0-65 map by ``mapping='hrda'`` (default,
    reproduces VLTSeg) or ``'rein'`` (broader rule of Rein/tqdm/DepthForge); state the mapping with every result.
    Labels are "P" PNGs whose palette index is the class id; ``v2.0/``, ``instances/`` and ``panoptic/`` are not read.
    """

    _FOLDERS = {"train": "training", "val": "validation", "test": "testing"}
    unlabeled_splits = ("testing",)

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None, mapping: str = "hrda"):
        if mapping not in MAPILLARY_LUTS:
            raise ValueError(f"unknown Mapillary mapping {mapping!r}; expected one of {sorted(MAPILLARY_LUTS)}")
        root = _require_dir(Path(root), "Mapillary root")
        folder = self._FOLDERS.get(split, split)
        split_dir = root / folder
        label_dir = split_dir / "v1.2" / "labels"
        if not label_dir.is_dir() and (split_dir / "labels").is_dir():
            label_dir = split_dir / "labels"
        self.label_formats = {".png": MAPILLARY_LUTS[mapping]}
        self.mapping = mapping
        samples = _pair_samples(split_dir / "images", ".jpg", label_dir, self.label_formats,
                                labels_optional=folder in self.unlabeled_splits)
        super().__init__(samples, transform)


class BDD100KDataset(SegmentationDataset):
    """BDD100K-10k sem-seg: ``root/images/10k/{split}/*.jpg`` with ``root/labels/sem_seg/masks/{split}/*.png``.

    Masks are 8-bit trainIds. No boxes: det_20 labels the 100k images (BDD100KDetDataset), and the 10k set is not a
    subset of them, so a 10k image is not the det_20 frame of the same name.
    """

    label_formats = {".png": _TRAINID_LUT}

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None):
        root = _require_dir(Path(root), "BDD100K root")
        samples = _pair_samples(root / "images" / "10k" / split, ".jpg", root / "labels" / "sem_seg" / "masks" / split,
                                self.label_formats, labels_optional=split in self.unlabeled_splits)
        super().__init__(samples, transform)


class BDD100KDetDataset(SegmentationDataset):
    """BDD100K-100k detection: ``root/images/100k/{split}/*.jpg`` with boxes from ``labels/det_20/det_{split}.json``.

    These images have no semantic labels (``label`` is all-ignore). Categories map by ``BDD_DET_TO_TRAINID``; images
    det_20 does not list, and the ``test`` split, have no boxes.
    """

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None):
        root = _require_dir(Path(root), "BDD100K root")
        samples = _pair_samples(root / "images" / "100k" / split, ".jpg", None)
        self._boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if split not in self.unlabeled_splits:
            det_json = root / "labels" / "det_20" / f"det_{split}.json"
            if not det_json.is_file():
                raise DatasetError(f"detection labels not found: expected file {det_json}")
            self._boxes = _load_bdd_boxes(det_json, {Path(s.image).name for s in samples})
            for sample in samples:
                sample.boxes_json = str(det_json)
        super().__init__(samples, transform)

    def _read_boxes(self, sample: Sample, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of the image from the det json (copies: transforms must not alter the cache)."""
        boxes, labels = self._boxes.get(Path(sample.image).name, _no_boxes())
        return boxes.copy(), labels.copy()


def _load_bdd_boxes(path: Path, image_names: Collection[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse a BDD100K det_20 json into {image file name: (Nx4 float32 xyxy, N int64 trainIds)} for ``image_names``.

    Scalabel ``box2d`` corners are inclusive pixel indices (its COCO width is ``x2 - x1 + 1``); the pixel-edge box
    is ``(x1, y1, x2 + 1, y2 + 1)``.
    """
    boxes = {}
    try:
        for frame in json.loads(path.read_text()):
            if frame["name"] not in image_names:
                continue
            kept = [(label["box2d"], BDD_DET_TO_TRAINID[label["category"]]) for label in frame.get("labels") or ()
                    if label.get("category") in BDD_DET_TO_TRAINID and "box2d" in label]
            boxes[frame["name"]] = (
                np.asarray([[b["x1"], b["y1"], b["x2"] + 1, b["y2"] + 1] for b, _ in kept], np.float32).reshape(-1, 4),
                np.asarray([train_id for _, train_id in kept], np.int64),
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"cannot parse BDD100K detection labels {path}: {err!r}") from err
    return boxes


class ACDCDataset(SegmentationDataset):
    """ACDC: ``root/rgb_anon/{cond}/{split}/GOPR*/*_rgb_anon.png``, ``gt/{cond}/{split}/*/*_gt_labelTrainIds.png``.

    ``conditions`` is one of fog/night/rain/snow, ``'all'`` (the four, flattened in that order) or a sequence of them.
    The ``*_ref`` splits hold unlabeled clear-weather ``*_rgb_ref_anon.png`` frames. The other gt files
    (``_gt_labelIds``, ``_gt_labelColor``, ``_gt_invIds``) are not read.
    """

    CONDITIONS = ("fog", "night", "rain", "snow")
    label_formats = {"_gt_labelTrainIds.png": _TRAINID_LUT}
    unlabeled_splits = ("test", "train_ref", "val_ref", "test_ref")
    # The reimplementation tests ACDC at half its 1920x1080 for synthetic-source models (not fitted to 1024x512,
    # which would give 910x512) and at full size for real-source ones.
    eval_fit_sizes = {"synthetic": [540, 960], "real": [1080, 1920]}

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 conditions: Union[str, Iterable[str]] = "all"):
        root = _require_dir(Path(root), "ACDC root")
        if conditions == "all":
            conditions = self.CONDITIONS
        elif isinstance(conditions, str):
            conditions = (conditions,)
        unknown = set(conditions) - set(self.CONDITIONS)
        if unknown:
            raise ValueError(f"unknown ACDC conditions {sorted(unknown)}; expected {self.CONDITIONS} or 'all'")
        self.conditions = tuple(conditions)
        image_suffix = "_rgb_ref_anon.png" if split.endswith("_ref") else "_rgb_anon.png"
        samples = [
            sample
            for condition in self.conditions
            for sample in _pair_samples(root / "rgb_anon" / condition / split, image_suffix,
                                        root / "gt" / condition / split, self.label_formats,
                                        labels_optional=split in self.unlabeled_splits)
        ]
        super().__init__(samples, transform)


DATASETS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": CityscapesDataset,
    "gta5": GTA5Dataset,
    "synthia": SynthiaDataset,
    "mapillary": MapillaryDataset,
    "bdd100k": BDD100KDataset,
    "bdd100k_det": BDD100KDetDataset,
    "acdc": ACDCDataset,
}


def build_dataset(name: str, root: PathLike, split: str, transform: Optional[Transform] = None,
                  **kwargs) -> SegmentationDataset:
    """Construct the reader registered as ``name`` in DATASETS; extra kwargs go to its constructor."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
    return cls(root, split, transform, **kwargs)
