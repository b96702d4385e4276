"""Reading one camera's frames, with the ground truth of the same stamp, from a bag (streamed, bounded memory)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import cv2
import numpy as np
# Not re-exported by rosbags.image's package (whose image_to_cvimage ignores ``step`` row padding).
from rosbags.image.image import convert_color

from .. import codec
from ..codec import DETECTIONS, IMAGE, CodecError
from .recovery import STORAGE_DAMAGE, open_messages, open_reader, read_metadata, storage_files
from .topics import STORAGE_SUFFIXES, BagError, FrameRecord, cameras, make_typestore, select_camera

# Ground truth is joined to its image by header stamp. A frame waits for missing ground truth at most this long in
# bag time, and at most this many newer frames may be held meanwhile: that bounds memory on any bag.
_REORDER_NS = 1_000_000_000
_REORDER_FRAMES = 8


def _rosbags_image(msg: Any) -> tuple[np.ndarray, str]:
    """The codec's fallback for encodings outside its common set (bayer, yuv422, 16-bit, ...): rosbags-image."""
    image = codec.image_array(msg)
    try:
        return convert_color(image, msg.encoding, "rgb8"), "RGB"
    except Exception as exc:  # rosbags-image raises its own error types
        raise CodecError("encoding", f"cannot convert encoding {msg.encoding!r}: {exc}") from exc


def _owned(array: np.ndarray) -> np.ndarray:
    """A writable array: views of the message buffer are read-only (and torch warns on those)."""
    return array if array.flags.writeable and array.flags.owndata else array.copy()


def _image_rgb(msg: Any) -> np.ndarray:
    """HxWx3 uint8 RGB of an Image or a CompressedImage (JPEG/PNG)."""
    image, order = codec.compressed_colour(msg) if hasattr(msg, "format") else codec.image_colour(msg, _rosbags_image)
    return _owned(cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if order == "BGR" else image)


# ----------------------------------------------------------------------------------------------------------------
# Storage access: rosbags' Reader, or a sequential scan of storage files it cannot open


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
        stamp = codec.stamp_ns(msg)
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
    label = boxes = class_ids = None
    try:
        image = _image_rgb(partial.image)
        if partial.label is not None:
            label = codec.label_array(partial.label)
        if partial.detections is not None:
            boxes, class_ids, _ = codec.detection_arrays(partial.detections)
    except CodecError as exc:
        raise BagError(f"unusable message at stamp {stamp}: {exc}") from exc
    if label is not None and label.shape != image.shape[:2]:
        raise BagError(f"label {label.shape} and image {image.shape[:2]} sizes differ at stamp {stamp}")
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
        camera = select_camera(source.topics, namespace, bag)
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
        except (BagError, *STORAGE_DAMAGE) as exc:
            error = exc
        # Frames held in the reorder window are good even when the bag breaks off after them.
        try:
            for frame in assembler.finish(complete_only=error is not None):
                frames += 1
                yield frame
        except (BagError, *STORAGE_DAMAGE) as exc:
            error = error or exc
        if error is not None:
            raise BagError(f"{bag}: damaged or truncated bag after {frames} frames of {camera.image}: {error}") \
                from error


def bag_info(path: str) -> dict:
    """Summary: storage, metadata version, time range, topics {name: {type, count}} and cameras {namespace: {image
    topic, compressed, frames, ground truth topics}}; BagError when rosbags cannot open the bag."""
    bag = Path(path)
    reader = open_reader(bag)
    try:
        topics = {name: {"type": info.msgtype, "count": info.msgcount} for name, info in reader.topics.items()}
        count = reader.message_count
        start = reader.start_time if count else None
        end = reader.end_time - 1 if count else None  # rosbags' end_time is one past the last message
    finally:
        reader.close()
    metadata = read_metadata(bag) if bag.is_dir() else {}
    files = storage_files(bag)
    storage = metadata.get("storage_identifier") or (STORAGE_SUFFIXES.get(files[0].suffix) if files else None)
    per_camera = {
        namespace: {"image": cam.image, "compressed": cam.compressed, "frames": topics[cam.image]["count"],
                    "ground_truth": [t for t in (cam.gt_label, cam.gt_detections) if t in topics]}
        for namespace, cam in cameras({name: t["type"] for name, t in topics.items()}).items()
    }
    return {"path": str(bag), "storage": storage, "version": metadata.get("version"), "message_count": count,
            "start_ns": start, "end_ns": end, "duration_s": (end - start) / 1e9 if count else 0.0,
            "topics": topics, "cameras": per_camera}
