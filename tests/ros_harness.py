"""Real rclpy over Fast DDS for tests: an isolated context, an executor thread, and a probe node that publishes
frames and records what the node under test publishes. Nothing here mocks ROS."""
from __future__ import annotations

import array
import os
import threading
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

BEST_EFFORT = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

_next_domain = [int(os.environ.get("VLTSEG_TEST_DOMAIN_BASE", "60")) + os.getpid() % 40]


def fresh_domain() -> int:
    """A DDS domain id not used by other tests in this process (keeps tests from hearing each other)."""
    _next_domain[0] += 1
    return _next_domain[0] % 200 + 20


class RosHarness:
    """An rclpy context with a spinning multi-threaded executor and a probe node."""

    def __init__(self, domain_id: Optional[int] = None):
        self.domain_id = fresh_domain() if domain_id is None else domain_id
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        # The probe spins alone on one thread: a multi-threaded executor may run two callbacks of one subscription
        # out of order (ros2/rclcpp#702), and the probe records messages in the order they arrive.
        self.probe_executor = SingleThreadedExecutor(context=self.context)
        self.probe = rclpy.create_node("probe", context=self.context)
        self.probe_executor.add_node(self.probe)
        self.received: dict[str, list] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._probe_thread = threading.Thread(target=self.probe_executor.spin, daemon=True)
        self._probe_thread.start()

    def add_node(self, node) -> None:
        """Spin ``node`` in the harness executor."""
        self.executor.add_node(node)

    def record(self, msg_type, topic: str, qos: QoSProfile = RELIABLE) -> list:
        """Subscribe and collect every message on ``topic``; returns the live list."""
        bucket = self.received.setdefault(topic, [])

        def store(msg, bucket=bucket):
            with self._lock:
                bucket.append(msg)

        self.probe.create_subscription(msg_type, topic, store, qos)
        return bucket

    def publisher(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        """A probe publisher."""
        return self.probe.create_publisher(msg_type, topic, qos)

    @staticmethod
    def wait_for(condition: Callable[[], Any], timeout: float = 20.0, poll: float = 0.02) -> bool:
        """Poll ``condition`` until true or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(poll)
        return bool(condition())

    def publish_until(self, pub, make_msg: Callable[[int], Any], done: Callable[[], Any],
                      timeout: float = 20.0) -> bool:
        """Publish ``make_msg(0)``, ``make_msg(1)``, ... until ``done()`` (best-effort input may drop early ones,
        and a lazy node subscribes only once it sees a subscriber to its outputs)."""
        deadline = time.monotonic() + timeout
        i = 0
        while time.monotonic() < deadline and not done():
            pub.publish(make_msg(i))
            i += 1
            self.wait_for(done, timeout=0.3)
        return bool(done())

    def wait_matched(self, pub, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``pub`` has ``count`` subscribers (DDS discovery), else fail."""
        assert self.wait_for(lambda: pub.get_subscription_count() >= count, timeout), "no subscriber discovered"

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self.executor.shutdown()
        self.probe_executor.shutdown()
        self.probe.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)
        self._probe_thread.join(timeout=5)


def image_msg(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "camera_optical",
              row_padding: int = 0) -> Image:
    """An Image message from an array, with optional row padding (step > width * channels)."""
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = image.shape[:2]
    msg.encoding = encoding
    row = image.reshape(image.shape[0], -1)
    if row_padding:
        row = np.concatenate([row, np.full((row.shape[0], row_padding), 7, np.uint8)], axis=1)
    row = np.ascontiguousarray(row)
    msg.step = row.shape[1]
    data = array.array("B")
    data.frombytes(row.tobytes())
    msg.data = data
    return msg


def compressed_msg(image_bgr: np.ndarray, fmt: str, stamp_ns: int, frame_id: str = "camera_optical") -> CompressedImage:
    """A CompressedImage (jpeg or png) from a BGR array."""
    ok, buf = cv2.imencode("." + fmt, image_bgr)
    assert ok
    msg = CompressedImage(format=fmt)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    data = array.array("B")
    data.frombytes(buf.tobytes())
    msg.data = data
    return msg


def write_tiny_checkpoint(path: str, height: int, width: int, model: str = "eva02_tiny") -> str:
    """A seeded, random-init seg+det checkpoint of ``model`` that runs whole images at ``height`` x ``width``
    (milliseconds per frame on a CPU for the tiny model); returns ``path``."""
    import torch

    from vltseg_ros.checkpoint import CheckpointMeta, save_checkpoint
    from vltseg_ros.config import InferenceConfig, model_preset
    from vltseg_ros.model import build_model

    torch.manual_seed(0)
    cfg = model_preset(model, ("seg", "det"))
    save_checkpoint(path, build_model(cfg), CheckpointMeta(
        model=cfg, inference=InferenceConfig(mode="whole", size=[height, width], fit_size=[height, width])))
    return path
