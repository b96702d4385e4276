"""rosbag2 IO (vltseg_ros.bag) and ``vltseg bag``: round trips in both storages and metadata versions, the vision_msgs
type hash, wire compatibility with rclpy, offline evaluation against the predictor, and damaged, empty and
ground-truth-free bags."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from vltseg_train import bag_cli
from vltseg_train.datasets import build_dataset
from vltseg_ros.synth import render_frame, write_split
from vltseg_ros import cli
from vltseg_ros.bag import (
    DISTRO_VERSIONS,
    BagError,
    BagWriter,
    FrameRecord,
    bag_info,
    make_typestore,
    read_frames,
    topics_for,
)
from vltseg_ros.predictor import Predictor
from vltseg_ros.report import Scorer

H, W = 64, 128
STAMP0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z, bag make's default start
PERIOD = 100_000_000


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Two OpenMP threads on a busy 2-core runner can be 100x slower than one; the tiny model needs one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bag_command(*argv) -> int:
    """Run ``vltseg bag ARGV`` in-process (the entry point is registered in setup.py)."""
    parser = argparse.ArgumentParser()
    bag_cli.add_arguments(parser)
    return bag_cli.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def synth_records() -> list[FrameRecord]:
    """Four rendered frames with label maps and boxes, 100 ms apart."""
    records = []
    for seed in range(4):
        frame = render_frame(seed, H, W)
        records.append(FrameRecord(STAMP0 + seed * PERIOD, "camera_optical_frame", frame.image, frame.train_ids,
                                   frame.boxes, frame.box_train_ids))
    return records


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A random-init tiny checkpoint with both heads, whole-image inference at 64x128."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    assert cli.main(["checkpoint", "new", "--model", "eva02_tiny", "--heads", "seg,det", "--mode", "whole",
                     "--size", f"{H}x{W}", "--out", str(path)]) == 0
    return str(path)


def write_bag(path: Path, records: list[FrameRecord], **kwargs) -> str:
    """Write ``records`` with BagWriter; returns the bag path."""
    with BagWriter(str(path), **kwargs) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def storage_file(bag: str) -> Path:
    """The bag's single .mcap or .db3 file."""
    (path,) = [p for p in Path(bag).iterdir() if p.suffix in (".mcap", ".db3")]
    return path


def noise_records(count: int, height: int = 256, width: int = 512) -> list[FrameRecord]:
    """Incompressible frames big enough that a bag of ``count`` spans several mcap chunks."""
    rng = np.random.default_rng(0)
    return [FrameRecord(STAMP0 + i * PERIOD, "cam", rng.integers(0, 256, (height, width, 3), np.uint8),
                        rng.integers(0, 19, (height, width), np.uint8), np.array([[4, 8, 40, 30]], np.float32),
                        np.array([13])) for i in range(count)]


# ----------------------------------------------------------------------------------------------------------------
# vltseg_ros.bag


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "jpeg"])
@pytest.mark.parametrize("distro", ["humble", "kilted"])
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip(tmp_path, synth_records, storage, distro, compressed):
    bag = write_bag(tmp_path / "bag", synth_records, storage=storage, distro=distro, compressed=compressed)
    meta = yaml.safe_load((Path(bag) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == DISTRO_VERSIONS[distro] == (8 if distro == "humble" else 9)
    assert meta["storage_identifier"] == storage
    for topic in meta["topics_with_message_count"]:
        qos = topic["topic_metadata"]["offered_qos_profiles"]
        assert isinstance(qos, list if meta["version"] == 9 else str)  # v9 reads a sequence (docs/design.md#ros-2-stack)

    frames = list(read_frames(bag))
    assert len(frames) == len(synth_records)
    for got, want in zip(frames, synth_records):
        assert (got.stamp_ns, got.frame_id) == (want.stamp_ns, want.frame_id)
        assert got.image.shape == want.image.shape and got.image.dtype == np.uint8
        if compressed:
            assert np.abs(got.image.astype(int) - want.image).mean() < 10
        else:
            np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.label, want.label)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.box_class_ids, want.box_class_ids)
        assert got.image.flags.writeable and got.label.flags.writeable

    info = bag_info(bag)
    topics = topics_for("/camera", compressed)
    assert (info["storage"], info["version"]) == (storage, meta["version"])
    assert (info["start_ns"], info["end_ns"]) == (STAMP0, STAMP0 + 3 * PERIOD)
    assert info["duration_s"] == pytest.approx(0.3)
    assert info["topics"][topics.image] == {
        "type": "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image", "count": 4}
    assert info["topics"][topics.gt_detections] == {"type": "vision_msgs/msg/Detection2DArray", "count": 4}
    assert info["topics"][topics.camera_info]["count"] == 4
    assert info["cameras"] == {"/camera": {"image": topics.image, "compressed": compressed, "frames": 4,
                                           "ground_truth": [topics.gt_label, topics.gt_detections]}}


def test_ground_truth_is_optional_per_frame(tmp_path, synth_records):
    mixed = [FrameRecord(r.stamp_ns, r.frame_id, r.image, r.label if i % 2 else None,
                         r.boxes if i % 2 == 0 else None, r.box_class_ids if i % 2 == 0 else None)
             for i, r in enumerate(synth_records)]
    frames = list(read_frames(write_bag(tmp_path / "bag", mixed)))
    assert [f.stamp_ns for f in frames] == [r.stamp_ns for r in synth_records]
    for i, frame in enumerate(frames):
        assert (frame.label is None) == (i % 2 == 0)
        assert (frame.boxes is None) == (i % 2 == 1)


def test_ground_truth_recorded_after_later_frames_still_joins_by_stamp(tmp_path, synth_records):
    from rosbags.rosbag2 import Reader, Writer

    source = write_bag(tmp_path / "source", synth_records)
    delayed = tmp_path / "delayed"  # labels logged 1.5 frame periods late, i.e. after the next image
    with Reader(source) as reader, Writer(delayed, version=9) as writer:
        connections = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=make_typestore())
                       for c in reader.connections}
        for connection, timestamp, raw in reader.messages():
            late = connection.topic == topics_for().gt_label
            writer.write(connections[connection.topic], timestamp + (3 * PERIOD // 2 if late else 0), raw)
    frames = list(read_frames(str(delayed)))
    assert [f.stamp_ns for f in frames] == [r.stamp_ns for r in synth_records]
    for frame, record in zip(frames, synth_records):
        np.testing.assert_array_equal(frame.label, record.label)


def test_camera_selection_and_missing_bags(tmp_path, synth_records):
    bag = write_bag(tmp_path / "bag", synth_records[:1], namespace="front")
    assert list(bag_info(bag)["cameras"]) == ["/front"]
    assert len(list(read_frames(bag, namespace="/front/"))) == 1
    with pytest.raises(BagError, match=r"/rear/image.*cameras in the bag: /front"):
        next(read_frames(bag, namespace="/rear"))
    with pytest.raises(BagError, match="bag not found"):
        next(read_frames(str(tmp_path / "nope")))
    with pytest.raises(BagError, match="cannot create bag"):
        BagWriter(bag)  # rosbags never overwrites


def test_writer_rejects_bad_frames_before_writing_any_of_them(tmp_path, synth_records):
    good = synth_records[0]
    bad = [FrameRecord(good.stamp_ns, "cam", good.image, good.label[:, :-1]),
           FrameRecord(good.stamp_ns, "cam", good.image, boxes=good.boxes, box_class_ids=good.box_class_ids[:-1]),
           FrameRecord(good.stamp_ns, "cam", good.image[..., 0])]
    with BagWriter(str(tmp_path / "bag")) as writer:
        for frame in bad:
            with pytest.raises(ValueError):
                writer.write(frame)
        writer.write(good)
    assert writer.frames == 1
    assert {t: v["count"] for t, v in bag_info(str(tmp_path / "bag"))["topics"].items()} == dict.fromkeys(
        [topics_for().camera_info, topics_for().gt_detections, topics_for().gt_label, topics_for().image], 1)


def test_directory_without_metadata_reads_its_storage_file(tmp_path, synth_records):
    bag = write_bag(tmp_path / "bag", synth_records, storage="sqlite3")
    (Path(bag) / "metadata.yaml").unlink()  # what a killed recorder leaves
    assert [f.stamp_ns for f in read_frames(bag)] == [r.stamp_ns for r in synth_records]


def test_detection_type_hash_matches_the_built_vision_msgs():
    path = Path(sys.prefix) / "share" / "vision_msgs" / "msg" / "Detection2DArray.json"
    if not path.is_file():
        pytest.skip(f"no built vision_msgs at {path}")
    hashes = {h["type_name"]: h["hash_string"] for h in json.loads(path.read_text())["type_hashes"]}
    typestore = make_typestore("kilted")
    for name in ("vision_msgs/msg/Detection2DArray", "vision_msgs/msg/Detection2D",
                 "vision_msgs/msg/BoundingBox2D"):
        assert typestore.hash_rihs01(name) == hashes[name]


def test_rclpy_reads_the_messages_bag_writer_writes(tmp_path, synth_records):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    vision_msgs = pytest.importorskip("vision_msgs.msg")
    from rosbags.rosbag2 import Reader

    record = synth_records[0]
    bag = write_bag(tmp_path / "bag", [record])
    topics = topics_for()
    types = {topics.image: sensor_msgs.Image, topics.gt_label: sensor_msgs.Image,
             topics.camera_info: sensor_msgs.CameraInfo, topics.gt_detections: vision_msgs.Detection2DArray}
    with Reader(bag) as reader:
        msgs = {c.topic: serialization.deserialize_message(bytes(raw), types[c.topic])
                for c, _, raw in reader.messages()}
    image = msgs[topics.image]
    assert (image.encoding, image.height, image.width, image.step) == ("rgb8", H, W, 3 * W)
    assert image.header.frame_id == record.frame_id
    assert image.header.stamp.sec * 10**9 + image.header.stamp.nanosec == record.stamp_ns
    np.testing.assert_array_equal(np.frombuffer(image.data, np.uint8).reshape(H, W, 3), record.image)
    label = msgs[topics.gt_label]
    assert label.encoding == "mono8"
    np.testing.assert_array_equal(np.frombuffer(label.data, np.uint8).reshape(H, W), record.label)
    info = msgs[topics.camera_info]
    assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
    np.testing.assert_array_equal(info.k, [W, 0, W / 2, 0, W, H / 2, 0, 0, 1])
    detections = msgs[topics.gt_detections].detections
    assert len(detections) == len(record.boxes)
    for det, (x1, y1, x2, y2), class_id in zip(detections, record.boxes, record.box_class_ids):
        assert det.results[0].hypothesis.class_id == str(class_id) and det.results[0].hypothesis.score == 1.0
        assert (det.bbox.center.position.x, det.bbox.size_x) == ((x1 + x2) / 2, x2 - x1)
        assert (det.bbox.center.position.y, det.bbox.size_y) == ((y1 + y2) / 2, y2 - y1)


# ----------------------------------------------------------------------------------------------------------------
# damaged bags


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * 0.6))


def _corrupt_mcap_footer(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)


@pytest.mark.parametrize("storage,damage", [("mcap", _truncate), ("sqlite3", _truncate),
                                            ("mcap", _corrupt_mcap_footer)], ids=["mcap-cut", "db3-cut", "mcap-footer"])
def test_damaged_bag_yields_what_is_readable_then_bag_error(tmp_path, storage, damage):
    records = noise_records(10)
    bag = write_bag(tmp_path / "bag", records, storage=storage)
    damage(storage_file(bag))
    frames = []
    with pytest.raises(BagError, match=r"damaged or truncated bag after (\d+) frames") as error:
        for frame in read_frames(bag):
            frames.append(frame)
    assert f"after {len(frames)} frames" in str(error.value)
    assert 0 < len(frames) <= 10 and (len(frames) == 10) == (damage is _corrupt_mcap_footer)
    for got, want in zip(frames, records):
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.label, want.label)


def test_eval_of_a_truncated_bag_reports_the_frames_read(tmp_path, checkpoint, capsys):
    bag = write_bag(tmp_path / "bag", noise_records(10), storage="mcap")
    _truncate(storage_file(bag))
    out = tmp_path / "report"
    assert bag_command("eval", "--bag", bag, "--checkpoint", checkpoint, "--out", out) == 1
    assert "truncated" in capsys.readouterr().err
    report = json.loads((out / "results.json").read_text())
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert 0 < len(lines) < 10 and report["results"]["bag"]["images"] == len(lines)
    assert report["complete"] is False and "truncated" in report["error"]
    assert "segmentation" in report["results"]["bag"] and (out / "results.md").is_file()


def test_eval_of_an_empty_bag_fails_clearly(tmp_path, checkpoint, capsys):
    from rosbags.rosbag2 import Writer

    empty = write_bag(tmp_path / "empty", [])
    assert bag_command("eval", "--bag", empty, "--checkpoint", checkpoint, "--out", tmp_path / "r1") == 1
    assert "no camera" in capsys.readouterr().err
    silent = tmp_path / "silent"  # the camera topic exists but nothing was recorded on it
    with Writer(silent, version=9) as writer:
        writer.add_connection("/camera/image", "sensor_msgs/msg/Image", typestore=make_typestore())
    assert bag_command("eval", "--bag", silent, "--checkpoint", checkpoint, "--out", tmp_path / "r2") == 1
    assert "no frames on the camera topic" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "results.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# vltseg bag make / eval / info


def test_eval_on_a_dataset_bag_equals_the_predictor_on_the_dataset(tmp_path, checkpoint, capsys):
    root = tmp_path / "cityscapes"
    write_split(str(root), "val", 4, seed=0, height=H, width=W, style="synthetic")
    bag, out = tmp_path / "bag", tmp_path / "report"
    assert bag_command("make", "--out", bag, "--dataset", f"cityscapes:{root}:val", "--limit", 3) == 0
    assert "3 frames, ground truth: /camera/gt/label_mask, /camera/gt/detections" in capsys.readouterr().out
    assert bag_command("eval", "--bag", bag, "--checkpoint", checkpoint, "--out", out, "--overlays", 2,
                       "--mp4") == 0

    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.05)
    det_classes = {predictor.class_names.index(n): n for n in predictor.meta.model.det_head.classes}
    scorer = Scorer(predictor.meta.model.classes, det_classes)
    dataset = build_dataset("cityscapes", root, "val")
    for i in range(3):
        sample = dataset[i]
        result = predictor.predict([sample["image"]], image_format="RGB")[0]
        scorer.add(result.label_map, sample["label"], result.boxes, result.box_scores, result.box_class_ids,
                   sample["boxes"], sample["box_labels"], H, W)
    direct = scorer.result()
    report = json.loads((out / "results.json").read_text())
    replay = report["results"]["bag"]
    assert replay["images"] == 3 and report["complete"] is True
    assert replay["segmentation"]["mIoU"] == pytest.approx(direct["segmentation"]["mIoU"], abs=1e-9)
    assert replay["segmentation"]["confusion"] == direct["segmentation"]["confusion"]
    for key in ("AP", "AP50"):
        assert replay["detection"][key] == pytest.approx(direct["detection"][key], abs=1e-9)
    assert replay["frames_per_s"] > 0 and replay["latency_ms"]["p50"] > 0

    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [line["stamp_ns"] for line in lines] == [STAMP0 + i * PERIOD for i in range(3)]
    assert all(line["gt_boxes"] == len(dataset[i]["boxes"]) and 0 <= line["mIoU"] <= 1
               and 0 <= line["pixel_accuracy"] <= 1 for i, line in enumerate(lines))
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert (out / "overlays.mp4").stat().st_size > 0 and (out / "per_class_iou.png").is_file()


def test_make_from_images_and_latency_only_eval(tmp_path, checkpoint, synth_records, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, record in enumerate(synth_records[:3]):
        cv2.imwrite(str(images / f"{i:03d}.png"), cv2.cvtColor(record.image, cv2.COLOR_RGB2BGR))
    (images / "notes.txt").write_text("not an image")
    bag = tmp_path / "bag"
    assert bag_command("make", "--out", bag, "--images", images, "--namespace", "/front", "--fps", 20) == 0
    frames = list(read_frames(str(bag)))
    assert [f.stamp_ns for f in frames] == [STAMP0 + i * 50_000_000 for i in range(3)]
    assert all(f.frame_id == "front_optical_frame" and f.label is None and f.boxes is None for f in frames)
    for frame, record in zip(frames, synth_records):
        np.testing.assert_array_equal(frame.image, record.image)

    out = tmp_path / "report"
    assert bag_command("eval", "--bag", bag, "--checkpoint", checkpoint, "--out", out) == 0
    assert "no ground truth: latency only" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())["results"]["bag"]
    assert result["images"] == 3 and "segmentation" not in result and "detection" not in result
    assert result["latency_ms"]["max"] > 0 and result["frames_per_s"] > 0
    assert all(json.loads(line)["gt_boxes"] is None for line in (out / "frames.jsonl").read_text().splitlines())


def test_make_from_video(tmp_path, synth_records, capsys):
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (W, H))
    assert writer.isOpened()
    for record in synth_records + synth_records[:2]:
        writer.write(cv2.cvtColor(record.image, cv2.COLOR_RGB2BGR))
    writer.release()
    bag = tmp_path / "bag"
    assert bag_command("make", "--out", bag, "--video", video, "--every", 2, "--compressed", "--storage", "sqlite3",
                       "--distro", "humble", "--start", "2026-01-01T01:00:00+01:00") == 0
    frames = list(read_frames(str(bag)))
    # 6 frames at 5 fps, every 2nd: 3 frames 0.4 s apart; the start is the default instant in another zone
    assert [f.stamp_ns for f in frames] == [STAMP0 + i * 400_000_000 for i in range(3)]
    for frame, record in zip(frames, synth_records[::2]):
        assert np.abs(frame.image.astype(int) - record.image).mean() < 20  # mp4v and JPEG, both lossy
    capsys.readouterr()
    assert bag_command("info", bag, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["storage"], info["version"]) == ("sqlite3", 8)
    assert info["cameras"]["/camera"]["compressed"] is True and info["cameras"]["/camera"]["ground_truth"] == []


def test_make_rejects_bad_sources(tmp_path, capsys):
    assert bag_command("make", "--out", tmp_path / "a", "--images", tmp_path) == 1
    assert "no images" in capsys.readouterr().err
    assert bag_command("make", "--out", tmp_path / "b", "--video", tmp_path / "missing.mp4") == 1
    assert "cannot open video" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        bag_command("make", "--out", tmp_path / "c", "--dataset", "nonsense:/x")
