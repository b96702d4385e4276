"""Writers of tiny dataset trees encoded exactly as the public releases ship them (names, PNG modes, bit depths).

Every label map is eight vertical bands of ``BAND`` pixels; band k of sample i holds ``ids[(k - i) % 8]`` (the
band pattern rolled by the sample index, so a mis-paired label shows). Each dataset's ``*_IDS`` are the stored
ids and ``*_TRAINIDS`` the Cityscapes trainIds they must become, written by hand from the published mappings
(docs/design.md#label-mappings). Sources of the encodings:
- cityscapesScripts ``json2labelImg`` ("L" ids/trainIds, "RGBA" colour) and ``json2instanceImg`` (PIL "I", which
  Pillow wrote as 16-bit grayscale PNG; ids ``labelId * 1000 + k``, k from 0; crowd regions keep the labelId);
- GTA5: "P" PNG whose index is the Cityscapes labelId (DAFormer ``gta.py`` reads ``np.asarray(Image.open(f))``);
- SYNTHIA-RAND-CITYSCAPES ``GT/LABELS``: 16-bit 3-channel PNG, class id in the file's first channel (DAFormer
  ``synthia.py`` reads cv2 channel -1, ADVENT imageio channel 0); the instance id goes in the second;
- Mapillary Vistas v1.2: "P" PNG whose index is the class id 0-65 with the 66-colour Vistas palette
  (Mask2Former ``register_mapillary_vistas.py``); ``instances`` are 16-bit, ``class * 256 + instance``;
- BDD100K: ``sem_seg/masks`` one-channel 8-bit trainIds, ``colormaps`` "P" (bdd100k ``to_mask``/``to_color``);
  det_20 is a Scalabel frame list on the 100k images whose ``box2d`` corners are inclusive pixels;
- ACDC: Cityscapes-style ``_gt_labelTrainIds.png`` etc. per condition, with ``*_ref`` reference folders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from vltseg_ros.labels import CITYSCAPES_PALETTE

H, W = 24, 32
BAND = 4
"""Band width in pixels: W / BAND = 8 bands."""

CITYSCAPES_IDS = (7, 8, 26, 26, 24, 5, 33, 29)
CITYSCAPES_TRAINIDS = (0, 1, 13, 13, 11, 255, 18, 255)
GTA5_IDS = (7, 8, 11, 26, 0, 24, 22, 14)
GTA5_TRAINIDS = (0, 1, 2, 13, 255, 11, 9, 255)
SYNTHIA_IDS = (3, 4, 8, 16, 18, 20, 0, 22)
SYNTHIA_TRAINIDS = (0, 1, 13, 9, 14, 16, 255, 255)
MAPILLARY_IDS = (13, 41, 2, 55, 19, 65, 45, 8)
MAPILLARY_HRDA_TRAINIDS = (0, 0, 1, 13, 11, 255, 5, 255)
MAPILLARY_REIN_TRAINIDS = (0, 255, 1, 13, 11, 255, 5, 0)
BDD100K_TRAINIDS = (0, 1, 2, 13, 255, 11, 10, 18)

# Cityscapes labelId -> colour (cityscapesScripts labels.py, ids 0-33), also GTA5's label palette.
CITYSCAPES_ID_COLORS = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81), (128, 64, 128),
    (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# Mapillary Vistas v1.2 classes in id order (config_v1.2.json ``labels``): (name, colour).
MAPILLARY_CLASSES = tuple(zip(
    ("animal--bird animal--ground-animal construction--barrier--curb construction--barrier--fence "
     "construction--barrier--guard-rail construction--barrier--other-barrier construction--barrier--wall "
     "construction--flat--bike-lane construction--flat--crosswalk-plain construction--flat--curb-cut "
     "construction--flat--parking construction--flat--pedestrian-area construction--flat--rail-track "
     "construction--flat--road construction--flat--service-lane construction--flat--sidewalk "
     "construction--structure--bridge construction--structure--building construction--structure--tunnel "
     "human--person human--rider--bicyclist human--rider--motorcyclist human--rider--other-rider "
     "marking--crosswalk-zebra marking--general nature--mountain nature--sand nature--sky nature--snow "
     "nature--terrain nature--vegetation nature--water object--banner object--bench object--bike-rack "
     "object--billboard object--catch-basin object--cctv-camera object--fire-hydrant object--junction-box "
     "object--mailbox object--manhole object--phone-booth object--pothole object--street-light "
     "object--support--pole object--support--traffic-sign-frame object--support--utility-pole "
     "object--traffic-light object--traffic-sign--back object--traffic-sign--front object--trash-can "
     "object--vehicle--bicycle object--vehicle--boat object--vehicle--bus object--vehicle--car "
     "object--vehicle--caravan object--vehicle--motorcycle object--vehicle--on-rails "
     "object--vehicle--other-vehicle object--vehicle--trailer object--vehicle--truck "
     "object--vehicle--wheeled-slow void--car-mount void--ego-vehicle void--unlabeled").split(),
    ((165, 42, 42), (0, 192, 0), (196, 196, 196), (190, 153, 153), (180, 165, 180), (90, 120, 150),
     (102, 102, 156), (128, 64, 255), (140, 140, 200), (170, 170, 170), (250, 170, 160), (96, 96, 96),
     (230, 150, 140), (128, 64, 128), (110, 110, 110), (244, 35, 232), (150, 100, 100), (70, 70, 70),
     (150, 120, 90), (220, 20, 60), (255, 0, 0), (255, 0, 100), (255, 0, 200), (200, 128, 128), (255, 255, 255),
     (64, 170, 64), (230, 160, 50), (70, 130, 180), (190, 255, 255), (152, 251, 152), (107, 142, 35),
     (0, 170, 30), (255, 255, 128), (250, 0, 30), (100, 140, 180), (220, 220, 220), (220, 128, 128),
     (222, 40, 40), (100, 170, 30), (40, 40, 40), (33, 33, 33), (100, 128, 160), (142, 0, 0), (70, 100, 150),
     (210, 170, 100), (153, 153, 153), (128, 128, 128), (0, 0, 80), (250, 170, 30), (192, 192, 192),
     (220, 220, 0), (140, 140, 20), (119, 11, 32), (150, 0, 255), (0, 60, 100), (0, 0, 142), (0, 0, 90),
     (0, 0, 230), (0, 80, 100), (128, 64, 64), (0, 0, 110), (0, 0, 70), (0, 0, 192), (32, 32, 32),
     (120, 10, 10), (0, 0, 0)),
))
CITYSCAPES_NAMES = {5: "dynamic", 7: "road", 8: "sidewalk", 24: "person", 26: "car", 29: "caravan", 33: "bicycle"}
"""Names of the labelIds used above, for the polygons json."""
CITYSCAPES_FRAMES = ("aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000313")
GTA5_NAMES = ("00001", "00002", "00003")
SYNTHIA_NAMES = ("0000000", "0000001")
MAPILLARY_KEYS = ("--BG9kHHb2cFOvtSyMCJbA", "_1Gn_xkw7sa_i9GU4mkxxQ")
BDD100K_10K_NAMES = ("0a0a0b1a-7c39d841", "7d06fefd-f7be05a6")
BDD100K_100K_NAMES = ("7d06fefd-f7be05a6", "b1c66a42-6f7d68ca", "b1c81faa-3df17267")
"""The first name is also a 10k image: the two sets overlap by name but the 10k set is not a subset."""
ACDC_SEQUENCES = {"fog": "GOPR0475", "night": "GOPR0351", "rain": "GOPR0400", "snow": "GOPR0122"}
ACDC_FRAMES = {"train": (41, 42), "val": (100,), "test": (7,)}


def band_map(values: Sequence[int], shift: int = 0, dtype: type = np.uint8) -> np.ndarray:
    """HxW map whose band k (columns BAND*k ... BAND*k+BAND-1) holds ``values[(k - shift) % 8]``."""
    return np.tile(np.repeat(np.roll(np.asarray(values, dtype), shift), BAND), (H, 1))


def photo(seed: int) -> np.ndarray:
    """An HxWx3 uint8 RGB image."""
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image) -> None:
    """Write ``image`` with PIL, in the format its suffix names (JPEG at quality 95), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def palette_png(path: Path, ids: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> None:
    """8-bit "P" PNG whose palette index is the id and whose palette is ``colors``."""
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette([channel for color in colors for channel in color])
    save(path, image)


def _colored(ids: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    return np.asarray(colors, np.uint8)[ids]


def _cityscapes_instance_ids(shift: int) -> np.ndarray:
    """16-bit instanceIds of a banded frame, as json2instanceImg writes them.

    Thing classes (labelId >= 24) get ``labelId * 1000 + k`` with k counting from 0 per class; the lower half of the
    second car band is a crowd region (``cargroup``), which keeps the plain labelId like every stuff pixel.
    """
    ids = band_map(CITYSCAPES_IDS, shift, np.uint16)
    counts: dict[int, int] = {}
    for source, label_id in enumerate(CITYSCAPES_IDS):
        if label_id < 24:
            continue
        k = counts[label_id] = counts.get(label_id, -1) + 1
        band = (source + shift) % len(CITYSCAPES_IDS)
        rows = slice(0, H // 2) if (label_id, k) == (26, 1) else slice(None)
        ids[rows, band * BAND:(band + 1) * BAND] = label_id * 1000 + k
    return ids


def write_cityscapes(root: Path, split: str = "train", converted: bool = True) -> None:
    """gtFine release files (labelIds, instanceIds, color, polygons); ``converted`` adds csCreateTrainIdLabelImgs'."""
    for i, frame in enumerate(CITYSCAPES_FRAMES):
        city, stem = frame.split("/")
        save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", Image.fromarray(photo(i)))
        gt = root / "gtFine" / split / city
        ids = band_map(CITYSCAPES_IDS, i)
        save(gt / f"{stem}_gtFine_labelIds.png", Image.fromarray(ids))
        save(gt / f"{stem}_gtFine_instanceIds.png", Image.fromarray(_cityscapes_instance_ids(i)))
        rgba = np.dstack([_colored(ids, CITYSCAPES_ID_COLORS), np.full((H, W), 255, np.uint8)])
        save(gt / f"{stem}_gtFine_color.png", Image.fromarray(rgba))
        objects = [{"label": CITYSCAPES_NAMES[label_id], "polygon": [[x, 0], [x + BAND - 1, 0], [x + BAND - 1, H - 1],
                                                                     [x, H - 1]]}
                   for x, label_id in zip(range(0, W, BAND), np.roll(CITYSCAPES_IDS, i))]
        (gt / f"{stem}_gtFine_polygons.json").write_text(
            json.dumps({"imgHeight": H, "imgWidth": W, "objects": objects}))
        if converted:
            save(gt / f"{stem}_gtFine_labelTrainIds.png", Image.fromarray(band_map(CITYSCAPES_TRAINIDS, i)))


def write_gta5(root: Path, converted: bool = False) -> None:
    """``images/NNNNN.png`` and "P" ``labels/NNNNN.png``; ``converted`` adds DAFormer's ``_labelTrainIds.png``."""
    for i, name in enumerate(GTA5_NAMES):
        save(root / "images" / f"{name}.png", Image.fromarray(photo(i)))
        palette_png(root / "labels" / f"{name}.png", band_map(GTA5_IDS, i), CITYSCAPES_ID_COLORS)
        if converted:
            save(root / "labels" / f"{name}_labelTrainIds.png", Image.fromarray(band_map(GTA5_TRAINIDS, i)))


def write_synthia(root: Path, converted: bool = False) -> None:
    """RAND-CITYSCAPES ``RGB/``, 16-bit ``GT/LABELS/`` and ``GT/COLOR/``; ``converted`` adds DAFormer's trainIds."""
    for i, name in enumerate(SYNTHIA_NAMES):
        save(root / "RGB" / f"{name}.png", Image.fromarray(photo(i)))
        ids = band_map(SYNTHIA_IDS, i, np.uint16)
        instances = np.where(ids == 8, 7, 0).astype(np.uint16)  # instance 7 on the cars: must not read as "pole"
        labels = root / "GT" / "LABELS" / f"{name}.png"
        labels.parent.mkdir(parents=True, exist_ok=True)
        # cv2 writes BGR: the array's last channel is the PNG's first (the class id), the middle one the instance.
        assert cv2.imwrite(str(labels), np.dstack([np.zeros_like(ids), instances, ids]))
        save(root / "GT" / "COLOR" / f"{name}.png", Image.fromarray(np.dstack([(ids * 10).astype(np.uint8)] * 3)))
        if converted:
            save(root / "GT" / "LABELS" / f"{name}_labelTrainIds.png",
                 Image.fromarray(band_map(SYNTHIA_TRAINIDS, i)))


def write_mapillary(root: Path, release: str = "v2.0") -> None:
    """Vistas ``{training,validation,testing}/images/*.jpg`` with v1.2 labels and instances, and ``config_v1.2.json``.

    ``release='v2.0'`` is the current download (``v1.2/`` and ``v2.0/`` label folders side by side, v2.0 with other
    ids); ``'v1.2'`` the original one (``labels/`` and ``instances/`` directly under the split).
    """
    labels = [{"name": name, "readable": name.split("--")[-1].replace("-", " ").title(), "color": list(color),
               "evaluate": name != "void--unlabeled"} for name, color in MAPILLARY_CLASSES]
    (root / "config_v1.2.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "config_v1.2.json").write_text(json.dumps({"labels": labels}))
    colors = [color for _, color in MAPILLARY_CLASSES]
    for folder in ("training", "validation", "testing"):
        for i, key in enumerate(MAPILLARY_KEYS):
            save(root / folder / "images" / f"{key}.jpg", Image.fromarray(photo(i)))
            if folder == "testing":
                continue
            v12 = root / folder / ("v1.2" if release == "v2.0" else "")
            palette_png(v12 / "labels" / f"{key}.png", band_map(MAPILLARY_IDS, i), colors)
            instances = band_map(MAPILLARY_IDS, i, np.uint16) * 256 + 1
            save(v12 / "instances" / f"{key}.png", Image.fromarray(instances))
            if release == "v2.0":
                palette_png(root / folder / "v2.0" / "labels" / f"{key}.png", band_map(MAPILLARY_IDS[::-1], i), colors)


def _det_label(index: int, category: str, box: tuple[float, float, float, float], light: str = "NA") -> dict:
    x1, y1, x2, y2 = box
    return {"id": str(index), "category": category,
            "attributes": {"occluded": False, "truncated": False, "trafficLightColor": light},
            "manualShape": True, "manualAttributes": True, "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}


DET_20_FRAMES = [
    {"name": f"{BDD100K_100K_NAMES[1]}.jpg", "timestamp": 10000,
     "attributes": {"weather": "overcast", "timeofday": "daytime", "scene": "city street"},
     "labels": [_det_label(0, "car", (2.5, 3.0, 10.0, 15.0)), _det_label(1, "traffic light", (0, 0, 3, 5), "G"),
                _det_label(2, "pedestrian", (20.0, 1.0, 23.0, 22.0)), _det_label(3, "other vehicle", (4, 4, 8, 8)),
                _det_label(4, "trailer", (12, 12, 16, 16))]},
    {"name": f"{BDD100K_100K_NAMES[0]}.jpg", "timestamp": 10000,
     "attributes": {"weather": "clear", "timeofday": "night", "scene": "highway"},
     "labels": [_det_label(5, "bus", (0.0, 0.0, 31.0, 23.0))]},
    {"name": f"{BDD100K_100K_NAMES[2]}.jpg", "timestamp": 10000,
     "attributes": {"weather": "rainy", "timeofday": "daytime", "scene": "residential"}},
]
"""det_20 frames: the real keys; box2d corners are inclusive pixels; a frame without objects has no ``labels``."""


def write_bdd100k(root: Path) -> None:
    """The 10k sem_seg set (images, masks, colormaps, polygons, rles) and the 100k detection set with det_20 json."""
    for split in ("train", "val"):
        for i, name in enumerate(BDD100K_10K_NAMES):
            save(root / "images" / "10k" / split / f"{name}.jpg", Image.fromarray(photo(i)))
            masks = band_map(BDD100K_TRAINIDS, i)
            save(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", Image.fromarray(masks))
            palette = list(CITYSCAPES_PALETTE) + [(0, 0, 0)] * (256 - len(CITYSCAPES_PALETTE))
            palette_png(root / "labels" / "sem_seg" / "colormaps" / split / f"{name}.png", masks, palette)
        for kind in ("polygons", "rles"):
            path = root / "labels" / "sem_seg" / kind / f"sem_seg_{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps([{"name": f"{name}.jpg", "labels": []} for name in BDD100K_10K_NAMES]))
        for i, name in enumerate(BDD100K_100K_NAMES):
            save(root / "images" / "100k" / split / f"{name}.jpg", Image.fromarray(photo(10 + i)))
        path = root / "labels" / "det_20" / f"det_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(DET_20_FRAMES))
    save(root / "images" / "10k" / "test" / f"{BDD100K_10K_NAMES[0]}.jpg", Image.fromarray(photo(0)))
    save(root / "images" / "100k" / "test" / f"{BDD100K_100K_NAMES[1]}.jpg", Image.fromarray(photo(0)))


def write_acdc(root: Path) -> None:
    """``rgb_anon/{cond}/{split}[_ref]/GOPRxxxx/`` and ``gt/{cond}/{split}/GOPRxxxx/`` (labelTrainIds, labelIds,
    labelColor, invIds) per condition; the test split has no gt."""
    for c, (condition, sequence) in enumerate(ACDC_SEQUENCES.items()):
        for split, frames in ACDC_FRAMES.items():
            for f, frame in enumerate(frames):
                stem, shift = f"{sequence}_frame_{frame:06d}", 2 * c + f
                rgb = root / "rgb_anon" / condition
                save(rgb / split / sequence / f"{stem}_rgb_anon.png", Image.fromarray(photo(shift)))
                save(rgb / f"{split}_ref" / sequence / f"{stem}_rgb_ref_anon.png", Image.fromarray(photo(99)))
                if split == "test":
                    continue
                gt = root / "gt" / condition / split / sequence
                ids = band_map(CITYSCAPES_IDS, shift)
                save(gt / f"{stem}_gt_labelTrainIds.png", Image.fromarray(band_map(CITYSCAPES_TRAINIDS, shift)))
                save(gt / f"{stem}_gt_labelIds.png", Image.fromarray(ids))
                save(gt / f"{stem}_gt_labelColor.png", Image.fromarray(_colored(ids, CITYSCAPES_ID_COLORS)))
                save(gt / f"{stem}_gt_invIds.png", Image.fromarray(np.zeros((H, W), np.uint8)))
