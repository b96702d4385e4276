"""The one codec between this package's arrays and the ROS messages it reads and writes.

ROS-free and duck-typed: rclpy messages and rosbags messages have the same field names, so decoding reads fields
and works on both. Building a message needs its classes: a ``MessageTypes`` maps a ROS type name
(``sensor_msgs/msg/Image``) to a class taking every field as a keyword, and says how a ``uint8[]`` field is
given (rclpy takes ``array.array('B')``, filled in one copy; rosbags takes a numpy array). ``node/msg_types.py``
makes the rclpy one; ``bag/topics.py`` the rosbags one. The node, the online evaluator and the bag reader and
writer all go through here, so a box is parsed and written one way everywhere.

Raw images decode to zero-copy numpy views (``step`` row padding and byte order honoured); the colour order is
reported, not converted, because the predictor flips channels on the device. Compressed images are checked against
the size their JPEG/PNG header declares before anything is decoded, so a small file declaring a huge image (a
decompression bomb) costs microseconds, not gigabytes.
"""
from __future__ import annotations

import array
import io
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import cv2
import numpy as np

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
LABEL_INFO = "vision_msgs/msg/LabelInfo"

MAX_PIXELS = 8192 * 8192
"""Images larger than this are rejected: such a size is a corrupt header or a decompression bomb, not a camera."""

# encoding -> (channels, colour order as the predictor understands it, cv2 conversion to 3 channels or None)
COLOUR_ENCODINGS = {
    "rgb8": (3, "RGB", None),
    "bgr8": (3, "BGR", None),
    "rgba8": (4, "RGB", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "BGR", cv2.COLOR_BGRA2BGR),
    "mono8": (1, "RGB", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, "RGB", cv2.COLOR_GRAY2RGB),
    "8UC3": (3, "BGR", None),
}
LABEL_ENCODINGS = ("mono8", "8UC1")
_NAMED = {"rgb8": "8UC3", "bgr8": "8UC3", "rgba8": "8UC4", "bgra8": "8UC4", "mono8": "8UC1", "mono16": "16UC1",
          "rgb16": "16UC3", "bgr16": "16UC3", "rgba16": "16UC4", "bgra16": "16UC4", "yuv422": "8UC2",
          "uyvy": "8UC2", "yuyv": "8UC2", "yuv422_yuy2": "8UC2",
          **{f"bayer_{p}{b}": f"{b}UC1" for p in ("rggb", "bggr", "gbrg", "grbg") for b in (8, 16)}}
_DEPTH = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4", "64F": "f8"}


class CodecError(ValueError):
    """A message cannot be turned into arrays. ``reason`` is a short counter key (encoding, size, data, decode);
    the message says what exactly is wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MessageTypes:
    """How to build messages of one ROS binding: ``classes(name)`` is the class of a ROS type name, taking every
    field as a keyword; ``bytes_field(uint8 array)`` is the value of a ``uint8[]`` field."""

    classes: Callable[[str], Any]
    bytes_field: Callable[[np.ndarray], Any]

    def __getitem__(self, name: str) -> Any:
        return self.classes(name)


def rclpy_bytes(data: np.ndarray) -> array.array:
    """``uint8[]`` for rclpy: an ``array.array('B')`` filled in one copy, no per-element conversion."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
    return out


# ------------------------------------------------------------------------------------------------------ decoding
def stamp_ns(msg: Any) -> int:
    """The message's header stamp in nanoseconds."""
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


def _buffer(msg: Any) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8) if len(msg.data) else np.zeros(0, np.uint8)


def check_size(width: int, height: int, what: str, max_pixels: int = MAX_PIXELS) -> None:
    """CodecError("size") for an empty image or one over ``max_pixels``."""
    if height <= 0 or width <= 0:
        raise CodecError("size", f"zero-size {what} {width}x{height}")
    if height * width > max_pixels:
        raise CodecError("size", f"{what} {width}x{height} exceeds the {max_pixels}-pixel limit")


def pixel_type(encoding: str) -> Optional[tuple[np.dtype, int]]:
    """(dtype, channels) of a sensor_msgs image encoding (named, bayer, yuv422 or ``{bits}{U|S|F}C{n}``), None for
    one sensor_msgs does not define."""
    match = re.fullmatch(r"(8U|8S|16U|16S|32S|32F|64F)C([1-4])", _NAMED.get(encoding, encoding))
    return (np.dtype(_DEPTH[match.group(1)]), int(match.group(2))) if match else None


def image_array(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """HxW or HxWxC array of a raw Image in its own encoding's dtype, honouring ``step`` row padding and byte
    order: a read-only view of ``msg.data`` where the byte order allows."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(width, height, "image", max_pixels)
    kind = pixel_type(msg.encoding)
    if kind is None:
        raise CodecError("encoding", f"unknown image encoding {msg.encoding!r}")
    dtype, channels = kind
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise CodecError("data", f"step {step} is smaller than width*channels*bytes = {row_bytes} for "
                                 f"{msg.encoding}")
    data = _buffer(msg)
    if data.size < height * step:
        raise CodecError("data", f"data has {data.size} bytes, expected height*step = {height * step}")
    rows = data[: height * step].reshape(height, step)[:, :row_bytes]
    out = rows.view(dtype).reshape((height, width) if channels == 1 else (height, width, channels))
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        out = out.byteswap()
    return out


ColourFallback = Callable[[Any], tuple[np.ndarray, str]]


def image_colour(msg: Any, fallback: Optional[ColourFallback] = None,
                 max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Image -> (HxWx3 uint8 array, "RGB"|"BGR"), a view of ``msg.data`` for rgb8/bgr8/8UC3. Encodings outside
    ``COLOUR_ENCODINGS`` go to ``fallback(msg)`` (cv_bridge on a ROS install, rosbags-image for bags), or are a
    CodecError("encoding") without one."""
    spec = COLOUR_ENCODINGS.get(msg.encoding)
    if spec is None:
        if fallback is None:
            raise CodecError("encoding", f"unsupported encoding {msg.encoding!r} (supported: "
                                         f"{', '.join(sorted(COLOUR_ENCODINGS))})")
        check_size(int(msg.width), int(msg.height), "image", max_pixels)
        return fallback(msg)
    image = image_array(msg, max_pixels)
    _, order, conversion = spec
    return (cv2.cvtColor(image, conversion) if conversion is not None else image), order


def _compressed_payload(msg: Any, max_pixels: int) -> tuple[np.ndarray, str]:
    """The payload of a JPEG/PNG CompressedImage and its container ("JPEG"|"PNG"), after checking the image size
    its header declares (Pillow reads the header only)."""
    from PIL import JpegImagePlugin, PngImagePlugin

    data = _buffer(msg)
    if data.size == 0:
        raise CodecError("decode", f"empty compressed image (format {msg.format!r})")
    head = data[:8].tobytes()
    if head.startswith(b"\xff\xd8"):
        container, reader = "JPEG", JpegImagePlugin.JpegImageFile
    elif head == b"\x89PNG\r\n\x1a\n":
        container, reader = "PNG", PngImagePlugin.PngImageFile
    else:
        raise CodecError("encoding", f"compressed image is neither JPEG nor PNG (format {msg.format!r}, first "
                                     f"bytes {head[:4].hex()})")
    try:
        width, height = reader(io.BytesIO(data.tobytes())).size
    except (OSError, SyntaxError, ValueError) as exc:
        raise CodecError("decode", f"cannot read the {container} header of a {data.size}-byte image: {exc}") from exc
    check_size(width, height, f"{container} declared as", max_pixels)
    return data, container


def compressed_colour(msg: Any, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """CompressedImage (JPEG/PNG) -> (HxWx3 uint8 BGR array, "BGR")."""
    data, container = _compressed_payload(msg, max_pixels)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise CodecError("decode", f"cannot decode {data.size}-byte {container} (format {msg.format!r})")
    return image, "BGR"


def is_jpeg(msg: Any) -> bool:
    """Whether a CompressedImage holds a JPEG (by its magic bytes)."""
    return bytes(msg.data[:2]) == b"\xff\xd8"


def jpeg_tensor(msg: Any, device: Any, max_pixels: int = MAX_PIXELS):
    """JPEG CompressedImage -> (HxWx3 uint8 RGB torch tensor on ``device``, "RGB"), decoded by torchvision
    (nvJPEG on CUDA), so the frame never exists on the host."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data, container = _compressed_payload(msg, max_pixels)
    try:
        image = decode_jpeg(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        raise CodecError("decode", f"cannot decode {data.size}-byte {container} (format {msg.format!r}): "
                                   f"{exc}") from exc
    return image.permute(1, 2, 0), "RGB"


def label_array(msg: Any) -> np.ndarray:
    """mono8/8UC1 label Image -> HxW uint8 trainIds (a writable copy, ``step`` padding removed)."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise CodecError("encoding", f"label mask encoding must be mono8, got {msg.encoding!r}")
    return image_array(msg).copy()


def detection_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection2DArray -> (Nx4 float32 xyxy boxes, N int64 class ids, N float32 scores), from the first
    hypothesis of each detection, whose ``class_id`` must be an integer string (a trainId). float32 like the
    predictor's boxes, so online and offline scoring see the same numbers."""
    boxes, class_ids, scores = [], [], []
    for det in msg.detections:
        if not det.results:
            raise CodecError("data", "a detection has no class hypothesis")
        hypothesis = det.results[0].hypothesis
        try:
            class_ids.append(int(hypothesis.class_id))
        except ValueError:
            raise CodecError("data", f"class_id must be a trainId, got {hypothesis.class_id!r}") from None
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        half_w, half_h = det.bbox.size_x / 2, det.bbox.size_y / 2
        boxes.append((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
        scores.append(hypothesis.score)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(class_ids, np.int64),
            np.asarray(scores, np.float32))


# ------------------------------------------------------------------------------------------------------ building
def frame_score_values(msg: Any) -> tuple[str, dict[str, float]]:
    """The node's ``~/frame_score`` (vision_msgs/Classification) -> (decision, frame scores by name): the decision
    is ``results[0].class_id``, the scores are the hypotheses after it."""
    if not msg.results:
        raise CodecError("data", "a frame_score message has no decision")
    return str(msg.results[0].class_id), {str(h.class_id): float(h.score) for h in msg.results[1:]}


def header_msg(types: MessageTypes, stamp: int, frame_id: str) -> Any:
    """std_msgs/Header of a nanosecond stamp."""
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id)


def image_msg(types: MessageTypes, image: np.ndarray, encoding: str, header: Any) -> Any:
    """HxW or HxWxC array (uint8, float32, ...) -> Image with the given encoding and header (one memory copy)."""
    image = np.ascontiguousarray(image)
    return types[IMAGE](header=header, height=int(image.shape[0]), width=int(image.shape[1]), encoding=encoding,
                        is_bigendian=int(sys.byteorder == "big" and image.dtype.itemsize > 1),
                        step=int(image.strides[0]), data=types.bytes_field(image.reshape(-1).view(np.uint8)))


def compressed_msg(types: MessageTypes, payload: np.ndarray, format_: str, header: Any) -> Any:
    """CompressedImage of an encoded payload (``format`` as image_transport writes it)."""
    return types[COMPRESSED_IMAGE](header=header, format=format_, data=types.bytes_field(payload.reshape(-1)))


def pinhole_camera_info_msg(types: MessageTypes, header: Any, height: int, width: int) -> Any:
    """A nominal pinhole CameraInfo: focal length = width, principal point at the centre, no distortion."""
    f, cx, cy = float(width), width / 2, height / 2
    return types[CAMERA_INFO](
        header=header, height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([f, 0, cx, 0, f, cy, 0, 0, 1], np.float64), r=np.eye(3).reshape(-1),
        p=np.array([f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0], np.float64), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def detections_msg(types: MessageTypes, header: Any, boxes: np.ndarray, class_ids: Sequence[int],
                   scores: Optional[Sequence[float]] = None) -> Any:
    """vision_msgs/Detection2DArray: per box one hypothesis (class id as a string, score; 1.0 for ground truth),
    the box as centre and size in source pixels, identity pose."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64)
    g = "geometry_msgs/msg/"
    detections = []
    for (x1, y1, x2, y2), class_id, score in zip(boxes.tolist(), np.asarray(class_ids).tolist(), scores.tolist()):
        pose = types[g + "PoseWithCovariance"](
            pose=types[g + "Pose"](position=types[g + "Point"](x=0.0, y=0.0, z=0.0),
                                   orientation=types[g + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36))
        detections.append(types["vision_msgs/msg/Detection2D"](
            header=header,
            results=[types["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=types["vision_msgs/msg/ObjectHypothesis"](class_id=str(int(class_id)), score=score),
                pose=pose)],
            bbox=types["vision_msgs/msg/BoundingBox2D"](
                center=types["vision_msgs/msg/Pose2D"](
                    position=types["vision_msgs/msg/Point2D"](x=(x1 + x2) / 2, y=(y1 + y2) / 2), theta=0.0),
                size_x=x2 - x1, size_y=y2 - y1),
            id=""))
    return types[DETECTIONS](header=header, detections=detections)


def label_info_msg(types: MessageTypes, header: Any, class_names: Sequence[str], threshold: float) -> Any:
    """vision_msgs/LabelInfo: class id -> name, and the detection score threshold."""
    return types[LABEL_INFO](
        header=header, threshold=float(threshold),
        class_map=[types["vision_msgs/msg/VisionClass"](class_id=i, class_name=n) for i, n in enumerate(class_names)])


def message_types(classes: Mapping[str, Any] | Callable[[str], Any], bytes_field: Callable[[np.ndarray], Any]
                  ) -> MessageTypes:
    """A MessageTypes from a mapping (rosbags' ``typestore.types``) or a lookup function (rclpy's)."""
    return MessageTypes(classes.__getitem__ if isinstance(classes, Mapping) else classes, bytes_field)
