"""rosbag2 recordings of one camera plus ground truth, read and written without ROS (rosbags, mcap).

``topics``: the layout (a camera's image, camera_info and ground-truth topics; ``FrameRecord``; the typestore).
``writer``: ``BagWriter``, mcap or sqlite3 with metadata v8 (Humble, Iron) or v9 (Jazzy and later).
``reader``: ``read_frames`` streams frames with the ground truth of their stamp; ``bag_info`` summarises a bag.
``recovery``: ``open_messages``, raw messages through rosbags, or by a sequential scan of storage a killed recorder
left truncated (a damaged bag yields every frame it can, then raises BagError).
"""
from .reader import bag_info, read_frames
from .recovery import open_messages
from .topics import DISTRO_VERSIONS, STORAGES, BagError, BagTopics, FrameRecord, make_typestore, topics_for
from .writer import BagWriter

__all__ = ["STORAGES", "DISTRO_VERSIONS", "BagError", "BagTopics", "topics_for", "make_typestore", "FrameRecord",
           "BagWriter", "read_frames", "bag_info", "open_messages"]
