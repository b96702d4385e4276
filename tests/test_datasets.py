"""Dataset readers on tiny fake trees in each on-disk layout (32x64 images): pairing, label mappings, boxes, errors."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from training.datasets import (
    DATASETS,
    MAPILLARY_LUTS,
    SYNTHIA_16_CLASSES,
    ACDCDataset,
    BDD100KDataset,
    CityscapesDataset,
    DatasetError,
    GTA5Dataset,
    MapillaryDataset,
    SegmentationDataset,
    SynthiaDataset,
    build_dataset,
)

H, W = 32, 64


def _write(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return str(path)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _ids(value: int, dtype=np.uint8) -> np.ndarray:
    return np.full((H, W), value, dtype)


def _palette_png(path: Path, ids: np.ndarray) -> None:
    """Mapillary-style label: 8-bit palette PNG whose index is the class id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8)))
    image.save(path)


def make_cityscapes(root: Path) -> dict:
    """Two cities; one frame has only labelIds (fallback), one has a 16-bit instanceIds map."""
    for city, stem in (("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
                       ("bochum", "bochum_000000_000313")):
        _write(root / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png", _image(len(stem)))
        if stem != "aachen_000001_000019":
            _write(root / "gtFine/train" / city / f"{stem}_gtFine_labelTrainIds.png", _ids(0))
    label_ids = _ids(7)
    label_ids[:, :10] = 26
    label_ids[:, 10:20] = 5
    _write(root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png", label_ids)
    instances = _ids(7, np.uint16)
    instances[2:6, 10:20] = 26001  # car: rows 2-5, cols 10-19
    instances[20:30, 40:44] = 24000  # person
    instances[0:4, 0:4] = 26  # car crowd region: no instance, no box
    instances[28:32, 60:64] = 29001  # caravan: no trainId, no box
    _write(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png", instances)
    return {"split": "train"}


def make_gta5(root: Path) -> dict:
    for i in range(3):
        _write(root / "images" / f"{i:05d}.png", _image(i))
        _write(root / "labels" / f"{i:05d}.png", _ids(7 if i == 0 else 26))
    (root / "val.txt").write_text("00001.png\n00002\n")
    return {"split": "all"}


def make_synthia(root: Path) -> dict:
    for i in range(2):
        _write(root / "RGB" / f"{i:07d}.png", _image(i))
        gt = np.zeros((H, W, 3), np.uint16)
        gt[:, :, 0] = 1000 + i  # instance channel: must not be read as the class
        gt[:, :, 2] = 8  # car; the last channel in cv2 order holds the class id
        _write(root / "GT/LABELS" / f"{i:07d}.png", gt)
    return {"split": "all"}


def make_mapillary(root: Path) -> dict:
    ids = np.full((H, W), 55, np.uint8)
    ids[:, :16] = 41  # manhole
    for folder, labels in (("training", "v1.2/labels"), ("validation", "labels")):
        for stem in ("a1", "b2"):
            _write(root / folder / "images" / f"{stem}.jpg", _image(3))
            _palette_png(root / folder / labels / f"{stem}.png", ids)
    return {"split": "train"}


def make_bdd100k(root: Path) -> dict:
    for stem in ("7d06fefd-f7be05a6", "7d128593-0ccfea4c"):
        _write(root / "images/10k/train" / f"{stem}.jpg", _image(4))
        _write(root / "labels/sem_seg/masks/train" / f"{stem}.png", _ids(13))
    det = [
        {"name": "7d06fefd-f7be05a6.jpg", "labels": [
            {"category": "car", "box2d": {"x1": 1.5, "y1": 2.0, "x2": 30.0, "y2": 20.0}},
            {"category": "traffic light", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}},
            {"category": "pedestrian", "box2d": {"x1": 40, "y1": 4, "x2": 44, "y2": 30}},
        ]},
        {"name": "not-in-the-10k-split.jpg", "labels": []},
    ]
    (root / "labels/det_20").mkdir(parents=True)
    (root / "labels/det_20/det_train.json").write_text(json.dumps(det))
    return {"split": "train"}


def make_acdc(root: Path) -> dict:
    for c, condition in enumerate(ACDCDataset.CONDITIONS):
        for frame in (41, 42):
            stem = f"GOPR047{c}_frame_0000{frame}"
            _write(root / "rgb_anon" / condition / "train" / f"GOPR047{c}" / f"{stem}_rgb_anon.png", _image(frame))
            _write(root / "gt" / condition / "train" / f"GOPR047{c}" / f"{stem}_gt_labelTrainIds.png", _ids(c))
    return {"split": "train"}


LAYOUTS = {
    "cityscapes": (make_cityscapes, 3),
    "gta5": (make_gta5, 3),
    "synthia": (make_synthia, 2),
    "mapillary": (make_mapillary, 2),
    "bdd100k": (make_bdd100k, 2),
    "acdc": (make_acdc, 8),
}


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path):
    """(dataset name, root, split, expected sample count) of a freshly written fake tree."""
    make, count = LAYOUTS[request.param]
    return request.param, tmp_path, make(tmp_path)["split"], count


def test_registry_covers_all_six_layouts():
    assert set(DATASETS) == set(LAYOUTS)
    with pytest.raises(ValueError, match="cityscapes"):
        build_dataset("kitti", "/nowhere", "train")


def test_every_layout_yields_the_sample_contract(layout):
    name, root, split, count = layout
    dataset = build_dataset(name, str(root), split)
    assert isinstance(dataset, SegmentationDataset) and len(dataset) == count
    item = dataset[0]
    assert item["image"].shape == (H, W, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (H, W) and item["label"].dtype == np.uint8
    assert item["boxes"].dtype == np.float32 and item["boxes"].shape[1:] == (4,)
    assert item["box_labels"].dtype == np.int64 and len(item["box_labels"]) == len(item["boxes"])
    assert item["name"] == dataset.samples[0].name


def test_image_is_rgb(tmp_path):
    make_gta5(tmp_path)
    assert np.array_equal(GTA5Dataset(tmp_path, "all")[0]["image"], _image(0)[:, :, ::-1])  # written as BGR


def test_transform_is_applied(layout):
    name, root, split, _ = layout
    dataset = build_dataset(name, root, split, transform=lambda sample: sample["name"])
    assert dataset[0] == dataset.samples[0].name


def test_wrong_root_names_the_path(layout, tmp_path):
    name, _, split, _ = layout
    missing = tmp_path / "no_such_root"
    with pytest.raises(DatasetError, match=str(missing)):
        build_dataset(name, missing, split)


@pytest.mark.parametrize("name, expected", [
    ("cityscapes", "leftImg8bit/nosplit"),
    ("gta5", "nosplit.txt"),
    ("synthia", "nosplit.txt"),
    ("mapillary", "nosplit/images"),
    ("bdd100k", "images/10k/nosplit"),
    ("acdc", "rgb_anon/fog/nosplit"),
])
def test_missing_split_names_the_expected_path(tmp_path, name, expected):
    LAYOUTS[name][0](tmp_path)
    with pytest.raises(DatasetError, match=str(tmp_path / expected)):
        build_dataset(name, tmp_path, "nosplit")


def test_empty_split_is_an_error(tmp_path):
    make_cityscapes(tmp_path)
    (tmp_path / "leftImg8bit/val").mkdir()
    (tmp_path / "gtFine/val").mkdir()
    with pytest.raises(DatasetError, match="no .* images under .*leftImg8bit/val"):
        CityscapesDataset(tmp_path, "val")


def test_missing_label_names_image_and_label(tmp_path):
    make_cityscapes(tmp_path)
    label = tmp_path / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelTrainIds.png"
    label.unlink()
    with pytest.raises(DatasetError) as err:
        CityscapesDataset(tmp_path, "train")
    assert "bochum_000000_000313_leftImg8bit.png" in str(err.value) and str(label) in str(err.value)


def test_missing_label_directory_is_an_error_for_labeled_splits(tmp_path):
    make_bdd100k(tmp_path)
    (tmp_path / "images/10k/val").mkdir(parents=True)
    _write(tmp_path / "images/10k/val/x.jpg", _image(0))
    with pytest.raises(DatasetError, match=str(tmp_path / "labels/sem_seg/masks/val")):
        BDD100KDataset(tmp_path, "val")


def test_test_split_without_ground_truth_loads_all_ignore(tmp_path):
    _write(tmp_path / "images/10k/test/x.jpg", _image(0))
    dataset = BDD100KDataset(tmp_path, "test")
    assert dataset.samples[0].label is None
    assert (dataset[0]["label"] == 255).all()


def test_cityscapes_pairs_by_name_across_cities(tmp_path):
    make_cityscapes(tmp_path)
    dataset = CityscapesDataset(tmp_path, "train")
    assert [s.name for s in dataset.samples] == ["aachen_000000_000019", "aachen_000001_000019",
                                                 "bochum_000000_000313"]
    assert dataset.samples[1].label.endswith("aachen_000001_000019_gtFine_labelIds.png")
    assert dataset.samples[0].instances.endswith("_gtFine_instanceIds.png") and dataset.samples[1].instances is None


def test_cityscapes_label_ids_fall_back_to_trainids(tmp_path):
    make_cityscapes(tmp_path)
    label = CityscapesDataset(tmp_path, "train")[1]["label"]
    assert label[0, 0] == 13  # labelId 26 car
    assert label[0, 15] == 255  # labelId 5 (void)
    assert label[0, 30] == 0  # labelId 7 road


def test_cityscapes_boxes_from_instance_ids(tmp_path):
    make_cityscapes(tmp_path)
    dataset = CityscapesDataset(tmp_path, "train")
    item = dataset[0]
    np.testing.assert_array_equal(item["boxes"], [[40, 20, 44, 30], [10, 2, 20, 6]])  # person, car (by id)
    np.testing.assert_array_equal(item["box_labels"], [11, 13])
    assert len(dataset[2]["boxes"]) == 0


def test_gta5_maps_label_ids_and_reads_split_lists(tmp_path):
    make_gta5(tmp_path)
    dataset = GTA5Dataset(tmp_path, "all")
    assert [s.name for s in dataset.samples] == ["00000", "00001", "00002"]
    assert (dataset[0]["label"] == 0).all()  # labelId 7 road
    assert [s.name for s in GTA5Dataset(tmp_path, "val").samples] == ["00001", "00002"]


def test_gta5_prefers_converted_trainid_labels(tmp_path):
    make_gta5(tmp_path)
    _write(tmp_path / "labels/00000_labelTrainIds.png", _ids(5))
    assert (GTA5Dataset(tmp_path, "all")[0]["label"] == 5).all()


def test_synthia_reads_class_from_last_channel_of_16bit_png(tmp_path):
    make_synthia(tmp_path)
    assert (SynthiaDataset(tmp_path, "all")[1]["label"] == 13).all()
    assert len(SYNTHIA_16_CLASSES) == 16 and not {9, 14, 16} & set(SYNTHIA_16_CLASSES)


def test_mapillary_hrda_and_rein_mappings(tmp_path):
    make_mapillary(tmp_path)
    hrda = MapillaryDataset(tmp_path, "train")[0]["label"]
    rein = MapillaryDataset(tmp_path, "train", mapping="rein")[0]["label"]
    assert hrda[0, 0] == 0 and rein[0, 0] == 255  # 41 manhole
    assert hrda[0, 40] == 13 and rein[0, 40] == 13  # 55 car
    with pytest.raises(ValueError, match="rein"):
        MapillaryDataset(tmp_path, "train", mapping="openseg")


def test_mapillary_split_names_and_label_folders(tmp_path):
    make_mapillary(tmp_path)
    train, val = MapillaryDataset(tmp_path, "train"), MapillaryDataset(tmp_path, "val")
    assert "training/v1.2/labels" in train.samples[0].label
    assert "validation/labels" in val.samples[0].label
    assert [s.name for s in val.samples] == ["a1", "b2"]


def test_mapillary_rein_lut_matches_data_doc():
    documented = [255, 255, 1, 4, 255, 255, 3, 0, 0, 1, 0, 1, 255, 0, 0, 1, 255, 2, 255, 11, 12, 12, 12, 0, 0, 255,
                  255, 10, 255, 9, 8] + [255] * 13 + [5, 5, 7, 5, 6, 7, 7, 255, 18, 255, 15, 13, 255, 17, 16, 255,
                                                      255, 14, 255, 255, 255, 255]
    np.testing.assert_array_equal(MAPILLARY_LUTS["rein"][:66], documented)
    assert (MAPILLARY_LUTS["rein"][66:] == 255).all()


def test_bdd100k_masks_and_det_boxes(tmp_path):
    make_bdd100k(tmp_path)
    dataset = BDD100KDataset(tmp_path, "train")
    first, second = dataset[0], dataset[1]
    assert (first["label"] == 13).all()
    np.testing.assert_array_equal(first["boxes"], [[1.5, 2, 30, 20], [40, 4, 44, 30]])
    np.testing.assert_array_equal(first["box_labels"], [13, 11])  # traffic light dropped
    assert len(second["boxes"]) == 0
    assert dataset.samples[0].boxes_json.endswith("labels/det_20/det_train.json")


def test_acdc_conditions(tmp_path):
    make_acdc(tmp_path)
    everything = ACDCDataset(tmp_path, "train")
    assert len(everything) == 8 and everything.samples[0].name == "GOPR0470_frame_000041"
    night = ACDCDataset(tmp_path, "train", conditions="night")
    assert len(night) == 2 and (night[0]["label"] == 1).all()
    with pytest.raises(ValueError, match="fog"):
        ACDCDataset(tmp_path, "train", conditions="dusk")


@pytest.mark.parametrize("corrupt", ["image", "label"])
def test_corrupt_file_is_skipped_counted_and_replaced(tmp_path, caplog, corrupt):
    make_gta5(tmp_path)
    dataset = GTA5Dataset(tmp_path, "all")
    bad = Path(getattr(dataset.samples[1], corrupt))
    bad.write_bytes(b"not a png" * 10)
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        item = dataset[1]
    assert item["name"] == "00002"
    assert dataset.skipped == 1
    assert str(bad) in caplog.text


def test_all_corrupt_raises(tmp_path):
    make_synthia(tmp_path)
    for path in (tmp_path / "RGB").iterdir():
        path.write_bytes(b"garbage")
    dataset = SynthiaDataset(tmp_path, "all")
    with pytest.raises(DatasetError, match="all 2 samples are unreadable"):
        dataset[0]
    assert dataset.skipped == 2


def test_skips_in_dataloader_workers_reach_the_main_process(tmp_path):
    make_acdc(tmp_path)
    dataset = ACDCDataset(tmp_path, "train")
    for sample in dataset.samples[::2]:
        Path(sample.image).write_bytes(b"garbage")
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    names = [item["name"] for item in loader]
    assert len(names) == 8 and set(names) == {s.name for s in dataset.samples[1::2]}
    assert dataset.skipped == 4


def test_index_out_of_range(tmp_path):
    make_synthia(tmp_path)
    with pytest.raises(IndexError):
        SynthiaDataset(tmp_path, "all")[2]
