"""The one message codec: the same functions build and read rclpy and rosbags messages identically."""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from vltseg_ros import codec
from vltseg_ros.bag import make_typestore
from vltseg_ros.codec import CodecError

ROOT = Path(__file__).resolve().parents[1]


def _bindings():
    from vltseg_ros.node.msg_types import RCLPY_TYPES

    rosbags = codec.message_types(make_typestore().types, lambda data: np.ascontiguousarray(data, np.uint8))
    return {"rclpy": RCLPY_TYPES, "rosbags": rosbags}


@pytest.fixture(params=["rclpy", "rosbags"])
def types(request):
    return _bindings()[request.param]


def test_image_round_trip_with_row_padding(types):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    header = codec.header_msg(types, 3 * 10**9 + 7, "cam")
    msg = codec.image_msg(types, rgb, "rgb8", header)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    assert codec.stamp_ns(msg) == 3 * 10**9 + 7 and msg.header.frame_id == "cam"
    image, order = codec.image_colour(msg)
    assert order == "RGB" and np.array_equal(image, rgb)
    # a driver that pads each row to 32 bytes
    padded = np.zeros((5, 32), np.uint8)
    padded[:, :21] = rgb.reshape(5, 21)
    msg.step, msg.data = 32, types.bytes_field(padded.reshape(-1))
    assert np.array_equal(codec.image_colour(msg)[0], rgb)


def test_colour_encodings_report_their_order_or_convert(types):
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), np.uint8)
    header = codec.header_msg(types, 0, "")
    alpha = np.full((4, 6, 1), 9, np.uint8)
    cases = {"bgr8": (rgb[..., ::-1], "BGR", rgb[..., ::-1]), "rgba8": (np.dstack([rgb, alpha]), "RGB", rgb),
             "bgra8": (np.dstack([rgb[..., ::-1], alpha]), "BGR", rgb[..., ::-1]),
             "mono8": (rgb[..., 0], "RGB", np.repeat(rgb[..., :1], 3, axis=2))}
    for encoding, (array, order, expected) in cases.items():
        image, got = codec.image_colour(codec.image_msg(types, array, encoding, header))
        assert got == order and np.array_equal(image, expected), encoding


def test_16_bit_images_honour_byte_order(types):
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = codec.image_msg(types, depth.astype(">u2"), "mono16", codec.header_msg(types, 0, ""))
    msg.is_bigendian = 1  # what a big-endian driver writes
    assert np.array_equal(codec.image_array(msg), depth)


def test_unsupported_encodings_go_to_the_fallback_or_are_rejected(types):
    msg = codec.image_msg(types, np.zeros((2, 4, 2), np.uint8), "yuv422", codec.header_msg(types, 0, ""))
    with pytest.raises(CodecError, match="yuv422") as err:
        codec.image_colour(msg)
    assert err.value.reason == "encoding"
    out = codec.image_colour(msg, fallback=lambda m: (np.ones((2, 4, 3), np.uint8), "RGB"))
    assert out[1] == "RGB" and out[0].shape == (2, 4, 3)
    assert codec.image_array(msg).shape == (2, 4, 2)  # yuv422 is two 8-bit channels


@pytest.mark.parametrize("field, value, reason", [("step", 5, "data"), ("height", 0, "size"),
                                                  ("width", 10**8, "size"), ("data", b"\0" * 10, "data"),
                                                  ("encoding", "rgb9", "encoding")])
def test_malformed_images_are_codec_errors_with_a_reason(types, field, value, reason):
    msg = codec.image_msg(types, np.zeros((4, 6, 3), np.uint8), "rgb8", codec.header_msg(types, 0, ""))
    setattr(msg, field, types.bytes_field(np.frombuffer(value, np.uint8)) if field == "data" else value)
    with pytest.raises(CodecError) as err:
        codec.image_array(msg)
    assert err.value.reason == reason


def test_detections_round_trip(types):
    boxes = np.array([[10.5, 20, 30, 60], [0, 0, 8, 8]], np.float32)
    header = codec.header_msg(types, 5, "cam")
    msg = codec.detections_msg(types, header, boxes, [13, 11], [0.9, 0.25])
    got_boxes, class_ids, scores = codec.detection_arrays(msg)
    np.testing.assert_allclose(got_boxes, boxes)
    assert class_ids.tolist() == [13, 11] and np.allclose(scores, [0.9, 0.25])
    assert got_boxes.dtype == np.float32 and class_ids.dtype == np.int64
    assert msg.detections[0].results[0].hypothesis.class_id == "13"
    gt = codec.detections_msg(types, header, boxes[:1], [13])  # ground truth: score 1
    assert codec.detection_arrays(gt)[2].tolist() == [1.0]
    empty = codec.detection_arrays(codec.detections_msg(types, header, np.zeros((0, 4)), []))
    assert [a.shape for a in empty] == [(0, 4), (0,), (0,)]


def test_detections_with_unusable_hypotheses_are_codec_errors(types):
    msg = codec.detections_msg(types, codec.header_msg(types, 0, ""), np.array([[0, 0, 9, 9]]), [13])
    msg.detections[0].results[0].hypothesis.class_id = "car"
    with pytest.raises(CodecError, match="trainId"):
        codec.detection_arrays(msg)
    msg.detections[0].results = []
    with pytest.raises(CodecError, match="hypothesis"):
        codec.detection_arrays(msg)


def test_label_masks(types):
    label = np.random.default_rng(2).integers(0, 19, (6, 9), np.uint8)
    msg = codec.image_msg(types, label, "mono8", codec.header_msg(types, 0, ""))
    out = codec.label_array(msg)
    assert np.array_equal(out, label) and out.flags.writeable
    msg.encoding = "rgb8"
    with pytest.raises(CodecError, match="mono8"):
        codec.label_array(msg)


def test_label_info(types):
    msg = codec.label_info_msg(types, codec.header_msg(types, 0, ""), ["road", "car"], 0.3)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "road"), (1, "car")]
    assert msg.threshold == pytest.approx(0.3)


def test_compressed_images_are_checked_against_their_declared_size(types):
    bgr = np.random.default_rng(3).integers(0, 256, (16, 24, 3), np.uint8)
    header = codec.header_msg(types, 0, "")
    ok, png = cv2.imencode(".png", bgr)
    msg = codec.compressed_msg(types, png, "bgr8; png compressed bgr8", header)
    image, order = codec.compressed_colour(msg)
    assert order == "BGR" and np.array_equal(image, bgr)
    # a small PNG whose header declares 100000 x 100000 pixels: rejected from its header, nothing decoded
    small = bytearray(cv2.imencode(".png", bgr[:2, :2])[1].tobytes())
    small[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR width and height
    small[29:33] = struct.pack(">I", zlib.crc32(bytes(small[12:29])))  # its CRC
    bomb = bytes(small)
    msg = codec.compressed_msg(types, np.frombuffer(bomb, np.uint8), "png", header)
    with pytest.raises(CodecError, match="exceeds") as err:
        codec.compressed_colour(msg)
    assert err.value.reason == "size"
    with pytest.raises(CodecError, match="neither JPEG nor PNG"):
        codec.compressed_colour(codec.compressed_msg(types, np.arange(10, dtype=np.uint8), "x", header))


def test_rclpy_and_rosbags_messages_carry_the_same_values():
    """Built by the codec through either binding, a message is the same on the wire (compared after rclpy
    deserialises both: CDR alignment padding is unspecified bytes)."""
    from rclpy.serialization import deserialize_message, serialize_message

    from vltseg_ros.node.msg_types import message_class

    built = {}
    typestore = make_typestore()
    for name, types in _bindings().items():
        header = codec.header_msg(types, 12 * 10**9 + 34, "cam")
        msgs = {codec.IMAGE: codec.image_msg(types, np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "rgb8", header),
                codec.DETECTIONS: codec.detections_msg(types, header, np.array([[1, 2, 5, 9]]), [12], [0.5]),
                codec.LABEL_INFO: codec.label_info_msg(types, header, ["road", "car"], 0.25),
                codec.CAMERA_INFO: codec.pinhole_camera_info_msg(types, header, 2, 4)}
        built[name] = {k: bytes(serialize_message(m)) if name == "rclpy" else
                       bytes(typestore.serialize_cdr(m, k)) for k, m in msgs.items()}
    for name in built["rclpy"]:
        cls = message_class(name)
        assert deserialize_message(built["rclpy"][name], cls) == deserialize_message(built["rosbags"][name], cls)


def test_no_module_outside_the_codec_parses_or_builds_these_messages():
    """Box geometry and image buffers are handled in codec.py only (the node's markers draw boxes, not messages)."""
    patterns = [r"bbox\.center", r"\.hypothesis\.class_id", r"np\.frombuffer\(msg\.data", r"\bmsg\.step\b"]
    offenders = []
    for path in (ROOT / "vltseg_ros").rglob("*.py"):
        if path.name == "codec.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {p}" for p in patterns if re.search(p, text)]
    assert not offenders
