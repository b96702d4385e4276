"""rosbag2 recordings of one camera plus ground truth, read and written without ROS (rosbags only).

A camera under namespace ``ns`` has these topics (``topics_for``):

    ns/image                 sensor_msgs/msg/Image rgb8            (or ns/image/compressed, CompressedImage JPEG)
    ns/camera_info           sensor_msgs/msg/CameraInfo            nominal pinhole, only written
    ns/gt/label_mask         sensor_msgs/msg/Image mono8           trainIds, 255 = ignore
    ns/gt/detections         vision_msgs/msg/Detection2DArray      class_id = str(trainId), score 1.0

Messages of one frame share ``header.stamp`` and the bag timestamp. Bags are mcap or sqlite3 with metadata
version 8 (Humble, Iron) or 9 (Jazzy and later; QoS profiles as a YAML list). Reading streams frame by frame.
A damaged bag (truncated by a killed recorder, corrupt bytes) yields every frame it can and then raises
BagError: storage rosbags cannot open (an mcap file without footer, a db3 file cut short) is read by a
sequential scan of its records or table rows.
"""
from __future__ import annotations

import functools
import logging
import os
import sqlite3
import struct
import sys
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import apsw
import cv2
import numpy as np
import yaml
from rosbags.image import ImageError
# Not re-exported by the package; the public image_to_cvimage ignores ``step`` row padding, so use its parts.
from rosbags.image.image import convert_color, to_cvtype
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.rosbag2.storage_mcap import decompress as decompress_mcap_chunk
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

logger = logging.getLogger(__name__)

STORAGES = ("mcap", "sqlite3")
DISTRO_VERSIONS = {"humble": 8, "iron": 8, "jazzy": 9, "kilted": 9, "rolling": 9}
"""rosbag2 metadata version each distribution reads (v9 changed the QoS serialisation, Jazzy onwards)."""

# Rolling tracks the newest release rosbags ships definitions for.
_STORES = {"humble": Stores.ROS2_HUMBLE, "iron": Stores.ROS2_IRON, "jazzy": Stores.ROS2_JAZZY,
           "kilted": Stores.ROS2_KILTED, "rolling": Stores.ROS2_LYRICAL}
_STORAGE_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DETECTIONS = "vision_msgs/msg/Detection2DArray"

# image_transport's compressed plugin names the source encoding and what the JPEG holds.
_JPEG_FORMAT = "rgb8; jpeg compressed bgr8"

# Ground truth is joined to its image by header stamp. A frame waits for missing ground truth at most this long in
# bag time, and at most this many newer frames may be held meanwhile: that bounds memory on any bag.
_REORDER_NS = 1_000_000_000
_REORDER_FRAMES = 8

# What rosbags, apsw, sqlite3, the CDR decoder and the image decoders raise on damaged data (a short read surfaces
# as TypeError from ord(b"") or as struct.error; a garbled length as ValueError or IndexError).
_DAMAGE = (ReaderError, apsw.Error, sqlite3.Error, OSError, EOFError, struct.error, ValueError, IndexError, TypeError,
           KeyError, ImageError)

_MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_FOOTER, _MCAP_SCHEMA, _MCAP_CHANNEL, _MCAP_MESSAGE, _MCAP_CHUNK, _MCAP_DATA_END = 2, 3, 4, 5, 6, 15  # opcodes


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
    return [Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "vision_msgs" / "msg",
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


def _stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _image_array(msg: Any) -> np.ndarray:
    """HxW or HxWxC array of a raw Image, honouring ``step`` row padding and byte order (a view of msg.data)."""
    _, _, typestr, channels = to_cvtype(msg.encoding)
    dtype = np.dtype(typestr)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes or len(msg.data) < height * step:
        raise BagError(f"malformed {msg.encoding} image {width}x{height}: step {step}, {len(msg.data)} bytes")
    rows = np.frombuffer(msg.data, np.uint8, count=height * step).reshape(height, step)[:, :row_bytes]
    array = rows.view(dtype).reshape((height, width) if channels == 1 else (height, width, channels))
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        array = array.byteswap()
    return array


def _owned(array: np.ndarray) -> np.ndarray:
    """A writable array: views of the message buffer are read-only (and torch warns on those)."""
    return array if array.flags.writeable and array.flags.owndata else array.copy()


def _image_rgb(msg: Any) -> np.ndarray:
    """HxWx3 uint8 RGB of an Image (any encoding rosbags-image converts) or CompressedImage (JPEG/PNG)."""
    if hasattr(msg, "format"):
        bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f"cannot decode {len(msg.data)}-byte compressed image (format {msg.format!r})")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _owned(convert_color(_image_array(msg), msg.encoding, "rgb8"))


def _label_array(msg: Any) -> np.ndarray:
    """HxW uint8 trainIds of a mono8 label Image."""
    if msg.encoding not in ("mono8", "8UC1"):
        raise BagError(f"ground-truth label must be mono8, got {msg.encoding!r}")
    return _owned(_image_array(msg))


def _detection_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Nx4 float32 xyxy, N int64 trainIds) of a ground-truth Detection2DArray (first hypothesis per box)."""
    boxes, class_ids = [], []
    for det in msg.detections:
        if not det.results:
            raise BagError("ground-truth detection without a class hypothesis")
        class_id = det.results[0].hypothesis.class_id
        try:
            class_ids.append(int(class_id))
        except ValueError:
            raise BagError(f"ground-truth class_id must be a trainId, got {class_id!r}") from None
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        half_w, half_h = det.bbox.size_x / 2, det.bbox.size_y / 2
        boxes.append((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(class_ids, np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Storage access: rosbags' Reader, or a sequential scan of storage files it cannot open


def _metadata(path: Path) -> dict:
    """The bag's metadata.yaml contents ({} for a bare storage file or unreadable metadata)."""
    try:
        with open(path / "metadata.yaml", encoding="utf-8") as f:
            return (yaml.safe_load(f) or {}).get("rosbag2_bagfile_information") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def _storage_files(path: Path) -> list[Path]:
    """The storage file itself, or those in a bag directory."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES)


def _open_reader(path: Path) -> Reader:
    """An open rosbags Reader; a directory whose metadata.yaml is missing or broken (a killed recorder writes
    none) is read through its single storage file."""
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    candidates = [path]
    if path.is_dir():
        files = _storage_files(path)
        candidates += files if len(files) == 1 else []
    errors: list[str] = []
    for candidate in candidates:
        try:
            reader = Reader(candidate)
            reader.open()
        except _DAMAGE as exc:
            message = str(exc).rstrip(".")
            errors += [message] if message not in errors else []
            continue
        if candidate is not path:
            logger.warning("%s: %s; reading %s directly", path, errors[0], candidate.name)
        return reader
    raise BagError(f"cannot open bag {path}: {'; '.join(errors)}")


class _ReaderSource:
    """Messages of an intact bag in bag-timestamp order, through rosbags."""

    def __init__(self, reader: Reader):
        self.reader = reader
        self.topics = {name: info.msgtype for name, info in reader.topics.items()}

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, bag timestamp ns, CDR bytes) of ``topics``."""
        connections = [c for c in self.reader.connections if c.topic in topics]
        if connections:  # rosbags reads every topic when given none
            for connection, timestamp, raw in self.reader.messages(connections=connections):
                yield connection.topic, timestamp, raw

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()


class _McapScanSource:
    """Messages of mcap files whose footer or index is unreadable, in file order, by walking the records from the
    start; the walk ends with BagError at the damage (or after the data, naming why the index was unusable)."""

    def __init__(self, files: list[Path], reason: str):
        self.files = files
        self.reason = reason
        self.topics: dict[str, str] = {}
        # A pre-pass collects the channels (rosbags writes them lazily, inside chunks) so the camera is known up front.
        try:
            for _ in self._walk(self.topics.__setitem__):
                pass
        except (BagError, *_DAMAGE) as exc:
            if not self.topics:
                raise BagError(f"{reason}; no readable channel records: {exc}") from exc
            # otherwise the message pass meets the same damage and reports it

    def _walk(self, on_channel) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time, data) of every message; ``on_channel(topic, schema name)`` per channel."""
        for path in self.files:
            with open(path, "rb") as f:
                if f.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
                    raise BagError(f"{path.name} is not an MCAP file")
                schemas: dict[int, str] = {}
                channels: dict[int, str] = {}
                for op, body in _mcap_records(f, path.name):
                    if op in (_MCAP_DATA_END, _MCAP_FOOTER):  # the summary after the data repeats, never adds
                        break
                    records = (_mcap_records(_chunk_records(body), path.name) if op == _MCAP_CHUNK
                               else [(op, body)])
                    for kind, record in records:
                        if kind == _MCAP_SCHEMA:
                            schemas[struct.unpack_from("<H", record)[0]] = _mcap_string(record, 2)[0]
                        elif kind == _MCAP_CHANNEL:
                            channel_id, schema_id = struct.unpack_from("<HH", record)
                            channels[channel_id] = _mcap_string(record, 4)[0]
                            on_channel(channels[channel_id], schemas.get(schema_id, ""))
                        elif kind == _MCAP_MESSAGE:
                            channel_id, _, log_time, _ = struct.unpack_from("<HIQQ", record)
                            yield channels.get(channel_id, ""), log_time, record[22:]
                else:
                    raise BagError(f"{path.name} ends without an MCAP footer (truncated)")

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, CDR bytes) of ``topics``; always ends with BagError, as the file is damaged."""
        for topic, timestamp, raw in self._walk(lambda *_: None):
            if topic in topics:
                yield topic, timestamp, raw
        raise BagError(f"index unreadable ({self.reason}); all records were recovered by a sequential scan")

    def close(self) -> None:
        """Nothing to release: files are closed as each walk ends."""


class _Sqlite3ScanSource:
    """Messages of db3 files that rosbags cannot open, in insertion order, through sqlite3 with its file-size check
    relaxed; the scan ends with BagError at the damage (or after the data, naming why rosbags failed)."""

    def __init__(self, files: list[Path], reason: str):
        self.files = files
        self.reason = reason
        self.topics: dict[str, str] = {}
        for path in files:
            with closing(self._connect(path)) as db:
                try:
                    self.topics.update(db.execute("SELECT name, type FROM topics").fetchall())
                except sqlite3.DatabaseError as exc:
                    raise BagError(f"{reason}; topics table of {path.name} unreadable: {exc}") from exc

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        # SQLite refuses a file shorter than the page count in its header unless the schema is writable (a flag
        # that changes nothing on a read-only connection); then the pages that are there can be read.
        db.execute("PRAGMA writable_schema=ON")
        return db

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, bag timestamp ns, CDR bytes) of ``topics``; always ends with BagError, as the file is damaged."""
        for path in self.files:
            with closing(self._connect(path)) as db:
                try:
                    names = {i: name for i, name in db.execute("SELECT id, name FROM topics") if name in topics}
                    for topic_id, timestamp, data in db.execute(
                            "SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                        if topic_id in names:
                            yield names[topic_id], timestamp, data
                except sqlite3.DatabaseError as exc:
                    raise BagError(f"{path.name}: {exc}") from exc
        raise BagError(f"{self.reason}; all rows were recovered by a table scan")

    def close(self) -> None:
        """Nothing to release: connections are closed as each scan ends."""


class _ChunkStream:
    """File-like view of a decompressed chunk's records."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes."""
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out


def _chunk_records(body: bytes) -> _ChunkStream:
    """The decompressed (and, where a CRC is stored, checked) records of an MCAP chunk record."""
    start, end, size, crc = struct.unpack_from("<QQQI", body)
    compression, offset = _mcap_string(body, 28)
    (length,) = struct.unpack_from("<Q", body, offset)
    data = body[offset + 8:offset + 8 + length]
    if len(data) != length:
        raise BagError("MCAP chunk record is shorter than its declared data")
    return _ChunkStream(decompress_mcap_chunk(data, compression, size, crc))


def _mcap_records(stream, name: str) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of consecutive MCAP records until the stream ends; BagError where one is cut short."""
    while header := stream.read(9):
        if len(header) < 9:
            raise BagError(f"{name}: record header cut short (truncated)")
        op, length = struct.unpack("<BQ", header)
        body = stream.read(length)
        if len(body) < length:
            raise BagError(f"{name}: record of {length} bytes cut short after {len(body)} (truncated)")
        yield op, body


def _mcap_string(body: bytes, offset: int) -> tuple[str, int]:
    """A length-prefixed UTF-8 string at ``offset`` and the offset after it."""
    (length,) = struct.unpack_from("<I", body, offset)
    return body[offset + 4:offset + 4 + length].decode("utf-8"), offset + 4 + length


_RECOVERY = {".mcap": _McapScanSource, ".db3": _Sqlite3ScanSource}


@contextmanager
def open_messages(path: Path) -> Iterator[Any]:
    """Context manager over a bag's raw messages (``.topics``; ``.messages(topics)`` yields (topic, bag time ns,
    CDR bytes) and ends with BagError on damage): rosbags' Reader, or a recovery scan of storage files that rosbags
    cannot open (a killed recorder's truncated .mcap/.db3)."""
    try:
        source: Any = _ReaderSource(_open_reader(path))
    except BagError as exc:
        suffixes = {f.suffix for f in _storage_files(path)} if path.exists() else set()
        if len(suffixes) != 1 or next(iter(suffixes)) not in _RECOVERY:
            raise
        logger.warning("%s; recovering what is readable", exc)
        source = _RECOVERY[suffixes.pop()](_storage_files(path), str(exc))
    try:
        yield source
    finally:
        source.close()


def _cameras(topics: dict[str, str]) -> dict[str, BagTopics]:
    """Camera namespace -> topics, for every ns/image (Image) or ns/image/compressed (CompressedImage) topic; a
    camera recorded both ways is read raw."""
    cameras: dict[str, BagTopics] = {}
    for name, msgtype in sorted(topics.items()):
        for suffix, wanted, compressed in (("/image/compressed", COMPRESSED_IMAGE, True), ("/image", IMAGE, False)):
            if name.endswith(suffix) and msgtype == wanted:
                namespace = name[: -len(suffix)] or "/"
                if namespace not in cameras or not compressed:
                    cameras[namespace] = topics_for(namespace, compressed)
    return cameras


def _camera(topics: dict[str, str], namespace: Optional[str], path: Path) -> BagTopics:
    """The camera to read: ``namespace``'s, or the bag's only one."""
    cameras = _cameras(topics)
    if namespace is None:
        if len(cameras) != 1:
            raise BagError(f"{path}: {'no camera' if not cameras else 'several cameras: ' + ', '.join(cameras)} "
                           f"(expected <namespace>/image or <namespace>/image/compressed); pick one with namespace")
        return next(iter(cameras.values()))
    key = "/" + namespace.strip("/") if namespace.strip("/") else "/"
    if key not in cameras:
        raise BagError(f"{path}: no {topics_for(key).image} or {topics_for(key, True).image} topic; cameras in "
                       f"the bag: {', '.join(cameras) or 'none'}")
    return cameras[key]


# ----------------------------------------------------------------------------------------------------------------
# Reading frames


@dataclass
class _Partial:
    """Messages of one stamp seen so far (deserialised; converted to arrays only when the frame is yielded)."""

    first_seen: int  # bag time (ns) of its first message
    image: Any = None
    label: Any = None
    detections: Any = None


class _FrameAssembler:
    """Joins image and ground-truth messages by header stamp and yields frames in stamp order, holding at most
    ``_REORDER_FRAMES`` stamps for ``_REORDER_NS`` of bag time while ground truth is missing."""

    def __init__(self, gt_kinds: frozenset[str]):
        self.gt_kinds = gt_kinds
        self.pending: dict[int, _Partial] = {}

    def add(self, kind: str, msg: Any, bag_time: int) -> Iterator[FrameRecord]:
        """Take one message ("image", "label" or "detections"); yields the frames it completes or pushes out."""
        stamp = _stamp_ns(msg)
        if getattr(self.pending.get(stamp), kind, None) is not None:
            # A second message of this kind for the stamp: the first frame is as complete as it gets.
            yield from self._pop_while(lambda s, _: s <= stamp)
        partial = self.pending.setdefault(stamp, _Partial(first_seen=bag_time))
        setattr(partial, kind, msg)
        yield from self._pop_while(lambda _, p: self._complete(p) or bag_time - p.first_seen > _REORDER_NS
                                   or len(self.pending) > _REORDER_FRAMES)

    def finish(self, complete_only: bool = False) -> Iterator[FrameRecord]:
        """Yield every frame still held; ``complete_only`` (after damage) drops frames missing ground truth, which
        may have been lost to the damage."""
        for stamp in sorted(self.pending):
            partial = self.pending.pop(stamp)
            if partial.image is not None and (not complete_only or self._complete(partial)):
                yield _frame(stamp, partial)

    def _complete(self, partial: _Partial) -> bool:
        return partial.image is not None and all(getattr(partial, k) is not None for k in self.gt_kinds)

    def _pop_while(self, release) -> Iterator[FrameRecord]:
        """Pop the oldest stamps while ``release(stamp, partial)``; ground truth without an image is dropped."""
        while self.pending:
            stamp = min(self.pending)
            partial = self.pending[stamp]
            if not release(stamp, partial):
                return
            del self.pending[stamp]
            if partial.image is not None:
                yield _frame(stamp, partial)


def _frame(stamp: int, partial: _Partial) -> FrameRecord:
    """Convert one stamp's messages to a FrameRecord."""
    image = _image_rgb(partial.image)
    label = boxes = class_ids = None
    if partial.label is not None:
        label = _label_array(partial.label)
        if label.shape != image.shape[:2]:
            raise BagError(f"label {label.shape} and image {image.shape[:2]} sizes differ at stamp {stamp}")
    if partial.detections is not None:
        boxes, class_ids = _detection_arrays(partial.detections)
    return FrameRecord(stamp_ns=stamp, frame_id=partial.image.header.frame_id, image=image, label=label,
                       boxes=boxes, box_class_ids=class_ids)


def read_frames(path: str, namespace: Optional[str] = None) -> Iterator[FrameRecord]:
    """Stream frames of one camera in stamp order (bounded memory: don't load the whole bag), attaching ground truth
    from the gt topics with the same header stamp (None when absent). namespace None = the only camera in the bag
    (BagError if several). Works for mcap and sqlite3, v8 and v9. Corrupt/truncated storage raises BagError
    mid-iteration after yielding what was readable."""
    bag = Path(path)
    typestore = make_typestore()  # sensor_msgs and vision_msgs 4.x have one wire layout on every supported distro
    with open_messages(bag) as source:
        camera = _camera(source.topics, namespace, bag)
        expected = {camera.image: (source.topics[camera.image], "image"), camera.gt_label: (IMAGE, "label"),
                    camera.gt_detections: (DETECTIONS, "detections")}
        kinds = {}
        for topic, (msgtype, kind) in expected.items():
            if topic in source.topics:
                if source.topics[topic] != msgtype:
                    raise BagError(f"{bag}: topic {topic} has type {source.topics[topic]}, expected {msgtype}")
                kinds[topic] = kind
        assembler = _FrameAssembler(frozenset(k for k in kinds.values() if k != "image"))
        frames = 0
        error: Optional[BaseException] = None
        try:
            for topic, bag_time, raw in source.messages(set(kinds)):
                for frame in assembler.add(kinds[topic], typestore.deserialize_cdr(raw, source.topics[topic]),
                                           bag_time):
                    frames += 1
                    yield frame
        except (BagError, *_DAMAGE) as exc:
            error = exc
        # Frames held in the reorder window are good even when the bag breaks off after them.
        try:
            for frame in assembler.finish(complete_only=error is not None):
                frames += 1
                yield frame
        except (BagError, *_DAMAGE) as exc:
            error = error or exc
        if error is not None:
            raise BagError(f"{bag}: damaged or truncated bag after {frames} frames of {camera.image}: {error}") \
                from error


def bag_info(path: str) -> dict:
    """Summary: storage, metadata version, time range, topics {name: {type, count}} and cameras {namespace: {image
    topic, compressed, frames, ground truth topics}}; BagError when rosbags cannot open the bag."""
    bag = Path(path)
    reader = _open_reader(bag)
    try:
        topics = {name: {"type": info.msgtype, "count": info.msgcount} for name, info in reader.topics.items()}
        count = reader.message_count
        start = reader.start_time if count else None
        end = reader.end_time - 1 if count else None  # rosbags' end_time is one past the last message
    finally:
        reader.close()
    metadata = _metadata(bag) if bag.is_dir() else {}
    files = _storage_files(bag)
    storage = metadata.get("storage_identifier") or (_STORAGE_SUFFIXES.get(files[0].suffix) if files else None)
    cameras = {
        namespace: {"image": cam.image, "compressed": cam.compressed, "frames": topics[cam.image]["count"],
                    "ground_truth": [t for t in (cam.gt_label, cam.gt_detections) if t in topics]}
        for namespace, cam in _cameras({name: t["type"] for name, t in topics.items()}).items()
    }
    return {"path": str(bag), "storage": storage, "version": metadata.get("version"), "message_count": count,
            "start_ns": start, "end_ns": end, "duration_s": (end - start) / 1e9 if count else 0.0,
            "topics": topics, "cameras": cameras}


__all__ = ["STORAGES", "DISTRO_VERSIONS", "BagError", "BagTopics", "topics_for", "make_typestore", "FrameRecord",
           "BagWriter", "read_frames", "bag_info"]
