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


# ------------------------------------------------------------------------------------------------ held processes
HOLD_SCRIPT = '''"""Runs one of the package's executables held at a point of its life, for the shutdown tests:

    python hold.py POINT DIR EXECUTABLE [ARGS...]

At POINT the process creates DIR/POINT.reached, then (unless the point only marks) waits until DIR/POINT.release
exists, which may be never. A "native" hold swallows KeyboardInterrupt, as native code (a torch.compile, a forward
pass, a checkpoint read) does not see it; a "python" hold lets it through, as Python code (an import) does. The
executable then runs as its console script does (argv[0] its path), so ``ros2 launch --launch-prefix`` can use it.
"""
import os
import runpy
import sys
import time

POINT, DIR = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[3:]


def reached():
    open(os.path.join(DIR, POINT + ".reached"), "w").close()


def hold(native):
    reached()
    release = os.path.join(DIR, POINT + ".release")
    while not os.path.exists(release):
        try:
            time.sleep(0.01)
        except KeyboardInterrupt:
            if not native:
                raise


def wrap(cls, name, native=True, mark_only=False, when=lambda args, kwargs: True):
    original = getattr(cls, name)
    done = []

    def held(*args, **kwargs):
        if not done and when(args, kwargs):
            done.append(True)
            reached() if mark_only else hold(native)
        return original(*args, **kwargs)

    setattr(cls, name, held)


if POINT == "import":  # Python code of an import: the first "import rclpy"
    class HoldImport:
        def find_spec(self, name, path=None, target=None):
            if name == "rclpy":
                sys.meta_path.remove(self)
                hold(native=False)
            return None

    sys.meta_path.insert(0, HoldImport())
elif POINT in ("player-wait", "player-publish"):
    from vltseg_ros.node.player import BagPlayer

    wrap(BagPlayer, "_wait_for_subscribers" if POINT == "player-wait" else "_publish", mark_only=True)
elif POINT in ("evaluator-spin", "evaluator-report"):
    from vltseg_ros.node.evaluator import EvaluatorNode

    if POINT == "evaluator-spin":
        wrap(EvaluatorNode, "_on_timer", mark_only=True)  # spinning: its timer runs
    else:
        wrap(EvaluatorNode, "write_outputs", when=lambda args, kwargs: kwargs.get("plots"))
else:
    from vltseg_ros.node.node import VLTSegNode
    from vltseg_ros.predictor import Predictor

    calls = []

    def nth_predict(n):
        def when(args, kwargs):
            calls.append(1)
            return len(calls) == n
        return when

    points = {
        "loading": (Predictor, "from_checkpoint", {}),
        "warm-up": (Predictor, "predict", {"when": nth_predict(1)}),
        "compile": (Predictor, "_run", {"mark_only": True,
                                        "when": lambda args, kwargs: args[0]._forward is not args[0].model}),
        "between": (VLTSegNode, "trigger_activate", {"native": False}),
        "activate": (VLTSegNode, "_warn_about_large_images", {}),
        "inference": (Predictor, "predict", {"when": nth_predict(2)}),
        "deactivate": (VLTSegNode, "on_deactivate", {}),
        "cleanup": (VLTSegNode, "on_cleanup", {}),
    }
    cls, name, options = points[POINT]
    wrap(cls, name, **options)
runpy.run_path(sys.argv[0], run_name="__main__")
'''

CLEAN_EXIT_FORBIDDEN = ("Traceback", "FATAL", "KeyboardInterrupt", "context is invalid", "Failed to complete",
                        "Exception ignored", "escalating to")
"""What a stopping process must never print: a traceback, a FATAL line, rcl's complaint about a publisher whose
context was shut down under it, ``ros2 launch`` escalating to SIGTERM."""


class HeldProcess:
    """One executable run through ``HOLD_SCRIPT`` (in a session of its own, output in a file): wait until it reaches
    its point, signal it, release it, and check how it ended."""

    def __init__(self, tmp_path, point: str, cmd: list[str], env: dict[str, str], name: str = "held"):
        self.dir = tmp_path / f"{name}_hold"
        self.dir.mkdir()
        self.point = point
        script = tmp_path / "hold.py"
        script.write_text(HOLD_SCRIPT)
        self.log = tmp_path / f"{name}.log"
        self._out = open(self.log, "w")
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, str(script), point, str(self.dir), *cmd], env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        self.signalled_at: Optional[float] = None

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def wait_reached(self, timeout: float = 180.0) -> None:
        """Until the process is at its point; fails with its output if it ended or the time is up."""
        deadline = time.monotonic() + timeout
        while not (self.dir / f"{self.point}.reached").exists():
            assert self.proc.poll() is None, f"ended (status {self.proc.returncode}) before {self.point}:\n" \
                                             f"{self.output()}"
            assert time.monotonic() < deadline, f"never reached {self.point}:\n{self.output()}"
            time.sleep(0.02)

    def wait_output(self, text: str, timeout: float) -> bool:
        """Whether ``text`` was printed within ``timeout`` s (False also when the process ended without it)."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return text in self.output()
            time.sleep(0.02)
        return True

    def send(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)
        self.signalled_at = time.monotonic()

    def release(self) -> None:
        (self.dir / f"{self.point}.release").touch()

    def wait_exit(self, timeout: float) -> tuple[Optional[int], float]:
        """(exit status or None if still running after ``timeout`` s, seconds since the signal)."""
        import subprocess

        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - (self.signalled_at or time.monotonic())

    def close(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()


def forbidden_lines(output: str) -> list[str]:
    """The lines of ``output`` holding something from ``CLEAN_EXIT_FORBIDDEN``."""
    return [line for line in output.splitlines() if any(bad in line for bad in CLEAN_EXIT_FORBIDDEN)]


def session_processes(pgid: int, settle_s: float = 2.0) -> list[str]:
    """Command lines of the processes still running in process group ``pgid``, after giving them ``settle_s`` to
    end (multiprocessing's resource tracker ends when its parent has, a moment later). Zombies are not counted: they
    ended, and wait for init to reap them once their parent is gone."""
    deadline = time.monotonic() + settle_s
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        found.append(f"{entry}: " + f.read().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
