"""Bag replay over real Fast DDS: the player's topics, timing and /clock, damaged bags, and the online evaluator
scoring the node's outputs exactly as offline evaluation of the same bag does."""
from __future__ import annotations

import glob
import json
import os
import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import Detection2DArray

from ros_harness import RosHarness, write_tiny_checkpoint
from vltseg_ros.bag import BagError, BagWriter, FrameRecord, read_frames, topics_for
from vltseg_ros.labels import CITYSCAPES_THING_CLASSES
from vltseg_ros.node.evaluator import EvaluatorNode
from vltseg_ros.node.player import BagPlayer, main as player_main
from vltseg_ros.report import Scorer

TOPICS = topics_for("/camera")
FRAMES, HEIGHT, WIDTH = 6, 48, 64
STAMP0 = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 fps
SCORE_THRESHOLD = 0.05


def _frames(with_gt: bool = True, height: int = HEIGHT, width: int = WIDTH) -> list[FrameRecord]:
    """Smooth random images; blocky trainId labels with an ignore band; 0-3 thing boxes (frame 4 has none)."""
    import cv2

    rng = np.random.default_rng(1)
    frames = []
    for i in range(FRAMES):
        image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height))
        label = boxes = class_ids = None
        if with_gt:
            label = cv2.resize(rng.integers(0, 19, (4, 4), dtype=np.uint8), (width, height),
                               interpolation=cv2.INTER_NEAREST)
            label[:2] = 255
            if i != 4:  # a frame without GT boxes: the evaluator must still match it
                count = int(rng.integers(0, 4))
                xy = rng.uniform(0, [width / 2, height / 2], (count, 2))
                size = rng.uniform(8, [width / 2, height / 2], (count, 2))
                boxes = np.hstack([xy, xy + size]).astype(np.float32)
                class_ids = rng.integers(11, 19, count)
        frames.append(FrameRecord(STAMP0 + i * PERIOD_NS, "camera_optical", image, label, boxes, class_ids))
    return frames


def _write(path: str, frames: list[FrameRecord], storage: str = "mcap") -> str:
    with BagWriter(path, storage=storage) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """Tiny seg+det checkpoint running whole 48x64 images."""
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"), HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def bag(tmp_path_factory, checkpoint) -> str:
    """6 frames at 10 fps, 48x64, with GT label masks and boxes. The GT is the tiny model's own prediction, half
    of it overwritten and its boxes jittered, so mIoU and AP are neither 0 nor 1 and their equality means something."""
    from vltseg_ros.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=SCORE_THRESHOLD)
    rng = np.random.default_rng(2)
    frames = _frames()
    for frame in frames:
        result = predictor.predict([frame.image], image_format="RGB")[0]
        frame.label[:, : WIDTH // 2] = result.label_map[:, : WIDTH // 2]
        if frame.boxes is not None:
            top = np.argsort(-result.box_scores)[:3]
            jittered = result.boxes[top] + rng.normal(0, 2, (len(top), 4)).astype(np.float32)
            frame.boxes = np.concatenate([jittered, frame.boxes])
            frame.box_class_ids = np.concatenate([result.box_class_ids[top], frame.box_class_ids])
    return _write(str(tmp_path_factory.mktemp("bag") / "gt"), frames)


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _clock_ns(msg: Clock) -> int:
    return msg.clock.sec * 1_000_000_000 + msg.clock.nanosec


# ------------------------------------------------------------------------------------------------------- player
def test_player_publishes_every_topic_in_order_with_recorded_stamps_and_clock(ros, bag):
    types = {TOPICS.image: Image, TOPICS.camera_info: CameraInfo, TOPICS.gt_label: Image,
             TOPICS.gt_detections: Detection2DArray}
    with BagPlayer(bag, ros.context, rate=2.0, wait_for_subscribers=1, wait_topics=list(types)) as player:
        assert player.wait_topics == list(types)
        published: list[float] = []  # publish times of the images (a spy; the publisher stays real)
        publish = player.publishers[TOPICS.image].publish
        player.publishers[TOPICS.image].publish = lambda msg: (published.append(time.monotonic()), publish(msg))
        thread = threading.Thread(target=player.play)
        thread.start()
        time.sleep(0.5)
        assert player.stats.messages == 0  # no subscriber yet: waiting, not publishing into the void
        clocks = ros.record(Clock, "/clock")
        received = {topic: ros.record(msg_type, topic) for topic, msg_type in types.items()}
        thread.join(timeout=20)
        assert not thread.is_alive()
        stats = player.stats
    stamps = [STAMP0 + i * PERIOD_NS for i in range(FRAMES)]
    expected = {topic: stamps for topic in types}
    expected[TOPICS.gt_detections] = [s for i, s in enumerate(stamps) if i != 4]  # frame 4 has no GT boxes
    assert ros.wait_for(lambda: all(len(received[t]) == len(expected[t]) for t in types), timeout=5)
    for topic, messages in received.items():
        assert [_stamp(m) for m in messages] == expected[topic], topic
    assert stats.published == {topic: len(expected[topic]) for topic in types}
    assert published[-1] - published[0] >= 0.2  # 0.5 s of bag at rate 2.0 lasts 0.25 s: never faster
    frames = {frame.stamp_ns: frame for frame in read_frames(bag)}
    for msg in received[TOPICS.gt_label]:
        label = np.frombuffer(msg.data, np.uint8).reshape(HEIGHT, WIDTH)
        assert np.array_equal(label, frames[_stamp(msg)].label)
    assert ros.wait_for(lambda: clocks and _clock_ns(clocks[-1]) == stamps[-1])
    times = [_clock_ns(c) for c in clocks]
    assert times == sorted(times) and times[0] >= stamps[0]
    between = [t for t in times if t not in stamps]
    assert between, "/clock should advance between messages (100 Hz), not only at them"


def test_wait_for_subscribers_times_out_and_defaults_to_the_camera_topic(ros, bag):
    with BagPlayer(bag, ros.context, wait_for_subscribers=1, wait_timeout_s=0.3) as player:
        assert player.wait_topics == [TOPICS.image]  # the GT label mask is an Image too, but not a camera
        with pytest.raises(TimeoutError, match="/camera/image"):
            player.play()
        assert player.stats.messages == 0
    with pytest.raises(ValueError, match="/nope"):
        BagPlayer(bag, ros.context, wait_for_subscribers=1, wait_topics=["/nope"])


def test_topic_filter_offset_pause_and_loop(ros, bag):
    images = ros.record(Image, TOPICS.image)
    labels = ros.record(Image, TOPICS.gt_label)
    with BagPlayer(bag, ros.context, topics=[TOPICS.image], rate=5.0, start_offset_s=0.25, loop=True,
                   start_paused=True, publish_clock=False) as player:
        ros.wait_matched(player.publishers[TOPICS.image])
        assert list(player.publishers) == [TOPICS.image]
        thread = threading.Thread(target=player.play)
        thread.start()
        time.sleep(0.3)
        assert player.paused and player.stats.messages == 0
        player.resume()
        assert ros.wait_for(lambda: len(images) >= 6)  # 3 frames after the offset, twice
        player.stop()
        thread.join(timeout=10)
    tail = [STAMP0 + i * PERIOD_NS for i in (3, 4, 5)]
    assert [_stamp(m) for m in images[:6]] == tail + tail
    assert player.stats.loops >= 1 and not labels


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_plays_the_readable_part_then_fails(ros, tmp_path, storage, capsys):
    # Frames large enough for several mcap chunks (1 MiB each), so a cut leaves whole chunks before it.
    path = _write(str(tmp_path / "cut"), _frames(with_gt=False, height=360, width=640), storage)
    (data,) = [f for f in glob.glob(os.path.join(path, "*")) if not f.endswith(".yaml")]
    with open(data, "r+b") as f:
        f.truncate(int(os.path.getsize(data) * 0.6))
    images = ros.record(Image, TOPICS.image)
    with BagPlayer(path, ros.context, rate=20.0, wait_for_subscribers=1) as player:
        with pytest.raises(BagError, match="truncated|malformed") as error:
            player.play()
        published = player.stats.published[TOPICS.image]
    assert 0 < published < FRAMES
    assert f"after {player.stats.messages} published messages" in str(error.value)
    assert ros.wait_for(lambda: len(images) == published)
    assert [_stamp(m) for m in images] == [STAMP0 + i * PERIOD_NS for i in range(published)]
    assert player_main([path, "--rate", "50", "--no-clock"]) == 1
    assert "vltseg bag play: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- evaluator
def _start_node(ros: RosHarness, checkpoint: str):
    from rclpy.lifecycle import TransitionCallbackReturn

    from vltseg_ros.node.node import VLTSegNode

    node = VLTSegNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=checkpoint), Parameter("device", value="cpu"),
        Parameter("score_threshold", value=SCORE_THRESHOLD),
        # score every frame: a queue instead of keep-latest, and a reliable input (what a replay evaluation uses)
        Parameter("frame_queue", value=20), Parameter("input_qos.reliability", value="reliable"),
        Parameter("input_qos.depth", value=20)], cli_args=["--ros-args", "-r", "image:=/camera/image"])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    ros.add_node(node)
    return node


def _start_evaluator(ros: RosHarness, **params) -> EvaluatorNode:
    overrides = [Parameter("score_threshold", value=SCORE_THRESHOLD), Parameter("use_sim_time", value=True)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    evaluator = EvaluatorNode(context=ros.context, parameter_overrides=overrides)
    ros.add_node(evaluator)
    return evaluator


def _replay(ros: RosHarness, bag: str, node, evaluator: EvaluatorNode) -> None:
    """Play the bag at 1 frame/s, slow enough that the node infers every frame even on a loaded machine."""
    with BagPlayer(bag, ros.context, rate=0.1, wait_for_subscribers=2) as player:  # the node and the evaluator
        for topic in (TOPICS.gt_label, TOPICS.gt_detections):
            if topic in player.publishers:
                ros.wait_matched(player.publishers[topic])
        assert ros.wait_for(lambda: evaluator.class_names is not None)  # latched LabelInfo
        player.play()
    assert evaluator.done.wait(timeout=20), evaluator.summary()
    assert node.counters.snapshot().get("dropped", 0) == 0


def _offline(checkpoint: str, bag: str) -> dict:
    """The same checkpoint, threshold and bag through Predictor + Scorer, without ROS."""
    from vltseg_ros.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=SCORE_THRESHOLD)
    det_classes = {i: n for i, n in enumerate(predictor.class_names) if n in CITYSCAPES_THING_CLASSES}
    scorer = Scorer(predictor.class_names, det_classes)
    for frame in read_frames(bag):
        result = predictor.predict([frame.image], image_format="RGB")[0]
        height, width = frame.image.shape[:2]
        scorer.add(result.label_map, frame.label, result.boxes, result.box_scores, result.box_class_ids,
                   frame.boxes, frame.box_class_ids, height, width)
    return scorer.result()


def test_online_scores_equal_offline_scores(ros, bag, checkpoint, tmp_path):
    out = tmp_path / "report"
    evaluator = _start_evaluator(ros, output_dir=str(out), expected_frames=FRAMES, domain_name="replay")
    node = _start_node(ros, checkpoint)
    try:
        _replay(ros, bag, node, evaluator)
        online = evaluator.summary()
        clock_ns = evaluator.get_clock().now().nanoseconds
    finally:
        node.trigger_shutdown()
        node.destroy_node()
        evaluator.destroy_node()
    assert (online["matched"], online["unmatched_gt"], online["unmatched_predictions"]) == (FRAMES, 0, 0)
    assert online["input_frames"] == FRAMES and online["images"] == FRAMES
    offline = _offline(checkpoint, bag)
    assert online["segmentation"]["confusion"] == offline["segmentation"]["confusion"]
    assert abs(online["segmentation"]["mIoU"] - offline["segmentation"]["mIoU"]) < 1e-9
    assert online["detection"]["num_gt"] == offline["detection"]["num_gt"] > 0
    assert online["detection"]["num_det"] == offline["detection"]["num_det"]
    for key in ("AP", "AP50", "AP75"):
        assert abs(online["detection"][key] - offline["detection"][key]) < 1e-9 or \
            np.isnan(online["detection"][key]) and np.isnan(offline["detection"][key])
    # Latency is in bag time, not the years between the test stamps and the wall clock: the evaluator's clock is
    # the player's /clock (use_sim_time), which reads a bag stamp, and the summary is the median of the per-frame
    # latencies (stamp to prediction on that clock, in ms) of frames.jsonl.
    assert STAMP0 <= clock_ns <= STAMP0 + (FRAMES - 1) * PERIOD_NS
    assert online["frames_per_s"] > 0
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["replay"]["matched"] == FRAMES
    assert "| replay | 6 |" in (out / "results.md").read_text()
    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert sorted(r["stamp_ns"] for r in lines) == [STAMP0 + i * PERIOD_NS for i in range(FRAMES)]
    assert {r["status"] for r in lines} == {"matched"}
    latencies = [r["latency_ms"] for r in lines]
    assert min(latencies) >= 0.0 and abs(online["latency_ms"]["p50"] - float(np.median(latencies))) < 1e-3
    assert (out / "per_class_iou.png").is_file()


def test_frames_without_ground_truth_give_a_latency_only_summary(ros, checkpoint, tmp_path):
    bag = _write(str(tmp_path / "no_gt"), _frames(with_gt=False))
    evaluator = _start_evaluator(ros, expected_frames=FRAMES)
    node = _start_node(ros, checkpoint)
    try:
        _replay(ros, bag, node, evaluator)
        summary = evaluator.summary()
    finally:
        node.trigger_shutdown()
        node.destroy_node()
        evaluator.destroy_node()
    assert (summary["images"], summary["latency_only"], summary["matched"]) == (FRAMES, FRAMES, 0)
    assert summary["unmatched_predictions"] == 0
    assert "segmentation" not in summary and "detection" not in summary
    assert summary["latency_ms"]["p50"] >= 0.0



def test_unusable_messages_are_counted_and_the_next_frame_scores(ros):
    """A label mask in the wrong encoding and a detection whose class_id is not a trainId are each counted and
    skipped; the evaluator keeps running and scores the next good frame (it used to raise TypeError inside its
    callback on the first)."""
    from vltseg_ros import codec
    from vltseg_ros.node.msg_types import RCLPY_TYPES

    evaluator = _start_evaluator(ros, use_sim_time=False)
    try:
        label_pub = ros.publisher(Image, "/vltseg/label_mask")
        gt_pub = ros.publisher(Image, TOPICS.gt_label)
        det_pub = ros.publisher(Detection2DArray, TOPICS.gt_detections)
        for pub in (label_pub, gt_pub, det_pub):
            ros.wait_matched(pub)
        label = np.zeros((4, 6), np.uint8)

        def header(stamp):
            return codec.header_msg(RCLPY_TYPES, stamp, "cam")

        gt_pub.publish(codec.image_msg(RCLPY_TYPES, np.zeros((4, 6, 3), np.uint8), "rgb8", header(STAMP0)))
        bad = codec.detections_msg(RCLPY_TYPES, header(STAMP0), np.array([[0, 0, 2, 2]]), [13])
        bad.detections[0].results[0].hypothesis.class_id = "car"
        det_pub.publish(bad)
        assert ros.wait_for(lambda: evaluator.summary()["bad_messages"] == 2)
        good = STAMP0 + PERIOD_NS
        gt_pub.publish(codec.image_msg(RCLPY_TYPES, label, "mono8", header(good)))
        det_pub.publish(codec.detections_msg(RCLPY_TYPES, header(good), np.zeros((0, 4)), []))
        label_pub.publish(codec.image_msg(RCLPY_TYPES, label, "mono8", header(good)))
        assert ros.wait_for(lambda: evaluator.summary()["matched"] == 1)
    finally:
        evaluator.destroy_node()


def test_ground_truth_without_predictions_is_counted_unmatched(ros, bag):
    """No perception node: every GT frame ends unmatched, and the evaluator finishes by its idle timeout."""
    evaluator = _start_evaluator(ros, expected_frames=FRAMES, idle_timeout_s=0.3)
    try:
        with BagPlayer(bag, ros.context, rate=4.0, wait_for_subscribers=1,
                       wait_topics=[TOPICS.image, TOPICS.gt_label, TOPICS.gt_detections]) as player:
            player.play()
        assert evaluator.done.wait(timeout=10)
        summary = evaluator.summary()
    finally:
        evaluator.destroy_node()
    assert (summary["images"], summary["matched"], summary["unmatched_gt"]) == (0, 0, FRAMES)
    assert summary["input_frames"] == FRAMES and summary["pending"] == 0

# ------------------------------------------------------------------------------------------------------- launch
def test_replay_launch_file_matches_the_evaluator_parameters():
    """The evaluator parameters replay.launch.py sets exist (read with ast; tests/test_ros_launch.py runs it)."""
    import ast
    from pathlib import Path

    from vltseg_ros.node.evaluator import PARAMETERS

    source = (Path(__file__).resolve().parents[1] / "launch" / "replay.launch.py").read_text()
    tree = ast.parse(source)
    (arguments,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS"]
    defaults = {ast.literal_eval(k): v.elts[0] for k, v in zip(arguments.keys, arguments.values)}
    for name in ("bag", "checkpoint", "rate", "output_dir", "bag_namespace", "player", "score_every_frame"):
        assert name in defaults
    assert ast.literal_eval(defaults["rate"]) == "1.0" and ast.literal_eval(defaults["bag_namespace"]) == "/camera"
    nodes = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            keywords = {k.arg: k.value for k in call.keywords}
            if isinstance(keywords.get("executable"), ast.Constant):
                nodes[keywords["executable"].value] = keywords
    assert {"vltseg_eval_node", "vltseg_bag_play"} <= set(nodes)
    (eval_params,) = nodes["vltseg_eval_node"]["parameters"].elts
    names = {ast.literal_eval(k) for k in eval_params.keys}
    assert "use_sim_time" in names and names - {"use_sim_time"} <= {p.name for p in PARAMETERS}
    assert '"bag", "play"' in source and '"--clock", "--rate"' in source and '"vltseg.launch.py"' in source
