"""The ROS 2 node over real Fast DDS: inputs, outputs, headers, lifecycle, batching, parameters, bad input."""
from __future__ import annotations

import array
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ros_harness import BEST_EFFORT, LATCHED, RELIABLE, RosHarness, compressed_msg, image_msg
from vltseg_ros.node.node import VLTSegNode


def start_node(ros: RosHarness, checkpoint: str, activate: bool = True, **params) -> VLTSegNode:
    """Create the node in the harness context, configure it and (optionally) activate it."""
    overrides = [Parameter("checkpoint", value=checkpoint), Parameter("device", value="cpu"),
                 Parameter("score_threshold", value=0.0)]
    overrides += [Parameter(k.replace("__", "."), value=v) for k, v in params.items()]
    node = VLTSegNode(context=ros.context, parameter_overrides=overrides)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    if activate:
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    ros.add_node(node)
    return node


def stop_node(node: VLTSegNode) -> None:
    node.trigger_shutdown()
    node.destroy_node()


def _frame(h=60, w=100, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _publish_until(ros, pub, make_msg, bucket, count=1, timeout=20.0) -> bool:
    """Publish fresh frames until ``bucket`` holds ``count`` messages."""
    return ros.publish_until(pub, make_msg, lambda: len(bucket) >= count, timeout)


@pytest.mark.parametrize("qos", [BEST_EFFORT, RELIABLE], ids=["best_effort_publisher", "reliable_publisher"])
def test_raw_frames_produce_every_output(ros, checkpoint, qos):
    node = start_node(ros, checkpoint, publish__confidence=True)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        colored = ros.record(Image, "/vltseg/colored_mask")
        overlay = ros.record(Image, "/vltseg/overlay")
        confidence = ros.record(Image, "/vltseg/confidence")
        dets = ros.record(Detection2DArray, "/vltseg/detections")
        pub = ros.publisher(Image, "/image", qos)
        ros.wait_matched(pub)
        assert ros.wait_for(lambda: node.cameras[0].publishers["overlay"].get_subscription_count() > 0)
        image = _frame()
        stamp = 1_700_000_000_123_456_789
        assert _publish_until(ros, pub, lambda i: image_msg(image, "rgb8", stamp + i), dets)
        assert ros.wait_for(lambda: masks and colored and overlay and confidence)
        for msg, encoding in ((masks[0], "mono8"), (colored[0], "rgb8"), (overlay[0], "rgb8"),
                              (confidence[0], "32FC1")):
            assert (msg.encoding, msg.height, msg.width) == (encoding, 60, 100)
            assert msg.header.frame_id == "camera_optical"
            assert msg.header.stamp.sec == stamp // 10**9
            assert msg.step * msg.height == len(msg.data)
        assert dets[0].header == masks[0].header
        mask = np.frombuffer(masks[0].data, np.uint8).reshape(60, 100)
        assert mask.max() < 19
        conf = np.frombuffer(confidence[0].data, np.float32).reshape(60, 100)
        assert 0.0 <= conf.min() and conf.max() <= 1.0
        assert len(dets[0].detections) > 0
        det = dets[0].detections[0]
        hyp = det.results[0].hypothesis
        assert hyp.class_id.isdigit() and 11 <= int(hyp.class_id) <= 18  # Cityscapes thing trainIds
        assert 0.0 <= hyp.score <= 1.0
        assert det.bbox.size_x > 0 and det.bbox.size_y > 0
        assert 0 <= det.bbox.center.position.x <= 100 and 0 <= det.bbox.center.position.y <= 60
        assert det.header == masks[0].header
    finally:
        stop_node(node)


def test_label_info_is_latched_for_late_subscribers(ros, checkpoint):
    node = start_node(ros, checkpoint)
    try:
        time.sleep(0.5)
        infos = ros.record(LabelInfo, "/vltseg/label_info", LATCHED)
        assert ros.wait_for(lambda: infos)
        names = [c.class_name for c in infos[0].class_map]
        assert names[:3] == ["road", "sidewalk", "building"] and names[13] == "car"
        assert [c.class_id for c in infos[0].class_map] == list(range(len(names)))
    finally:
        stop_node(node)


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8"])
def test_other_encodings_and_row_padding(ros, checkpoint, encoding):
    node = start_node(ros, checkpoint)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        base = _frame(40, 70)
        image = {"bgr8": base[..., ::-1], "rgba8": np.dstack([base, np.full(base.shape[:2], 255, np.uint8)]),
                 "bgra8": np.dstack([base[..., ::-1], np.zeros(base.shape[:2], np.uint8)]),
                 "mono8": base[..., 0]}[encoding]
        assert _publish_until(ros, pub, lambda i: image_msg(np.ascontiguousarray(image), encoding, 10**9 + i,
                                                            row_padding=13), masks)
        assert (masks[0].height, masks[0].width) == (40, 70)
    finally:
        stop_node(node)


def test_colour_order_is_honoured(ros, checkpoint):
    """The same picture sent as rgb8 and as bgr8 gives the same mask."""
    node = start_node(ros, checkpoint)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        rgb = _frame(seed=3)
        assert _publish_until(ros, pub, lambda i: image_msg(rgb, "rgb8", 10**9), masks, 1)
        assert _publish_until(ros, pub, lambda i: image_msg(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", 2 * 10**9),
                              masks, 2)
        a, b = (np.frombuffer(m.data, np.uint8) for m in masks[:2])
        assert np.array_equal(a, b)
    finally:
        stop_node(node)


@pytest.mark.parametrize("fmt, decoder", [("jpeg", "opencv"), ("png", "opencv"), ("jpeg", "torchvision"),
                                         ("png", "torchvision")])
def test_compressed_input(ros, checkpoint, fmt, decoder):
    """JPEG/PNG through OpenCV, and JPEG through torchvision (nvJPEG on CUDA; here its CPU path, PNG falls back)."""
    node = start_node(ros, checkpoint, input_transport="compressed", jpeg_decoder=decoder)
    assert (node._jpeg_device is not None) == (decoder == "torchvision")
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(CompressedImage, "/image/compressed", BEST_EFFORT)
        ros.wait_matched(pub)
        bgr = _frame(48, 80)[..., ::-1]
        assert _publish_until(ros, pub, lambda i: compressed_msg(bgr, fmt, 5 * 10**9 + i, "cam"), masks)
        assert (masks[0].height, masks[0].width, masks[0].header.frame_id) == (48, 80, "cam")
    finally:
        stop_node(node)


def test_lifecycle_transitions(ros, checkpoint):
    node = start_node(ros, checkpoint, activate=False)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        assert ros.wait_for(lambda: node.cameras[0].publishers["label_mask"].get_subscription_count() == 1)
        time.sleep(0.5)
        assert node._state_machine.current_state[1] == "inactive"
        assert pub.get_subscription_count() == 0  # configured, not subscribed
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        ros.wait_matched(pub)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert ros.wait_for(lambda: pub.get_subscription_count() == 0)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS  # reactivation works
        ros.wait_matched(pub)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), masks)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
        assert node.predictor is None
    finally:
        stop_node(node)


def test_configure_fails_cleanly_on_a_bad_checkpoint(ros, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    node = VLTSegNode(context=ros.context, parameter_overrides=[Parameter("checkpoint", value=str(bad)),
                                                                 Parameter("device", value="cpu")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        node.destroy_node()


def test_several_cameras_share_one_forward_pass(ros, checkpoint):
    node = start_node(ros, checkpoint, cameras=["cam_front", "cam_rear"], batch_timeout_ms=1000.0)
    batch_sizes = []
    predict = node.predictor.predict

    def spy(images, **kwargs):
        batch_sizes.append(len(images))
        return predict(images, **kwargs)

    node.predictor.predict = spy
    try:
        front = ros.record(Image, "/vltseg/cam_front/label_mask")
        rear = ros.record(Image, "/vltseg/cam_rear/label_mask")
        pubs = [ros.publisher(Image, "/cam_front/image"), ros.publisher(Image, "/cam_rear/image")]
        for p in pubs:
            ros.wait_matched(p)
        pubs[0].publish(image_msg(_frame(), "rgb8", 10**9, "front"))
        pubs[1].publish(image_msg(_frame(30, 50), "rgb8", 10**9, "rear"))
        assert ros.wait_for(lambda: front and rear)
        assert batch_sizes == [2]
        assert (front[0].header.frame_id, front[0].width) == ("front", 100)
        assert (rear[0].header.frame_id, rear[0].width) == ("rear", 50)
    finally:
        stop_node(node)


def test_parameter_validation(ros, checkpoint):
    node = start_node(ros, checkpoint)
    try:
        assert not node.set_parameters([Parameter("score_threshold", value=1.5)])[0].successful
        assert not node.set_parameters([Parameter("precision", value="fp16")])[0].successful  # read-only
        result = node.set_parameters([Parameter("class_filter", value=["car", "person"])])[0]
        assert result.successful
        assert node.predictor._kept_ids.tolist() == [11, 13]  # the predictor owns the class filter
        assert node.set_parameters([Parameter("score_threshold", value=0.9)])[0].successful
        assert node.predictor.score_threshold == 0.9
    finally:
        stop_node(node)
    with pytest.raises(Exception, match="inference.size: expected 2 values"):
        VLTSegNode(context=ros.context, parameter_overrides=[Parameter("inference.size", value=[1, 2, 3])])
    with pytest.raises(Exception, match="precision"):
        VLTSegNode(context=ros.context, parameter_overrides=[Parameter("precision", value="int8")])


def test_class_filter_applies_to_masks_and_detections(ros, checkpoint):
    node = start_node(ros, checkpoint, class_filter=["car"])
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        dets = ros.record(Detection2DArray, "/vltseg/detections")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), dets)
        assert ros.wait_for(lambda: masks)
        assert set(np.unique(np.frombuffer(masks[0].data, np.uint8))) <= {13, 255}
        assert all(d.results[0].hypothesis.class_id == "13" for d in dets[0].detections)
    finally:
        stop_node(node)


BAD_FRAMES = {  # case -> (message, counted reason)
    "unsupported_encoding": (lambda: _with(image_msg(_frame(), "rgb8", 1), encoding="16UC1"), "encoding"),
    "short_data": (lambda: _with(image_msg(_frame(), "rgb8", 1), height=200), "data"),
    "zero_width": (lambda: _with(image_msg(_frame(), "rgb8", 1), width=0), "size"),
    "absurd_size": (lambda: _with(image_msg(_frame(), "rgb8", 1), width=100000, height=100000, step=300000), "size"),
    "small_step": (lambda: _with(image_msg(_frame(), "rgb8", 1), step=10), "data"),
}


def _with(msg, **fields):
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_raw_frames_are_rejected_and_counted(ros, checkpoint, case):
    make_bad, reason = BAD_FRAMES[case]
    node = start_node(ros, checkpoint)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        pub.publish(make_bad())
        assert ros.wait_for(lambda: node.counters.snapshot().get("rejected", 0) == 1)
        assert not masks
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), masks)
        assert node.counters.snapshot()[f"rejected.{reason}"] == 1
    finally:
        stop_node(node)


@pytest.mark.parametrize("decoder", ["opencv", "torchvision"])
@pytest.mark.parametrize("payload", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"\x89PNG\r\n\x1a\n broken"])
def test_corrupt_compressed_frames_are_rejected(ros, checkpoint, payload, decoder):
    node = start_node(ros, checkpoint, input_transport="compressed", jpeg_decoder=decoder)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(CompressedImage, "/image/compressed")
        ros.wait_matched(pub)
        bad = CompressedImage(format="jpeg")
        bad.data = list(payload)
        pub.publish(bad)
        assert ros.wait_for(lambda: node.counters.snapshot().get("rejected.decode", 0) == 1)
        assert _publish_until(ros, pub, lambda i: compressed_msg(_frame()[..., ::-1], "jpeg", 10**9 + i), masks)
    finally:
        stop_node(node)


def _png_bomb(width: int, height: int) -> bytes:
    """A valid grey PNG of zeros: ~1 KiB per megapixel compressed, ``width*height`` bytes once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    body = b"".join(deflate.compress(row * 1000) for _ in range(height // 1000)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF marker is rewritten to declare ``width`` x ``height``."""
    ok, buf = cv2.imencode(".jpg", _frame(16, 16))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def png_bomb():
    """The issue's bomb: an ~850 KiB PNG declaring 30000x30000 pixels (2.7 GB as a decoded colour image)."""
    return _png_bomb(30000, 30000)


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.parametrize("kind, decoder", [("png", "opencv"), ("jpeg", "opencv"), ("jpeg", "torchvision")])
def test_decompression_bomb_is_rejected_by_its_declared_size(ros, checkpoint, png_bomb, kind, decoder):
    """The declared size is read from the header: the bomb is never decoded, its reason is counted, the next frame
    works."""
    # reliable input: an 854 KiB best-effort message is not delivered over Fast DDS's default transports
    node = start_node(ros, checkpoint, input_transport="compressed", jpeg_decoder=decoder,
                      input_qos__reliability="reliable")
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(CompressedImage, "/image/compressed")
        ros.wait_matched(pub)
        bomb = CompressedImage(format=kind)
        bomb.data = array.array("B", png_bomb if kind == "png" else _jpeg_declaring(30000, 30000))
        peak_before = _peak_rss_mb()
        pub.publish(bomb)
        assert ros.wait_for(lambda: node.counters.snapshot().get("rejected.size", 0) == 1)
        assert _peak_rss_mb() - peak_before < 500, "the bomb was decoded"
        assert not masks
        assert _publish_until(ros, pub, lambda i: compressed_msg(_frame()[..., ::-1], "jpeg", 10**9 + i), masks)
        assert node.counters.snapshot()["rejected"] == 1
    finally:
        stop_node(node)


def test_wrong_camera_info_rejects_frames(ros, checkpoint):
    node = start_node(ros, checkpoint, use_camera_info=True)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        info_pub = ros.publisher(CameraInfo, "/camera_info")
        ros.wait_matched(pub)
        ros.wait_matched(info_pub)
        info_pub.publish(CameraInfo(width=640, height=480))
        assert ros.wait_for(lambda: node.cameras[0].camera_info is not None)
        pub.publish(image_msg(_frame(), "rgb8", 1))
        assert ros.wait_for(lambda: node.counters.snapshot().get("rejected.camera_info", 0) == 1)
        assert not masks
        info_pub.publish(CameraInfo(width=0, height=0))  # invalid: counted, the previous info stays
        assert ros.wait_for(lambda: node.counters.snapshot().get("rejected.camera_info", 0) == 2)
        info_pub.publish(CameraInfo(width=100, height=60))
        assert ros.wait_for(lambda: node.cameras[0].camera_info.width == 100)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), masks)
    finally:
        stop_node(node)


def test_stale_frames_are_dropped_by_age(ros, checkpoint):
    node = start_node(ros, checkpoint, max_frame_age_s=1.0)
    try:
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        old = node.get_clock().now().nanoseconds - 10 * 10**9
        pub.publish(image_msg(_frame(), "rgb8", old))
        assert ros.wait_for(lambda: node.counters.snapshot().get("stale", 0) == 1)
        assert not masks
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", node.get_clock().now().nanoseconds),
                              masks)
    finally:
        stop_node(node)


def _statuses(diags, name_part: str) -> list:
    """Every received DiagnosticStatus whose name contains ``name_part``, oldest first."""
    return [status for array_ in list(diags) for status in array_.status if name_part in status.name]


def _node_statuses(diags) -> list:
    """The node's own statuses (not the per-camera input ones), oldest first."""
    return [status for status in _statuses(diags, "vltseg: ") if ": input " not in status.name]


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def test_diagnostics_report_rates_latency_and_counters(ros, checkpoint):
    node = start_node(ros, checkpoint, diagnostics_period_s=0.2)
    try:
        diags = ros.record(DiagnosticArray, "/diagnostics")
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        # Stamped an hour before the node's clock reads them (max_frame_age_s is off by default), so the latency
        # holds at least 3.6e6 ms whatever the machine's speed: a check of its units and sign, not of speed
        # (bench/node.py measures speed).
        hour_ns = 3600 * 10**9
        assert _publish_until(
            ros, pub, lambda i: image_msg(_frame(), "rgb8", node.get_clock().now().nanoseconds - hour_ns), masks, 3)
        pub.publish(_with(image_msg(_frame(), "rgb8", 1), encoding="yuv422"))

        def latest():
            for status in reversed(_node_statuses(diags)):
                values = _values(status)
                if int(values.get("rejected", 0)) >= 1 and int(values.get("published", 0)) >= 3:
                    return status, values
            return None

        assert ros.wait_for(latest)
        status, values = latest()
        assert status.level == status.WARN and "rejected" in status.message and values["model"] == "eva02_tiny"
        for key in ("input_rate_hz", "output_rate_hz", "latency_p50_ms", "latency_p95_ms", "dropped",
                    "gpu_memory_mb", "rejected.encoding", "published.label_mask"):
            assert key in values
        assert "published.overlay" not in values  # nobody subscribed to it: never computed
        # Latency runs from the header stamp to publishing the result, in milliseconds.
        assert float(values["latency_p50_ms"]) >= hour_ns / 1e6
        (camera,) = {s.name for s in _statuses(diags, ": input ")}
        assert camera == "vltseg: input image"
    finally:
        stop_node(node)


def test_diagnostics_level_follows_the_recent_window(ros, checkpoint):
    """One rejected frame and one inference error raise the level for one window, then it returns to OK."""
    node = start_node(ros, checkpoint, diagnostics_period_s=0.1, diagnostics_window_s=1.0)
    try:
        diags = ros.record(DiagnosticArray, "/diagnostics")
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        pub.publish(_with(image_msg(_frame(), "rgb8", 1), encoding="yuv422"))
        assert ros.wait_for(lambda: any(s.level == s.WARN for s in _node_statuses(diags)))
        assert ros.wait_for(lambda: _node_statuses(diags)[-1].level == DiagnosticStatus.OK)

        predict = node.predictor.predict
        failures = []

        def fail_once(*args, **kwargs):
            if not failures:
                failures.append(1)
                raise RuntimeError("CUDA out of memory (simulated)")
            return predict(*args, **kwargs)

        node.predictor.predict = fail_once
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), masks)
        assert ros.wait_for(lambda: [s for s in _node_statuses(diags) if s.level == s.ERROR])
        errors = [s for s in _node_statuses(diags) if s.level == DiagnosticStatus.ERROR]
        assert "CUDA out of memory (simulated)" in errors[0].message
        assert ros.wait_for(lambda: _node_statuses(diags)[-1].level == DiagnosticStatus.OK)
        assert node.counters.snapshot()["inference_errors"] == 1  # the total stays in the values
    finally:
        stop_node(node)


def test_diagnostics_report_a_stale_camera_and_its_rate(ros, checkpoint):
    """Per camera: frames slower than expected_rate_hz warn; a camera that stopped publishing is stale."""
    node = start_node(ros, checkpoint, diagnostics_period_s=0.1, diagnostics_window_s=2.0, stale_input_s=1.0,
                      expected_rate_hz=50.0)
    try:
        diags = ros.record(DiagnosticArray, "/diagnostics")
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), masks, 4)
        assert ros.wait_for(lambda: "Frequency too low." in _statuses(diags, ": input image")[-1].message)
        status = _statuses(diags, ": input image")[-1]
        assert status.level == DiagnosticStatus.WARN
        assert _values(status)["topic"] == "/image" and float(_values(status)["Actual frequency (Hz)"]) < 45
        assert ros.wait_for(lambda: "stale: no frame on /image" in _statuses(diags, ": input image")[-1].message)
        assert ros.wait_for(lambda: _statuses(diags, ": input image")[-1].message.startswith("No events recorded."))
        assert _statuses(diags, ": input image")[-1].level == DiagnosticStatus.ERROR
    finally:
        stop_node(node)


def test_no_inference_while_no_output_has_a_subscriber(ros, checkpoint):
    """image_pipeline's laziness: the input is subscribed only while an enabled output has a subscriber, and only
    the subscribed outputs are computed."""
    node = start_node(ros, checkpoint)
    calls = []
    predict = node.predictor.predict
    node.predictor.predict = lambda images, **kw: (calls.append(kw), predict(images, **kw))[1]
    try:
        pub = ros.publisher(Image, "/image")
        time.sleep(1.0)
        for i in range(5):
            pub.publish(image_msg(_frame(), "rgb8", 10**9 + i))
            time.sleep(0.1)
        assert pub.get_subscription_count() == 0 and not calls
        masks = ros.record(Image, "/vltseg/label_mask")
        ros.wait_matched(pub)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 2 * 10**9 + i), masks)
        published = node.counters.snapshot()
        assert published["published.label_mask"] >= 1
        assert not {"published.overlay", "published.colored_mask", "published.detections"} & set(published)
        assert calls and not any(kw["return_confidence"] for kw in calls)
        for sub in list(ros.probe.subscriptions):
            ros.probe.destroy_subscription(sub)
        assert ros.wait_for(lambda: pub.get_subscription_count() == 0)  # the last subscriber left: unsubscribed
    finally:
        stop_node(node)


def test_always_on_infers_without_subscribers(ros, checkpoint):
    node = start_node(ros, checkpoint, always_on=True)
    try:
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        assert ros.publish_until(pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i),
                                 lambda: node.counters.snapshot().get("published.overlay", 0) >= 1)
        assert node.counters.snapshot()["published.label_mask"] >= 1  # every enabled output
    finally:
        stop_node(node)


def test_detection_markers_outline_the_detected_boxes(ros, checkpoint):
    """Markers lie on the plane 1 m in front of the camera; projected through the intrinsics (a 90-degree pinhole
    without camera_info, the camera's K with it) they land on the Detection2D boxes."""
    from visualization_msgs.msg import Marker, MarkerArray

    node = start_node(ros, checkpoint, use_camera_info=True)
    try:
        dets = ros.record(Detection2DArray, "/vltseg/detections")
        markers = ros.record(MarkerArray, "/vltseg/detection_markers")
        pub = ros.publisher(Image, "/image")
        info_pub = ros.publisher(CameraInfo, "/camera_info")
        ros.wait_matched(pub)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), markers)
        k = [80.0, 0.0, 40.0, 0.0, 90.0, 35.0, 0.0, 0.0, 1.0]
        info_pub.publish(CameraInfo(width=100, height=60, k=k))
        assert ros.wait_for(lambda: node.cameras[0].camera_info is not None)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 3 * 10**9 + i), markers, 2)
        assert ros.wait_for(lambda: len(dets) >= 2)
        by_stamp = {m.header.stamp.sec: m for m in dets}
        for array_, (fx, fy, cx, cy) in zip(markers[:2], [(50.0, 50.0, 50.0, 30.0), (80.0, 90.0, 40.0, 35.0)]):
            assert array_.markers[0].action == Marker.DELETEALL
            boxes = [m for m in array_.markers if m.ns == "boxes"]
            labels = [m for m in array_.markers if m.ns == "labels"]
            detections = by_stamp[array_.markers[0].header.stamp.sec].detections
            assert len(boxes) == len(labels) == len(detections) > 0
            for marker, det in zip(boxes, detections):
                assert marker.type == Marker.LINE_STRIP and marker.header.frame_id == "camera_optical"
                us = [p.x / p.z * fx + cx for p in marker.points]
                vs = [p.y / p.z * fy + cy for p in marker.points]
                assert {p.z for p in marker.points} == {1.0}
                assert min(us) == pytest.approx(det.bbox.center.position.x - det.bbox.size_x / 2, abs=1e-6)
                assert max(vs) == pytest.approx(det.bbox.center.position.y + det.bbox.size_y / 2, abs=1e-6)
            assert labels[0].text.split()[0] in node.predictor.class_names
    finally:
        stop_node(node)


def test_a_failed_configure_is_logged_with_its_traceback(ros, checkpoint, monkeypatch, capfd):
    """An exception outside the checkpoint loading (here: warm-up running out of memory) fails the transition with
    the exception and its traceback in the log, instead of rclpy's silent error transition."""
    from vltseg_ros.predictor import Predictor

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    monkeypatch.setattr(Predictor, "predict", out_of_memory)
    node = VLTSegNode(context=ros.context, parameter_overrides=[Parameter("checkpoint", value=checkpoint),
                                                                 Parameter("device", value="cpu")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
        log = capfd.readouterr().err
        assert "configure failed: RuntimeError('CUDA out of memory" in log
        assert "Traceback (most recent call last)" in log and "in out_of_memory" in log
        monkeypatch.undo()
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS  # nothing half-configured was left
    finally:
        node.trigger_shutdown()
        node.destroy_node()


def test_the_executable_exits_with_the_reason_of_a_failed_start(ros, checkpoint):
    """``vltseg_node`` itself: a warm-up failure ends the process with status 1 and the traceback in its output."""
    code = ("import sys\n"
            "from vltseg_ros.predictor import Predictor\n"
            "def warm_up_fails(self, *a, **k):\n"
            "    raise RuntimeError('torch.compile failed (simulated)')\n"
            "Predictor.predict = warm_up_fails\n"
            "from vltseg_ros.node.node import main\n"
            "sys.exit(main())\n")
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id))
    proc = subprocess.run([sys.executable, "-c", code, "--ros-args", "-p", f"checkpoint:={checkpoint}",
                           "-p", "device:=cpu"], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "torch.compile failed (simulated)" in out and "Traceback (most recent call last)" in out, out
    assert "configure failed; see the error above" in out


def test_ctrl_c_during_a_long_warm_up_ends_the_node_cleanly(ros, checkpoint):
    """SIGINT while configure is still warming up (a torch.compile takes minutes): the process exits with status 0
    and no traceback, although no lifecycle shutdown transition exists from the middle of a transition."""
    code = ("import sys, time\n"
            "from vltseg_ros.predictor import Predictor\n"
            "def slow_warm_up(self, *a, **k):\n"
            "    print('warming up', flush=True)\n"
            "    time.sleep(60)\n"
            "Predictor.predict = slow_warm_up\n"
            "from vltseg_ros.node.node import main\n"
            "sys.exit(main())\n")
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id))
    proc = subprocess.Popen([sys.executable, "-c", code, "--ros-args", "-p", f"checkpoint:={checkpoint}",
                             "-p", "device:=cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "warming up"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in out, out


def test_node_in_its_own_process(ros, checkpoint, tmp_path):
    """The installed ``vltseg_node`` executable, parameters from a YAML file, frames from this process."""
    params = tmp_path / "params.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    checkpoint: {checkpoint}\n    device: cpu\n")
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id))
    exe = os.path.join(os.path.dirname(sys.executable), "vltseg_node")
    proc = subprocess.Popen([exe, "--ros-args", "--params-file", str(params), "-r", "__ns:=/robot"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        masks = ros.record(Image, "/robot/vltseg/label_mask")
        pub = ros.publisher(Image, "/robot/image", BEST_EFFORT)
        ros.wait_matched(pub, timeout=60)
        assert _publish_until(ros, pub, lambda i: image_msg(_frame(), "rgb8", 10**9 + i), masks, timeout=60)
        assert masks[0].width == 100
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "loaded" in out, out
    assert proc.returncode == 0, out  # SIGTERM stops the node as Ctrl-C does
    assert rclpy.ok(context=ros.context)


def test_compiled_multi_camera_node_warms_every_batch_size_it_will_see():
    from vltseg_ros.node.node import warmup_batches

    assert warmup_batches("whole", compiled=False, cameras=4, max_batch=8) == [1]
    assert warmup_batches("whole", compiled=True, cameras=4, max_batch=8) == [1, 2, 3, 4]
    assert warmup_batches("whole", compiled=True, cameras=12, max_batch=8) == list(range(1, 9))
    assert warmup_batches("slide", compiled=True, cameras=4, max_batch=8) == [1]
