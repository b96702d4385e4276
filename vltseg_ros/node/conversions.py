"""The node's side of the message codec: its input decoding (``vltseg_ros.codec``, with cv_bridge for encodings
outside the common set where the ROS install provides it; the PyPI ``cv-bridge`` is broken with OpenCV 5 / numpy 2
and is never used), and its output messages.

Outputs are built from one ``FrameResult`` (a frame and its prediction, at the source resolution) by the
``*_msg`` functions that ``outputs.OUTPUTS`` names, through ``vltseg_ros.codec`` with the rclpy message classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA
from vision_msgs.msg import Classification, Detection2DArray, LabelInfo, ObjectHypothesis
from visualization_msgs.msg import Marker, MarkerArray

from .. import codec
from ..codec import CodecError
from ..visualize import draw_overlay
from .msg_types import RCLPY_TYPES

MARKER_DISTANCE_M = 1.0
"""Detection markers lie on the plane this far in front of the camera (z of its optical frame)."""

try:  # only on full ROS installs
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None


# ------------------------------------------------------------------------------------------------------- input
def _via_cv_bridge(msg: Image) -> tuple[np.ndarray, str]:
    try:
        return CvBridge().imgmsg_to_cv2(msg, desired_encoding="bgr8"), "BGR"
    except Exception as exc:  # cv_bridge raises its own error types
        raise CodecError("encoding", f"cv_bridge cannot convert encoding {msg.encoding!r}: {exc}") from exc


def image_to_numpy(msg: Image) -> tuple[np.ndarray, str]:
    """Image -> (HxWx3 uint8 array, "RGB"|"BGR"): the codec's common encodings, others through cv_bridge where
    the ROS install has it (else CodecError "encoding")."""
    return codec.image_colour(msg, _via_cv_bridge if CvBridge is not None else None)


def numpy_to_image(image: np.ndarray, encoding: str, header) -> Image:
    """HxW or HxWxC array -> rclpy Image (one memory copy)."""
    return codec.image_msg(RCLPY_TYPES, image, encoding, header)


# ------------------------------------------------------------------------------------------------------ output
@dataclass
class Rendering:
    """How predictions are drawn: the class names, a 256x3 palette lookup table and the overlay opacity."""

    class_names: Sequence[str]
    palette_lut: np.ndarray
    overlay_alpha: float
    # The domain-shift monitor: the default frame score's name and its calibrated thresholds (None = uncalibrated).
    monitor_score: str = ""
    monitor_thresholds: Optional[dict[str, float]] = None


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
    frame_scores: Optional[dict[str, float]] = None  # the monitor's, by name; empty when uncalibrated


def label_info_msg(class_names: Sequence[str], threshold: float, header) -> LabelInfo:
    """vision_msgs/LabelInfo: class id -> name, and the detection score threshold."""
    return codec.label_info_msg(RCLPY_TYPES, header, class_names, threshold)


def label_mask_msg(result: FrameResult, rendering: Rendering) -> Image:
    """mono8 class ids."""
    return numpy_to_image(result.label_map, "mono8", result.header)


def colored_mask_msg(result: FrameResult, rendering: Rendering) -> Image:
    """rgb8 palette colours."""
    return numpy_to_image(rendering.palette_lut[result.label_map], "rgb8", result.header)


def confidence_msg(result: FrameResult, rendering: Rendering) -> Image:
    """32FC1 winner scores."""
    return numpy_to_image(result.confidence, "32FC1", result.header)


def domain_decision(score: Optional[float], thresholds: Optional[dict[str, float]]) -> str:
    """``in_domain``, ``out_of_domain`` (below the warning threshold), ``far_out_of_domain`` (below the error
    threshold) or ``uncalibrated``: the monitor's judgement of one frame."""
    if thresholds is None or score is None:
        return "uncalibrated"
    if score < thresholds["error"]:
        return "far_out_of_domain"
    return "out_of_domain" if score < thresholds["warn"] else "in_domain"


def frame_score_msg(result: FrameResult, rendering: Rendering) -> Classification:
    """vision_msgs/Classification with the input's header: ``results[0]`` is the monitor's decision
    (``domain_decision``) with the default frame score (NaN when uncalibrated); then one hypothesis per frame score,
    ``class_id`` = its name (the default first, then the model-free baseline)."""
    scores = result.frame_scores or {}
    default = scores.get(rendering.monitor_score)
    decision = domain_decision(default, rendering.monitor_thresholds)
    results = [ObjectHypothesis(class_id=decision, score=float("nan") if default is None else float(default))]
    ordered = sorted(scores.items(), key=lambda kv: kv[0] != rendering.monitor_score)
    results += [ObjectHypothesis(class_id=name, score=float(value)) for name, value in ordered]
    return Classification(header=result.header, results=results)


def overlay_msg(result: FrameResult, rendering: Rendering) -> Image:
    """rgb8 input with the mask blended in and labelled boxes drawn."""
    image = result.image if isinstance(result.image, np.ndarray) else result.image.cpu().numpy()
    overlay = draw_overlay(image, result.image_format, result.label_map, rendering.palette_lut, result.boxes,
                           result.class_ids, result.scores, rendering.class_names, rendering.overlay_alpha)
    return numpy_to_image(overlay, "rgb8", result.header)


def detections_msg(result: FrameResult, rendering: Rendering) -> Detection2DArray:
    """vision_msgs/Detection2DArray: class id as a string, score, box centre and size in source pixels."""
    return codec.detections_msg(RCLPY_TYPES, result.header, result.boxes, result.class_ids, result.scores)


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
