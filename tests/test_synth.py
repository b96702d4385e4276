"""Procedural domain-shift benchmark (vltseg_ros.synth): determinism, exact labels, Cityscapes layout, domain gap."""
from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np
import pytest

from vltseg_ros import synth
from vltseg_ros.labels import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_PALETTE, lookup_table
from vltseg_ros.synth.cli import add_arguments, run
from vltseg_ros.synth.frame import boxed_instances

SIZE = (96, 192)  # small frames keep the suite fast; the scene content does not depend on the size
LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)
THING_LABEL_IDS = (24, 25, 26, 27, 28, 31, 32, 33)
ALL_LOOKS = [("synthetic", "clear")] + [("realistic", c) for c in synth.CONDITIONS]


def render(seed, style="synthetic", condition="clear", size=SIZE):
    return synth.render_frame(seed, *size, style=style, condition=condition)


def expected_boxes(instance_ids):
    """Pixel-edge boxes of every thing instance left in the map (small ones are bare labelIds), sorted by id."""
    boxes, ids = [], []
    for value in np.unique(instance_ids[instance_ids >= 1000]):
        rows, cols = np.nonzero(instance_ids == value)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        ids.append(LUT[value // 1000])
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(ids, np.int64)


def test_frame_types_and_shapes():
    frame = render(0, "realistic", "rain")
    h, w = SIZE
    assert frame.image.shape == (h, w, 3) and frame.image.dtype == np.uint8
    for array, dtype in ((frame.label_ids, np.uint8), (frame.train_ids, np.uint8), (frame.instance_ids, np.int32)):
        assert array.shape == (h, w) and array.dtype == dtype
    assert frame.boxes.dtype == np.float32 and frame.boxes.shape[1] == 4
    assert frame.box_train_ids.dtype == np.int64 and len(frame.box_train_ids) == len(frame.boxes)


def test_same_seed_gives_identical_frames_and_another_seed_does_not():
    a, b, c = render(7, "realistic", "night"), render(7, "realistic", "night"), render(8, "realistic", "night")
    for field in ("image", "label_ids", "train_ids", "instance_ids", "boxes", "box_train_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.label_ids, c.label_ids)
    assert not np.array_equal(a.image, c.image)


def test_scene_and_labels_do_not_depend_on_style_or_condition():
    frames = [render(3, style, condition) for style, condition in ALL_LOOKS]
    for frame in frames[1:]:
        np.testing.assert_array_equal(frame.label_ids, frames[0].label_ids)
        np.testing.assert_array_equal(frame.instance_ids, frames[0].instance_ids)
        np.testing.assert_array_equal(frame.boxes, frames[0].boxes)
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            diff = np.abs(frames[i].image.astype(int) - frames[j].image.astype(int)).mean()
            assert diff > 5, f"{ALL_LOOKS[i]} and {ALL_LOOKS[j]} look alike (mean abs diff {diff:.1f})"


@pytest.mark.parametrize("seed", [0, 11, 12])
def test_train_ids_and_instance_ids_follow_the_label_ids(seed):
    frame = render(seed)
    np.testing.assert_array_equal(frame.train_ids, LUT[frame.label_ids])
    instances = frame.instance_ids >= 1000
    np.testing.assert_array_equal(frame.instance_ids[instances] // 1000, frame.label_ids[instances])
    np.testing.assert_array_equal(frame.instance_ids[~instances], frame.label_ids[~instances])
    assert np.isin(frame.label_ids[instances], THING_LABEL_IDS).all(), "only things have instance ids"


@pytest.mark.parametrize("seed", [0, 5, 12])
def test_boxes_are_tight_around_the_visible_instance_pixels(seed):
    frame = render(seed, size=(128, 256))
    order = np.lexsort(frame.boxes.T[::-1])
    boxes, ids = expected_boxes(frame.instance_ids)
    expected_order = np.lexsort(boxes.T[::-1])
    assert len(frame.boxes) > 0
    np.testing.assert_array_equal(frame.boxes[order], boxes[expected_order])
    np.testing.assert_array_equal(frame.box_train_ids[order], ids[expected_order])
    assert set(frame.box_train_ids.tolist()) <= set(range(11, 19))
    assert (frame.boxes[:, 2:] - frame.boxes[:, :2]).min() >= synth.MIN_BOX_SIDE


def test_small_instances_get_no_box_and_keep_their_labels():
    car, person = 26, 24  # Cityscapes labelIds
    instance_ids = np.full((40, 60), 7, np.int32)  # road
    instance_ids[2:12, 3:13] = car * 1000  # 10x10: boxed
    instance_ids[20:40, 30:30 + synth.MIN_BOX_SIDE - 1] = person * 1000 + 1  # too narrow: no box
    instance_ids[20:40, 50:50 + synth.MIN_BOX_SIDE] = person * 1000 + 2  # just wide enough
    kept, boxes, train_ids = boxed_instances(instance_ids)
    np.testing.assert_array_equal(boxes, [[50, 20, 58, 40], [3, 2, 13, 12]])  # by instance id
    np.testing.assert_array_equal(train_ids, [LUT[person], LUT[car]])
    assert (kept[20:40, 30:37] == person).all()  # a crowd-like region: the bare labelId, as Cityscapes writes it
    np.testing.assert_array_equal(kept[instance_ids != person * 1000 + 1],
                                  instance_ids[instance_ids != person * 1000 + 1])


def test_the_dataset_reader_sees_exactly_the_rendered_boxes(tmp_path):
    """The convention lives in the written instanceIds, so training data, offline evaluation and replay bags (all
    read through the dataset reader) get the same boxes as the renderer."""
    from vltseg_train.datasets import build_dataset

    synth.write_split(str(tmp_path), "val", 3, 0, 256, 512, "realistic", "clear")
    dataset = build_dataset("cityscapes", str(tmp_path), "val")
    for i in range(3):
        frame, sample = render(i, "realistic", size=(256, 512)), dataset[i]
        order, expected = np.lexsort(sample["boxes"].T[::-1]), np.lexsort(frame.boxes.T[::-1])
        np.testing.assert_array_equal(sample["boxes"][order], frame.boxes[expected])
        np.testing.assert_array_equal(sample["box_labels"][order], frame.box_train_ids[expected])


def test_twenty_frames_cover_most_classes():
    seen = set()
    for seed in range(20):
        seen |= set(np.unique(render(seed).train_ids).tolist())
    assert len(seen - {255}) >= 14, sorted(seen)


def test_synthetic_colours_stay_off_the_label_palette():
    palette = np.asarray(CITYSCAPES_PALETTE, np.int16)
    for seed in range(3):
        frame = render(seed)
        valid = frame.train_ids != 255
        distance = np.abs(frame.image.astype(np.int16) - palette[np.where(valid, frame.train_ids, 0)]).max(-1)
        assert (distance[valid] <= 8).mean() < 0.01


def test_realistic_and_night_frames_are_a_different_domain():
    """Same scenes: the realistic style adds texture inside surfaces, night darkens the whole frame."""
    seeds = range(3)
    source = [render(s, size=(128, 256)) for s in seeds]
    clear = [render(s, "realistic", "clear", (128, 256)) for s in seeds]
    night = [render(s, "realistic", "night", (128, 256)) for s in seeds]

    def luminance(frames):
        return float(np.mean([f.image.astype(float) @ [0.299, 0.587, 0.114] for f in frames]))

    assert luminance(night) < 0.5 * luminance(source)

    def road_texture(frames):
        """Mean over frames of the median absolute deviation of road pixels (0 for flat shading, markings aside)."""
        values = [f.image[f.label_ids == 7].astype(float).mean(-1) for f in frames]
        return float(np.mean([np.median(np.abs(v - np.median(v))) for v in values]))

    assert road_texture(source) < 0.5
    assert road_texture(clear) > 3.0


def test_write_split_writes_the_cityscapes_layout(tmp_path):
    root = str(tmp_path)
    assert synth.write_split(root, "val", 3, 40, *SIZE, "realistic", "fog") == 3
    city = "realistic_fog"
    for top, suffixes in (("leftImg8bit", ["leftImg8bit"]),
                          ("gtFine", ["gtFine_labelIds", "gtFine_labelTrainIds", "gtFine_instanceIds"])):
        names = sorted(os.listdir(os.path.join(root, top, "val", city)))
        assert names == sorted(f"{city}_{i:06d}_000019_{s}.png" for i in range(3) for s in suffixes)
    for i in range(3):
        frame = render(40 + i, "realistic", "fog")
        stem = os.path.join(root, "gtFine", "val", city, f"{city}_{i:06d}_000019_gtFine_")
        image = cv2.imread(os.path.join(root, "leftImg8bit", "val", city, f"{city}_{i:06d}_000019_leftImg8bit.png"),
                           cv2.IMREAD_UNCHANGED)
        label_ids = cv2.imread(stem + "labelIds.png", cv2.IMREAD_UNCHANGED)
        train_ids = cv2.imread(stem + "labelTrainIds.png", cv2.IMREAD_UNCHANGED)
        instance_ids = cv2.imread(stem + "instanceIds.png", cv2.IMREAD_UNCHANGED)
        assert image.dtype == label_ids.dtype == train_ids.dtype == np.uint8
        assert instance_ids.dtype == np.uint16
        np.testing.assert_array_equal(image[..., ::-1], frame.image)
        np.testing.assert_array_equal(label_ids, frame.label_ids)
        np.testing.assert_array_equal(train_ids, frame.train_ids)
        np.testing.assert_array_equal(instance_ids, frame.instance_ids)


def test_write_split_with_workers_matches_serial(tmp_path):
    args = (10, 9, *SIZE, "realistic", "snow")
    assert synth.write_split(str(tmp_path / "serial"), "train", *args, city="c") == 10
    assert synth.write_split(str(tmp_path / "parallel"), "train", *args, city="c", workers=2) == 10
    for i in (0, 9):
        for path in (f"leftImg8bit/train/c/c_{i:06d}_000019_leftImg8bit.png",
                     f"gtFine/train/c/c_{i:06d}_000019_gtFine_instanceIds.png"):
            serial = cv2.imread(str(tmp_path / "serial" / path), cv2.IMREAD_UNCHANGED)
            parallel = cv2.imread(str(tmp_path / "parallel" / path), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(serial, parallel)


def test_write_benchmark_writes_source_and_targets_with_disjoint_seeds(tmp_path):
    roots = synth.write_benchmark(str(tmp_path), train=2, val=1, height=SIZE[0], width=SIZE[1], seed=5)
    assert sorted(roots) == sorted(["source"] + [f"target_{c}" for c in synth.CONDITIONS])
    meta = json.loads((tmp_path / "benchmark.json").read_text())
    assert meta["size"] == list(SIZE) and meta["layout"] == "cityscapes"
    source = meta["domains"]["source"]
    assert (source["style"], source["condition"]) == ("synthetic", "clear")
    assert source["splits"] == {"train": {"count": 2, "first_seed": 5}, "val": {"count": 1, "first_seed": 7}}
    for condition in synth.CONDITIONS:
        target = meta["domains"][f"target_{condition}"]
        assert (target["style"], target["condition"]) == ("realistic", condition)
        assert target["splits"] == {"val": {"count": 1, "first_seed": 8}}
        assert os.listdir(os.path.join(roots[f"target_{condition}"], "leftImg8bit", "val", target["city"])) == [
            f"{target['city']}_000000_000019_leftImg8bit.png"]
    assert len(os.listdir(os.path.join(roots["source"], "gtFine", "train", "synthetic_clear"))) == 2 * 3


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_one_split(tmp_path, capsys):
    args = parse(["--out", str(tmp_path), "--style", "realistic", "--condition", "snow", "--split", "val",
                  "--count", "2", "--size", "64x128", "--seed", "3"])
    assert run(args) == 0
    assert "val: 2 frames realistic/snow 64x128" in capsys.readouterr().out
    image = cv2.imread(str(tmp_path / "leftImg8bit/val/realistic_snow/realistic_snow_000001_000019_leftImg8bit.png"))
    assert image.shape == (64, 128, 3)


def test_cli_writes_the_benchmark(tmp_path, capsys):
    assert run(parse(["--out", str(tmp_path), "--train", "1", "--val", "1", "--size", "64x128"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:6]] == ["source"] + [f"target_{c}" for c in synth.CONDITIONS]
    assert (tmp_path / "benchmark.json").is_file()


@pytest.mark.parametrize("kwargs", [dict(style="cartoon"), dict(condition="hail"), dict(height=8), dict(seed=-1)])
def test_render_frame_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        synth.render_frame(**{"seed": 0, **kwargs})


def test_vltseg_synth_is_the_renderer_cli():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="vltseg.commands") if e.name == "synth"]
    assert entry.value == "vltseg_ros.synth.cli" and entry.load().run is run


def test_training_crops_apply_the_small_box_rule_to_the_boxes_they_cut():
    """A box the training crop cuts to under MIN_BOX_SIDE gets none, as one the frame edge cuts gets none."""
    from vltseg_train.transforms import TrainTransform

    image = np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (32, 1, 3))  # pixel value = column
    sample = {"image": image, "label": np.zeros((32, 64), np.uint8), "boxes": np.array([[2, 4, 12, 28]], np.float32),
              "box_labels": np.array([13]), "name": "x"}
    transform = TrainTransform((32, 32), cat_max_ratio=1.0, flip_prob=0.0, photometric=False)
    cut = []
    for seed in range(40):
        out = transform(sample, np.random.default_rng(seed))
        visible = 12 - max(2, int(out["image"][0, 0, 0]))  # columns of the box left of the crop's right edge
        assert len(out["boxes"]) == int(visible >= synth.MIN_BOX_SIDE), visible
        cut.append(0 < visible < synth.MIN_BOX_SIDE)
    assert any(cut)  # some crop cut the box to a sliver


def test_write_benchmark_renders_only_the_named_splits(tmp_path):
    """The demo renders the source training split first and every val split while it trains."""
    def frames():
        return sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*_leftImg8bit.png"))

    args = dict(train=2, val=1, height=SIZE[0], width=SIZE[1], seed=5)
    synth.write_benchmark(str(tmp_path), **args, splits=("train",))
    assert frames() == [f"source/leftImg8bit/train/synthetic_clear/synthetic_clear_00000{i}_000019_leftImg8bit.png"
                        for i in range(2)]
    whole = json.loads((tmp_path / "benchmark.json").read_text())
    assert whole["domains"]["target_fog"]["splits"] == {"val": {"count": 1, "first_seed": 8}}
    synth.write_benchmark(str(tmp_path), **args, splits=("val",))
    assert len(frames()) == 2 + 1 + len(synth.CONDITIONS)
    assert json.loads((tmp_path / "benchmark.json").read_text()) == whole
