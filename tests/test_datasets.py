"""Dataset readers on tiny trees written exactly as the public releases ship them (tests/dataset_fixtures.py).

Expected trainIds are the fixtures' hand-written ``*_TRAINIDS`` bands; boxes are worked out by hand below.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_fixtures as fx
from vltseg_train.datasets import (
    DATASETS,
    MAPILLARY_LUTS,
    SYNTHIA_16_CLASSES,
    ACDCDataset,
    BDD100KDataset,
    BDD100KDetDataset,
    CityscapesDataset,
    DatasetError,
    GTA5Dataset,
    MapillaryDataset,
    SegmentationDataset,
    SynthiaDataset,
    build_dataset,
)

LAYOUTS = {
    "cityscapes": (fx.write_cityscapes, "train", 3),
    "gta5": (fx.write_gta5, "all", 3),
    "synthia": (fx.write_synthia, "all", 2),
    "mapillary": (fx.write_mapillary, "train", 2),
    "bdd100k": (fx.write_bdd100k, "train", 2),
    "bdd100k_det": (fx.write_bdd100k, "train", 3),
    "acdc": (fx.write_acdc, "train", 8),
}
"""Reader name -> (fixture writer, split, sample count)."""


def bands(label: np.ndarray) -> tuple[int, ...]:
    """The eight band values of a banded label map (each band must be uniform)."""
    values = label[0, ::fx.BAND]
    np.testing.assert_array_equal(label, np.tile(np.repeat(values, fx.BAND), (fx.H, 1)))
    return tuple(int(v) for v in values)


def rolled(values: tuple[int, ...], shift: int) -> tuple[int, ...]:
    """``values`` as fx.band_map places them for sample ``shift``."""
    return tuple(int(v) for v in np.roll(values, shift))


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path):
    """(reader name, root, split, expected sample count) of a freshly written tree."""
    write, split, count = LAYOUTS[request.param]
    write(tmp_path)
    return request.param, tmp_path, split, count


def test_registry_covers_every_layout():
    assert set(DATASETS) == set(LAYOUTS)
    with pytest.raises(ValueError, match="cityscapes"):
        build_dataset("kitti", "/nowhere", "train")


def test_every_layout_yields_the_sample_contract(layout):
    name, root, split, count = layout
    dataset = build_dataset(name, str(root), split)
    assert isinstance(dataset, SegmentationDataset) and len(dataset) == count
    item = dataset[0]
    assert item["image"].shape == (fx.H, fx.W, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (fx.H, fx.W) and item["label"].dtype == np.uint8
    assert item["boxes"].dtype == np.float32 and item["boxes"].shape[1:] == (4,)
    assert item["box_labels"].dtype == np.int64 and len(item["box_labels"]) == len(item["boxes"])
    assert item["name"] == dataset.samples[0].name
    assert dataset.skipped == 0


def test_image_is_rgb(tmp_path):
    fx.write_gta5(tmp_path)
    np.testing.assert_array_equal(GTA5Dataset(tmp_path, "all")[0]["image"], fx.photo(0))


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
    ("bdd100k_det", "images/100k/nosplit"),
    ("acdc", "rgb_anon/fog/nosplit"),
])
def test_missing_split_names_the_expected_path(tmp_path, name, expected):
    LAYOUTS[name][0](tmp_path)
    with pytest.raises(DatasetError, match=str(tmp_path / expected)):
        build_dataset(name, tmp_path, "nosplit")


def test_empty_split_is_an_error(tmp_path):
    fx.write_cityscapes(tmp_path)
    (tmp_path / "leftImg8bit/val").mkdir()
    (tmp_path / "gtFine/val").mkdir()
    with pytest.raises(DatasetError, match="no .* images under .*leftImg8bit/val"):
        CityscapesDataset(tmp_path, "val")


def test_missing_label_names_image_and_label(tmp_path):
    fx.write_cityscapes(tmp_path, converted=False)
    label = tmp_path / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(DatasetError) as err:
        CityscapesDataset(tmp_path, "train")
    assert "bochum_000000_000313_leftImg8bit.png" in str(err.value) and str(label) in str(err.value)


def test_missing_label_directory_is_an_error_for_labeled_splits(tmp_path):
    fx.write_bdd100k(tmp_path)
    masks = tmp_path / "labels/sem_seg/masks/val"
    for path in masks.iterdir():
        path.unlink()
    masks.rmdir()
    with pytest.raises(DatasetError, match=str(masks)):
        BDD100KDataset(tmp_path, "val")


@pytest.mark.parametrize("name, split", [("bdd100k", "test"), ("bdd100k_det", "test"), ("acdc", "test"),
                                         ("mapillary", "test")])
def test_withheld_ground_truth_loads_all_ignore_without_boxes(tmp_path, name, split):
    LAYOUTS[name][0](tmp_path)
    dataset = build_dataset(name, tmp_path, split)
    assert all(sample.label is None for sample in dataset.samples)
    assert (dataset[0]["label"] == 255).all() and len(dataset[0]["boxes"]) == 0


# Cityscapes: gtFine release files, then csCreateTrainIdLabelImgs' labelTrainIds.

def test_cityscapes_release_label_ids_map_to_trainids(tmp_path):
    fx.write_cityscapes(tmp_path, converted=False)
    dataset = CityscapesDataset(tmp_path, "train")
    assert [s.name for s in dataset.samples] == [frame.split("/")[1] for frame in fx.CITYSCAPES_FRAMES]
    for i, sample in enumerate(dataset.samples):
        assert sample.label.endswith("_gtFine_labelIds.png") and sample.instances.endswith("_gtFine_instanceIds.png")
        assert bands(dataset[i]["label"]) == rolled(fx.CITYSCAPES_TRAINIDS, i)


def test_cityscapes_prefers_converted_trainids(tmp_path):
    fx.write_cityscapes(tmp_path, converted=True)
    dataset = CityscapesDataset(tmp_path, "train")
    assert all(s.label.endswith("_gtFine_labelTrainIds.png") for s in dataset.samples)
    assert [bands(dataset[i]["label"]) for i in range(3)] == [rolled(fx.CITYSCAPES_TRAINIDS, i) for i in range(3)]


def test_cityscapes_boxes_from_16bit_instance_ids(tmp_path):
    fx.write_cityscapes(tmp_path)
    item = CityscapesDataset(tmp_path, "train")[0]
    # Bands: 7 8 | car 26000 | car 26001 over the upper half, crowd (26) below | person 24000 | 5 | bicycle 33000 |
    # caravan 29000 (no trainId). Boxes in instance-id order, pixel-edge xyxy.
    np.testing.assert_array_equal(item["boxes"], [[16, 0, 20, 24], [8, 0, 12, 24], [12, 0, 16, 12], [24, 0, 28, 24]])
    np.testing.assert_array_equal(item["box_labels"], [11, 13, 13, 18])


# GTA5: palette labels whose index is the Cityscapes labelId.

def test_gta5_palette_labels_yield_trainids(tmp_path):
    fx.write_gta5(tmp_path)
    dataset = GTA5Dataset(tmp_path, "all")
    assert [s.name for s in dataset.samples] == list(fx.GTA5_NAMES)
    assert [bands(dataset[i]["label"]) for i in range(3)] == [rolled(fx.GTA5_TRAINIDS, i) for i in range(3)]
    assert dataset.skipped == 0


def test_gta5_prefers_converted_trainids(tmp_path):
    fx.write_gta5(tmp_path, converted=True)
    dataset = GTA5Dataset(tmp_path, "all")
    assert all(s.label.endswith("_labelTrainIds.png") for s in dataset.samples)
    assert bands(dataset[1]["label"]) == rolled(fx.GTA5_TRAINIDS, 1)


def test_gta5_split_lists(tmp_path):
    fx.write_gta5(tmp_path)
    (tmp_path / "val.txt").write_text("00002.png\n00003\n")
    assert [s.name for s in GTA5Dataset(tmp_path, "val").samples] == ["00002", "00003"]
    other = tmp_path / "lists/mine.txt"
    other.parent.mkdir()
    other.write_text("00001\n")
    assert [s.name for s in GTA5Dataset(tmp_path, "mine", split_file=other).samples] == ["00001"]


def test_gta5_label_of_another_size_is_skipped_and_counted(tmp_path, caplog):
    fx.write_gta5(tmp_path)
    bad = tmp_path / "labels/00002.png"
    fx.palette_png(bad, np.vstack([fx.band_map(fx.GTA5_IDS, 1)] * 2), fx.CITYSCAPES_ID_COLORS)
    dataset = GTA5Dataset(tmp_path, "all")
    with caplog.at_level(logging.WARNING, logger="vltseg_train.datasets"):
        item = dataset[1]
    assert item["name"] == "00003" and dataset.skipped == 1
    assert str(bad) in caplog.text and "differs from its image" in caplog.text


# SYNTHIA-RAND-CITYSCAPES: 16-bit 3-channel GT/LABELS.

def test_synthia_16bit_labels_yield_trainids_with_terrain_truck_train(tmp_path):
    fx.write_synthia(tmp_path)
    dataset = SynthiaDataset(tmp_path, "all")
    assert [s.name for s in dataset.samples] == list(fx.SYNTHIA_NAMES)
    assert [bands(dataset[i]["label"]) for i in range(2)] == [rolled(fx.SYNTHIA_TRAINIDS, i) for i in range(2)]


def test_synthia_16_class_protocol_leaves_out_terrain_truck_train():
    assert SYNTHIA_16_CLASSES == tuple(t for t in range(19) if t not in (9, 14, 16))


def test_synthia_prefers_converted_trainids(tmp_path):
    fx.write_synthia(tmp_path, converted=True)
    dataset = SynthiaDataset(tmp_path, "all")
    assert all(s.label.endswith("_labelTrainIds.png") for s in dataset.samples)
    assert bands(dataset[1]["label"]) == rolled(fx.SYNTHIA_TRAINIDS, 1)


# Mapillary Vistas v1.2: 66-class palette labels.

@pytest.mark.parametrize("release, labels", [("v2.0", "training/v1.2/labels"), ("v1.2", "training/labels")])
def test_mapillary_palette_labels_by_hrda_and_rein(tmp_path, release, labels):
    fx.write_mapillary(tmp_path, release)
    hrda, rein = MapillaryDataset(tmp_path, "train"), MapillaryDataset(tmp_path, "training", mapping="rein")
    assert [s.name for s in hrda.samples] == sorted(fx.MAPILLARY_KEYS)
    assert all(str(tmp_path / labels) in s.label for s in hrda.samples)
    i = fx.MAPILLARY_KEYS.index(hrda.samples[0].name)
    assert bands(hrda[0]["label"]) == rolled(fx.MAPILLARY_HRDA_TRAINIDS, i)
    assert bands(rein[0]["label"]) == rolled(fx.MAPILLARY_REIN_TRAINIDS, i)
    assert len(MapillaryDataset(tmp_path, "val")) == 2
    with pytest.raises(ValueError, match="rein"):
        MapillaryDataset(tmp_path, "train", mapping="openseg")


def test_mapillary_rein_lut_matches_data_doc():
    documented = [255, 255, 1, 4, 255, 255, 3, 0, 0, 1, 0, 1, 255, 0, 0, 1, 255, 2, 255, 11, 12, 12, 12, 0, 0, 255,
                  255, 10, 255, 9, 8] + [255] * 13 + [5, 5, 7, 5, 6, 7, 7, 255, 18, 255, 15, 13, 255, 17, 16, 255,
                                                      255, 14, 255, 255, 255, 255]
    np.testing.assert_array_equal(MAPILLARY_LUTS["rein"][:66], documented)
    assert (MAPILLARY_LUTS["rein"][66:] == 255).all()


# BDD100K: 10k sem_seg masks; 100k images with det_20 boxes.

def test_bdd100k_sem_seg_masks_are_trainids_and_carry_no_det_20_boxes(tmp_path):
    fx.write_bdd100k(tmp_path)
    dataset = BDD100KDataset(tmp_path, "val")
    assert [s.name for s in dataset.samples] == list(fx.BDD100K_10K_NAMES)
    assert [bands(dataset[i]["label"]) for i in range(2)] == [rolled(fx.BDD100K_TRAINIDS, i) for i in range(2)]
    # 7d06fefd-f7be05a6 also names a 100k frame with a bus in det_20; the 10k image is not that frame.
    assert [len(dataset[i]["boxes"]) for i in range(2)] == [0, 0]


def test_bdd100k_det_reads_100k_images_with_pixel_edge_det_20_boxes(tmp_path):
    fx.write_bdd100k(tmp_path)
    dataset = BDD100KDetDataset(tmp_path, "train")
    assert [Path(s.image).parent for s in dataset.samples] == [tmp_path / "images/100k/train"] * 3
    assert [s.name for s in dataset.samples] == sorted(fx.BDD100K_100K_NAMES)
    bus, street, empty = (dataset[i] for i in range(3))
    # Scalabel corners are inclusive: x2 + 1, y2 + 1. Traffic light, other vehicle and trailer have no trainId box.
    np.testing.assert_array_equal(street["boxes"], [[2.5, 3, 11, 16], [20, 1, 24, 23]])
    np.testing.assert_array_equal(street["box_labels"], [13, 11])
    np.testing.assert_array_equal(bus["boxes"], [[0, 0, 32, 24]])
    np.testing.assert_array_equal(bus["box_labels"], [15])
    assert len(empty["boxes"]) == 0 and (street["label"] == 255).all()


def test_bdd100k_det_boxes_are_copies(tmp_path):
    fx.write_bdd100k(tmp_path)
    dataset = BDD100KDetDataset(tmp_path, "train")
    dataset[1]["boxes"][:] = -1
    assert (dataset[1]["boxes"] >= 0).all()


def test_bdd100k_det_without_det_20_json_names_it(tmp_path):
    fx.write_bdd100k(tmp_path)
    (tmp_path / "labels/det_20/det_val.json").unlink()
    with pytest.raises(DatasetError, match=str(tmp_path / "labels/det_20/det_val.json")):
        BDD100KDetDataset(tmp_path, "val")


def test_bdd100k_det_json_with_wrong_keys_is_an_error(tmp_path):
    fx.write_bdd100k(tmp_path)
    (tmp_path / "labels/det_20/det_train.json").write_text(json.dumps([{"labels": []}]))
    with pytest.raises(DatasetError, match="det_train.json"):
        BDD100KDetDataset(tmp_path, "train")


# ACDC: gt_labelTrainIds per condition, reference folders alongside.

def test_acdc_label_trainids_per_condition(tmp_path):
    fx.write_acdc(tmp_path)
    everything = ACDCDataset(tmp_path, "train")
    assert [s.name for s in everything.samples][:2] == ["GOPR0475_frame_000041", "GOPR0475_frame_000042"]
    assert [bands(everything[i]["label"]) for i in range(8)] == [rolled(fx.CITYSCAPES_TRAINIDS, i) for i in range(8)]
    night = ACDCDataset(tmp_path, "val", conditions="night")
    assert [s.name for s in night.samples] == ["GOPR0351_frame_000100"]
    assert bands(night[0]["label"]) == rolled(fx.CITYSCAPES_TRAINIDS, 2)
    assert len(ACDCDataset(tmp_path, "val", conditions=["fog", "snow"])) == 2
    with pytest.raises(ValueError, match="fog"):
        ACDCDataset(tmp_path, "train", conditions="dusk")


def test_acdc_reference_split_is_unlabeled(tmp_path):
    fx.write_acdc(tmp_path)
    reference = ACDCDataset(tmp_path, "train_ref", conditions="rain")
    assert len(reference) == 2 and (reference[0]["label"] == 255).all()


# Unreadable files.

@pytest.mark.parametrize("corrupt", ["image", "label"])
def test_corrupt_file_is_skipped_counted_and_replaced(tmp_path, caplog, corrupt):
    fx.write_gta5(tmp_path)
    dataset = GTA5Dataset(tmp_path, "all")
    bad = Path(getattr(dataset.samples[1], corrupt))
    bad.write_bytes(b"not a png" * 10)
    with caplog.at_level(logging.WARNING, logger="vltseg_train.datasets"):
        item = dataset[1]
    assert item["name"] == "00003"
    assert dataset.skipped == 1
    assert str(bad) in caplog.text


def test_truncated_palette_label_is_skipped(tmp_path, caplog):
    fx.write_gta5(tmp_path)
    dataset = GTA5Dataset(tmp_path, "all")
    bad = Path(dataset.samples[0].label)
    bad.write_bytes(bad.read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="vltseg_train.datasets"):
        assert dataset[0]["name"] == "00002"
    assert dataset.skipped == 1 and str(bad) in caplog.text


def test_colour_label_is_unreadable(tmp_path):
    fx.write_gta5(tmp_path)
    for name in fx.GTA5_NAMES:
        fx.save(tmp_path / "labels" / f"{name}.png", Image.fromarray(fx.photo(0)))
    with pytest.raises(DatasetError, match="all 3 samples are unreadable"):
        GTA5Dataset(tmp_path, "all")[0]


def test_all_corrupt_raises(tmp_path):
    fx.write_synthia(tmp_path)
    for path in (tmp_path / "RGB").iterdir():
        path.write_bytes(b"garbage")
    dataset = SynthiaDataset(tmp_path, "all")
    with pytest.raises(DatasetError, match="all 2 samples are unreadable"):
        dataset[0]
    assert dataset.skipped == 2


def test_skips_in_dataloader_workers_reach_the_main_process(tmp_path):
    fx.write_acdc(tmp_path)
    dataset = ACDCDataset(tmp_path, "train")
    for sample in dataset.samples[::2]:
        Path(sample.image).write_bytes(b"garbage")
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    names = [item["name"] for item in loader]
    assert len(names) == 8 and set(names) == {s.name for s in dataset.samples[1::2]}
    assert dataset.skipped == 4


def test_index_out_of_range(tmp_path):
    fx.write_synthia(tmp_path)
    with pytest.raises(IndexError):
        SynthiaDataset(tmp_path, "all")[2]
