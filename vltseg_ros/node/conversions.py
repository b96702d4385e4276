"""Every ROS message conversion of the node: sensor_msgs images in, and the node's output messages out.

Raw images become zero-copy numpy views (``step`` row padding honoured); colour order is reported, not converted,
because the predictor flips channels on the device. Encodings outside the common set go through cv_bridge where
the ROS install provides it (the PyPI ``cv-bridge`` is broken with OpenCV 5 / numpy 2 and is never used).
Compressed images are checked against the size their JPEG/PNG header declares before anything is decoded, so a
small file declaring a huge image (a decompression bomb) costs microseconds, not gigabytes.

Outputs are built from one ``FrameResult`` (a frame and its prediction, at the source resolution) by the
``*_msg`` functions that ``outputs.OUTPUTS`` names.
"""
from __future__ import annotations

import array
import io
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import ColorRGBA
from vision_msgs.msg import (
    Detection2D, Detection2DArray, LabelInfo, ObjectHypothesis, ObjectHypothesisWithPose, VisionClass,
)
from visualization_msgs.msg import Marker, MarkerArray

from ..visualize import draw_overlay

# encoding -> (channels, colour order as the predictor understands it, cv2 conversion to 3-channel or None)
_ENCODINGS = {
    "rgb8": (3, "RGB", None),
    "bgr8": (3, "BGR", None),
    "rgba8": (4, "RGB", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "BGR", cv2.COLOR_BGRA2BGR),
    "mono8": (1, "RGB", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, "RGB", cv2.COLOR_GRAY2RGB),
    "8UC3": (3, "BGR", None),
}

MAX_PIXELS = 8192 * 8192
"""Images larger than this are rejected: such a size is a corrupt header or a decompression bomb, not a camera."""

MARKER_DISTANCE_M = 1.0
"""Detection markers lie on the plane this far in front of the camera (z of its optical frame)."""

try:  # only on full ROS installs
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None


class ImageError(ValueError):
    """A message cannot be turned into an image. ``reason`` is a short counter key (encoding, size, data, decode);
    the message says what exactly is wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------------------------------------------- input
def image_to_numpy(msg: Image, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Image message -> (HxWx3 uint8 array, "RGB"|"BGR"). A view of ``msg.data`` where the encoding allows."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, max_pixels, "image")
    spec = _ENCODINGS.get(msg.encoding)
    if spec is None:
        return _via_cv_bridge(msg)
    channels, order, conversion = spec
    if step < width * channels:
        raise ImageError("data", f"step {step} is smaller than width*channels = {width * channels} for "
                                 f"{msg.encoding}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size < height * step:
        raise ImageError("data", f"data has {data.size} bytes, expected height*step = {height * step}")
    rows = data[: height * step].reshape(height, step)[:, : width * channels]
    image = rows.reshape(height, width, channels)
    if conversion is not None:
        image = cv2.cvtColor(image, conversion)
    return image, order


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageError("size", f"zero-size {what} {width}x{height}")
    if height * width > max_pixels:
        raise ImageError("size", f"{what} {width}x{height} exceeds the {max_pixels}-pixel limit")


def _via_cv_bridge(msg: Image) -> tuple[np.ndarray, str]:
    if CvBridge is None:
        supported = ", ".join(sorted(_ENCODINGS))
        raise ImageError("encoding", f"unsupported encoding {msg.encoding!r} (supported: {supported}; others need "
                                     f"cv_bridge)")
    try:
        return CvBridge().imgmsg_to_cv2(msg, desired_encoding="bgr8"), "BGR"
    except Exception as exc:  # cv_bridge raises its own error types
        raise ImageError("encoding", f"cv_bridge cannot convert encoding {msg.encoding!r}: {exc}") from exc


def _compressed_bytes(msg: CompressedImage, max_pixels: int) -> tuple[np.ndarray, str]:
    """The payload of a JPEG/PNG CompressedImage and its container ("JPEG"|"PNG"), after checking the image size
    its header declares (Pillow reads the header only)."""
    from PIL import JpegImagePlugin, PngImagePlugin

    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size == 0:
        raise ImageError("decode", f"empty compressed image (format {msg.format!r})")
    head = data[:8].tobytes()
    if head.startswith(b"\xff\xd8"):
        container, reader = "JPEG", JpegImagePlugin.JpegImageFile
    elif head == b"\x89PNG\r\n\x1a\n":
        container, reader = "PNG", PngImagePlugin.PngImageFile
    else:
        raise ImageError("encoding", f"compressed image is neither JPEG nor PNG (format {msg.format!r}, first bytes "
                                     f"{head[:4].hex()})")
    try:
        width, height = reader(io.BytesIO(data.tobytes())).size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("decode", f"cannot read the {container} header of a {data.size}-byte image: {exc}") from exc
    _check_size(width, height, max_pixels, f"{container} declared as")
    return data, container


def compressed_to_numpy(msg: CompressedImage, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """CompressedImage (JPEG/PNG) -> (HxWx3 uint8 BGR array, "BGR")."""
    data, container = _compressed_bytes(msg, max_pixels)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("decode", f"cannot decode {data.size}-byte {container} (format {msg.format!r})")
    return image, "BGR"


def is_jpeg(msg: CompressedImage) -> bool:
    """Whether a CompressedImage holds a JPEG (by its magic bytes)."""
    return bytes(msg.data[:2]) == b"\xff\xd8"


def jpeg_to_tensor(msg: CompressedImage, device, max_pixels: int = MAX_PIXELS):
    """JPEG CompressedImage -> (HxWx3 uint8 RGB torch tensor on ``device``, "RGB"), decoded by torchvision
    (nvJPEG on CUDA), so the frame never exists on the host."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data, container = _compressed_bytes(msg, max_pixels)
    try:
        image = decode_jpeg(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        raise ImageError("decode", f"cannot decode {data.size}-byte {container} (format {msg.format!r}): "
                                   f"{exc}") from exc
    return image.permute(1, 2, 0), "RGB"


def numpy_to_image(array_: np.ndarray, encoding: str, header, out: Optional[Image] = None) -> Image:
    """HxW or HxWxC uint8/float32 array -> Image with the given encoding and header (one memory copy)."""
    msg = out or Image()
    msg.header = header
    msg.height, msg.width = int(array_.shape[0]), int(array_.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    contiguous = np.ascontiguousarray(array_)
    msg.step = int(contiguous.strides[0])
    data = array.array("B")
    data.frombytes(contiguous.reshape(-1).view(np.uint8).data)  # no per-element conversion (stack.md §8.3)
    msg.data = data
    return msg


# ------------------------------------------------------------------------------------------------------ output
@dataclass
class Rendering:
    """How predictions are drawn: the class names, a 256x3 palette lookup table and the overlay opacity."""

    class_names: Sequence[str]
    palette_lut: np.ndarray
    overlay_alpha: float


@dataclass
class FrameResult:
    """One input frame and what the model made of it (class filter applied), at the source resolution."""

    header: Any
    image: Any  # HxWx3 uint8 numpy array, or a device tensor (JPEG decoded on the GPU)
    image_format: str
    label_map: Optional[np.ndarray]  # HxW uint8 trainIds, 255 = unlabeled
    confidence: Optional[np.ndarray]  # HxW float32 in [0, 1]
    boxes: np.ndarray  # Nx4 float32 xyxy source pixels
    class_ids: np.ndarray  # N int
    scores: np.ndarray  # N float32
    camera_info: Optional[CameraInfo] = None


def label_info_msg(class_names: Sequence[str], threshold: float, stamp) -> LabelInfo:
    """vision_msgs/LabelInfo: class id -> name, and the detection score threshold."""
    msg = LabelInfo(class_map=[VisionClass(class_id=i, class_name=n) for i, n in enumerate(class_names)],
                    threshold=float(threshold))
    msg.header.stamp = stamp
    return msg


def label_mask_msg(result: FrameResult, rendering: Rendering) -> Image:
    """mono8 class ids."""
    return numpy_to_image(result.label_map, "mono8", result.header)


def colored_mask_msg(result: FrameResult, rendering: Rendering) -> Image:
    """rgb8 palette colours."""
    return numpy_to_image(rendering.palette_lut[result.label_map], "rgb8", result.header)


def confidence_msg(result: FrameResult, rendering: Rendering) -> Image:
    """32FC1 winner scores."""
    return numpy_to_image(result.confidence, "32FC1", result.header)


def overlay_msg(result: FrameResult, rendering: Rendering) -> Image:
    """rgb8 input with the mask blended in and labelled boxes drawn."""
    image = result.image if isinstance(result.image, np.ndarray) else result.image.cpu().numpy()
    overlay = draw_overlay(image, result.image_format, result.label_map, rendering.palette_lut, result.boxes,
                           result.class_ids, result.scores, rendering.class_names, rendering.overlay_alpha)
    return numpy_to_image(overlay, "rgb8", result.header)


def detections_msg(result: FrameResult, rendering: Rendering) -> Detection2DArray:
    """vision_msgs/Detection2DArray: class id as a string, score, box centre and size in source pixels."""
    out = Detection2DArray(header=result.header)
    for (x1, y1, x2, y2), cid, score in zip(result.boxes.tolist(), result.class_ids.tolist(),
                                            result.scores.tolist()):
        det = Detection2D(header=result.header)
        det.bbox.center.position.x = (x1 + x2) / 2
        det.bbox.center.position.y = (y1 + y2) / 2
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        det.results = [ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=str(cid), score=score))]
        out.detections.append(det)
    return out


def detection_markers_msg(result: FrameResult, rendering: Rendering) -> MarkerArray:
    """visualization_msgs/MarkerArray for RViz: each box as a line strip and a text label, on the plane
    ``MARKER_DISTANCE_M`` in front of the camera in the image's frame_id. Pixels become rays through the camera's
    intrinsics (camera_info when the node uses it, else a 90-degree pinhole), so in RViz's Camera display the boxes
    lie over the objects. The first marker deletes the previous frame's boxes."""
    height, width = result.image.shape[:2]
    fx, fy, cx, cy = _intrinsics(result.camera_info, width, height)
    depth = MARKER_DISTANCE_M
    scale = depth / fx  # metres per pixel on the marker plane

    def point(u: float, v: float) -> Point:
        return Point(x=(u - cx) / fx * depth, y=(v - cy) / fy * depth, z=depth)

    out = MarkerArray(markers=[Marker(header=result.header, action=Marker.DELETEALL)])
    for i, ((x1, y1, x2, y2), cid, score) in enumerate(zip(result.boxes.tolist(), result.class_ids.tolist(),
                                                           result.scores.tolist())):
        r, g, b = (rendering.palette_lut[cid] / 255.0).tolist() if cid < 255 else (1.0, 1.0, 1.0)
        colour = ColorRGBA(r=r, g=g, b=b, a=1.0)
        box = Marker(header=result.header, ns="boxes", id=i, type=Marker.LINE_STRIP, action=Marker.ADD,
                     color=colour, lifetime=Duration())
        box.pose.orientation.w = 1.0
        box.scale.x = 2 * scale
        box.points = [point(x1, y1), point(x2, y1), point(x2, y2), point(x1, y2), point(x1, y1)]
        name = rendering.class_names[cid] if cid < len(rendering.class_names) else str(cid)
        label = Marker(header=result.header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                       color=colour, text=f"{name} {score:.2f}", lifetime=Duration())
        label.pose.position = point(x1, y1 - 8)
        label.pose.orientation.w = 1.0
        label.scale.z = 14 * scale
        out.markers += [box, label]
    return out


def _intrinsics(info: Optional[CameraInfo], width: int, height: int) -> tuple[float, float, float, float]:
    if info is not None and info.k[0] > 0 and info.k[4] > 0 and (info.width, info.height) == (width, height):
        return float(info.k[0]), float(info.k[4]), float(info.k[2]), float(info.k[5])
    return width / 2.0, width / 2.0, width / 2.0, height / 2.0
