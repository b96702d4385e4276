"""Writing one camera's frames and ground truth to a new rosbag2 bag (mcap or sqlite3, metadata v8 or v9)."""
from __future__ import annotations

from typing import Any, Optional

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from .. import codec
from ..codec import CAMERA_INFO, COMPRESSED_IMAGE, DETECTIONS, IMAGE
from .topics import DISTRO_VERSIONS, STORAGES, BagError, FrameRecord, make_typestore, topics_for

_STORAGE_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

# image_transport's compressed plugin names the source encoding and what the JPEG holds.
_JPEG_FORMAT = "rgb8; jpeg compressed bgr8"


class BagWriter:
    """Writes FrameRecords of one camera to a new bag; a context manager (the bag is complete once closed)."""

    def __init__(self, path: str, storage: str = "mcap", distro: str = "kilted", compressed: bool = False,
                 namespace: str = "/camera", jpeg_quality: int = 90):
        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; expected one of {STORAGES}")
        if distro not in DISTRO_VERSIONS:
            raise ValueError(f"unknown ROS distro {distro!r}; expected one of {sorted(DISTRO_VERSIONS)}")
        self.path = path
        self.topics = topics_for(namespace, compressed)
        self.frames = 0
        self._jpeg_quality = jpeg_quality
        self._typestore = make_typestore(distro)
        self._types = codec.message_types(self._typestore.types, lambda data: np.ascontiguousarray(data, np.uint8))
        self._writer: Optional[Writer] = None
        try:
            self._writer = Writer(path, version=DISTRO_VERSIONS[distro], storage_plugin=_STORAGE_PLUGINS[storage])
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"cannot create bag {path}: {exc}") from exc
        # Topics are added on first use, so a bag without ground truth has no empty ground-truth topics.
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        # Closed even after an error: the frames written so far stay a readable bag.
        self.close()

    def close(self) -> None:
        """Write the index and metadata.yaml; further writes are an error."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, frame: FrameRecord) -> None:
        """Write the frame's image, camera_info and (when present) ground-truth label and detections."""
        if self._writer is None:
            raise BagError(f"bag {self.path} is closed")
        _check(frame)  # before writing anything, so a bad frame leaves no partial frame behind
        image = frame.image
        height, width = image.shape[:2]
        types = self._types
        header = codec.header_msg(types, int(frame.stamp_ns), frame.frame_id)
        if self.topics.compressed:
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
            if not ok:
                raise BagError(f"JPEG encoding failed for frame {frame.stamp_ns}")
            self._write(self.topics.image, COMPRESSED_IMAGE, frame.stamp_ns,
                        codec.compressed_msg(types, jpeg, _JPEG_FORMAT, header))
        else:
            self._write(self.topics.image, IMAGE, frame.stamp_ns, codec.image_msg(types, image, "rgb8", header))
        self._write(self.topics.camera_info, CAMERA_INFO, frame.stamp_ns,
                    codec.pinhole_camera_info_msg(types, header, height, width))
        if frame.label is not None:
            self._write(self.topics.gt_label, IMAGE, frame.stamp_ns,
                        codec.image_msg(types, frame.label, "mono8", header))
        if frame.boxes is not None:
            self._write(self.topics.gt_detections, DETECTIONS, frame.stamp_ns,
                        codec.detections_msg(types, header, frame.boxes, frame.box_class_ids))
        self.frames += 1

    def _write(self, topic: str, msgtype: str, stamp_ns: int, msg: Any) -> None:
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._connections[topic] = self._writer.add_connection(topic, msgtype,
                                                                                typestore=self._typestore)
        self._writer.write(connection, stamp_ns, self._typestore.serialize_cdr(msg, msgtype))


def _check(frame: FrameRecord) -> None:
    """ValueError naming what in a frame BagWriter cannot write."""
    image = frame.image
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {getattr(image, 'shape', None)} "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    if frame.stamp_ns < 0:
        raise ValueError(f"stamp_ns must be >= 0, got {frame.stamp_ns}")
    label = frame.label
    if label is not None and (label.shape != image.shape[:2] or label.dtype != np.uint8):
        raise ValueError(f"label must be {image.shape[0]}x{image.shape[1]} uint8, got {label.shape} {label.dtype}")
    if frame.boxes is not None:
        count = len(np.asarray(frame.boxes).reshape(-1, 4))
        class_ids = 0 if frame.box_class_ids is None else len(frame.box_class_ids)
        if class_ids != count:
            raise ValueError(f"{count} boxes but {class_ids} box_class_ids")


# ----------------------------------------------------------------------------------------------------------------
# Message -> numpy
