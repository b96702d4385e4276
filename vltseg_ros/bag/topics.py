"""The bag layout: one camera's topics and message types, the frame record they carry, the typestore.

A camera under namespace ``ns`` has these topics (``topics_for``):

    ns/image                 sensor_msgs/msg/Image rgb8            (or ns/image/compressed, CompressedImage JPEG)
    ns/camera_info           sensor_msgs/msg/CameraInfo            nominal pinhole, only written
    ns/gt/label_mask         sensor_msgs/msg/Image mono8           trainIds, 255 = ignore
    ns/gt/detections         vision_msgs/msg/Detection2DArray      class_id = str(trainId), score 1.0

Messages of one frame share ``header.stamp`` and the bag timestamp.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from ..codec import COMPRESSED_IMAGE, IMAGE

STORAGES = ("mcap", "sqlite3")
DISTRO_VERSIONS = {"humble": 8, "iron": 8, "jazzy": 9, "kilted": 9, "rolling": 9}
"""rosbag2 metadata version each distribution reads (v9 changed the QoS serialisation, Jazzy onwards)."""

# Rolling tracks the newest release rosbags ships definitions for.
_STORES = {"humble": Stores.ROS2_HUMBLE, "iron": Stores.ROS2_IRON, "jazzy": Stores.ROS2_JAZZY,
           "kilted": Stores.ROS2_KILTED, "rolling": Stores.ROS2_LYRICAL}
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}



class BagError(RuntimeError):
    """Missing/corrupt/truncated bag or missing topic; message names the problem (and for a
    truncated bag, how many frames were read before it)."""


@dataclass(frozen=True)
class BagTopics:
    """Topic names of one camera and its ground truth."""

    image: str  # "/camera/image" (sensor_msgs/msg/Image) or "/camera/image/compressed" (CompressedImage)
    compressed: bool
    camera_info: str  # "/camera/camera_info"
    gt_label: str  # "/camera/gt/label_mask"  sensor_msgs/Image mono8 trainIds (255 = ignore)
    gt_detections: str  # "/camera/gt/detections"  vision_msgs/msg/Detection2DArray, class_id = str(trainId)


def topics_for(namespace: str = "/camera", compressed: bool = False) -> BagTopics:
    """Topics of the camera under ``namespace`` ("" or "/" = the root namespace)."""
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return BagTopics(image=f"{prefix}/image/compressed" if compressed else f"{prefix}/image", compressed=compressed,
                     camera_info=f"{prefix}/camera_info", gt_label=f"{prefix}/gt/label_mask",
                     gt_detections=f"{prefix}/gt/detections")


def _vision_msgs_dirs() -> list[Path]:
    """Where vision_msgs .msg files may be: this repository's copy, the venv, then any ament prefix."""
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "vision_msgs" / "msg",
            *(Path(p) / "share" / "vision_msgs" / "msg" for p in prefixes)]


@functools.lru_cache(maxsize=None)
def make_typestore(distro: str = "kilted") -> Typestore:
    """rosbags typestore of ``distro`` plus the vision_msgs types (rosbags ships none), cached per distro."""
    if distro not in _STORES:
        raise ValueError(f"unknown ROS distro {distro!r}; expected one of {sorted(_STORES)}")
    directory = next((d for d in _vision_msgs_dirs() if (d / "Detection2DArray.msg").is_file()), None)
    if directory is None:
        raise BagError("vision_msgs message definitions not found; looked in "
                       + ", ".join(str(d) for d in _vision_msgs_dirs()))
    typestore = get_typestore(_STORES[distro])
    types: dict = {}
    for path in sorted(directory.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"vision_msgs/msg/{path.stem}"))
    typestore.register(types)
    return typestore


@dataclass
class FrameRecord:
    """One camera frame and its optional ground truth (arrays are owned and writable)."""

    stamp_ns: int
    frame_id: str
    image: np.ndarray  # HxWx3 uint8 RGB
    label: Optional[np.ndarray] = None  # HxW uint8 trainIds
    boxes: Optional[np.ndarray] = None  # Nx4 float32 xyxy pixels
    box_class_ids: Optional[np.ndarray] = None  # N int64 trainIds


def cameras(topics: dict[str, str]) -> dict[str, BagTopics]:
    """Camera namespace -> topics, for every ns/image (Image) or ns/image/compressed (CompressedImage) topic; a
    camera recorded both ways is read raw."""
    found: dict[str, BagTopics] = {}
    for name, msgtype in sorted(topics.items()):
        for suffix, wanted, compressed in (("/image/compressed", COMPRESSED_IMAGE, True), ("/image", IMAGE, False)):
            if name.endswith(suffix) and msgtype == wanted:
                namespace = name[: -len(suffix)] or "/"
                if namespace not in found or not compressed:
                    found[namespace] = topics_for(namespace, compressed)
    return found


def select_camera(topics: dict[str, str], namespace: Optional[str], path: Path) -> BagTopics:
    """The camera to read: ``namespace``'s, or the bag's only one."""
    found = cameras(topics)
    if namespace is None:
        if len(found) != 1:
            raise BagError(f"{path}: {'no camera' if not found else 'several cameras: ' + ', '.join(found)} "
                           f"(expected <namespace>/image or <namespace>/image/compressed); pick one with namespace")
        return next(iter(found.values()))
    key = "/" + namespace.strip("/") if namespace.strip("/") else "/"
    if key not in found:
        raise BagError(f"{path}: no {topics_for(key).image} or {topics_for(key, True).image} topic; cameras in "
                       f"the bag: {', '.join(found) or 'none'}")
    return found[key]
