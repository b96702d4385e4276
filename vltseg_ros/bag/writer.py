"""Writing one camera's frames and ground truth to a new rosbag2 bag (mcap or sqlite3, metadata v8 or v9)."""
from __future__ import annotations

from typing import Any, Optional

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from .topics import (
    CAMERA_INFO, COMPRESSED_IMAGE, DETECTIONS, DISTRO_VERSIONS, IMAGE, STORAGES, BagError, FrameRecord,
    make_typestore, topics_for,
)

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
        self._types = self._typestore.types
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
        T = self._types
        stamp = int(frame.stamp_ns)
        header = T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame.frame_id)
        if self.topics.compressed:
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
            if not ok:
                raise BagError(f"JPEG encoding failed for frame {frame.stamp_ns}")
            self._write(self.topics.image, COMPRESSED_IMAGE, frame.stamp_ns,
                        T[COMPRESSED_IMAGE](header=header, format=_JPEG_FORMAT, data=jpeg.reshape(-1)))
        else:
            self._write(self.topics.image, IMAGE, frame.stamp_ns, self._image(header, image, "rgb8"))
        self._write(self.topics.camera_info, CAMERA_INFO, frame.stamp_ns, self._camera_info(header, height, width))
        if frame.label is not None:
            self._write(self.topics.gt_label, IMAGE, frame.stamp_ns, self._image(header, frame.label, "mono8"))
        if frame.boxes is not None:
            self._write(self.topics.gt_detections, DETECTIONS, frame.stamp_ns, self._detections(header, frame))
        self.frames += 1

    def _write(self, topic: str, msgtype: str, stamp_ns: int, msg: Any) -> None:
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._connections[topic] = self._writer.add_connection(topic, msgtype,
                                                                                typestore=self._typestore)
        self._writer.write(connection, stamp_ns, self._typestore.serialize_cdr(msg, msgtype))

    def _image(self, header: Any, array: np.ndarray, encoding: str) -> Any:
        array = np.ascontiguousarray(array)
        return self._types[IMAGE](header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                                  is_bigendian=0, step=array.strides[0], data=array.reshape(-1))

    def _camera_info(self, header: Any, height: int, width: int) -> Any:
        """Nominal pinhole (focal length = width, principal point at the centre, no distortion)."""
        f, cx, cy = float(width), width / 2, height / 2
        T = self._types
        return T[CAMERA_INFO](
            header=header, height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5),
            k=np.array([f, 0, cx, 0, f, cy, 0, 0, 1], np.float64), r=np.eye(3).reshape(-1),
            p=np.array([f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0], np.float64), binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def _detections(self, header: Any, frame: FrameRecord) -> Any:
        boxes = np.asarray(frame.boxes, np.float64).reshape(-1, 4)
        class_ids = np.asarray(frame.box_class_ids, np.int64)
        T = self._types
        geometry = "geometry_msgs/msg/"
        identity = T[geometry + "PoseWithCovariance"](
            pose=T[geometry + "Pose"](position=T[geometry + "Point"](x=0.0, y=0.0, z=0.0),
                                      orientation=T[geometry + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36))
        detections = [
            T["vision_msgs/msg/Detection2D"](
                header=header,
                results=[T["vision_msgs/msg/ObjectHypothesisWithPose"](
                    hypothesis=T["vision_msgs/msg/ObjectHypothesis"](class_id=str(int(cid)), score=1.0),
                    pose=identity)],
                bbox=T["vision_msgs/msg/BoundingBox2D"](
                    center=T["vision_msgs/msg/Pose2D"](
                        position=T["vision_msgs/msg/Point2D"](x=(x1 + x2) / 2, y=(y1 + y2) / 2), theta=0.0),
                    size_x=x2 - x1, size_y=y2 - y1),
                id="")
            for (x1, y1, x2, y2), cid in zip(boxes.tolist(), class_ids.tolist())
        ]
        return T[DETECTIONS](header=header, detections=detections)


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
