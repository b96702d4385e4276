"""Play a rosbag2 bag (mcap or sqlite3) into ROS 2 with rclpy, with /clock: ``ros2 bag play`` where it is missing.

    vltseg bag play data/bags/fog --rate 0.5 --wait-for-subscribers 2
    ros2 run vltseg_ros vltseg_bag_play data/bags/fog --loop --qos best_effort

Messages are read as raw CDR with ``rosbags`` and turned into the installed rclpy type, so any type with Python
bindings plays. They keep their recorded relative timing, scaled by ``--rate``; /clock carries the bag time (like
``ros2 bag play --clock``) so nodes run with ``use_sim_time:=true``. ``std_srvs`` is not a wheel, so pause/resume
is a ``std_msgs/Bool`` topic: ``<node>/pause`` (true pauses, false resumes). A damaged bag (truncated by a killed
recorder, corrupt bytes) is played as far as it is readable, through ``vltseg_ros.bag``'s recovery scan, and the
player then fails with an error naming the damage; so do messages that do not deserialise as their type.
"""
from __future__ import annotations

# First, before the heavy imports: as ``vltseg_bag_play`` (or ``python -m``), SIGINT and SIGTERM are a stop request
# from here on (launch_support.py).
from .launch_support import STOP

STOP.install_for("vltseg_bag_play", __name__)

import argparse
import re
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import rclpy
from builtin_interfaces.msg import Time
from rclpy.context import Context
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool

from ..bag import BagError, open_messages
from .msg_types import message_class

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
WAIT_SLICE_S = 0.1
"""Longest single wait of ``play()``: a signal that the kernel delivers to another thread (DDS's) reaches the
Python handler in the main thread only when that thread wakes up."""
# Camera image topics by the image_pipeline naming convention; a bag's other Image topics (GT label masks) are not.
CAMERA_TOPIC = re.compile(r"/image(_raw|_rect|_color|_rect_color)?(/compressed)?$")
CLOCK_TOPIC = "/clock"


@dataclass
class PlayStats:
    """What ``play()`` published (updated live, so it is also valid after an error)."""

    published: dict[str, int] = field(default_factory=dict)
    undecodable: dict[str, int] = field(default_factory=dict)
    clock_messages: int = 0
    first_ns: Optional[int] = None
    last_ns: Optional[int] = None
    loops: int = 0
    wall_s: float = 0.0

    @property
    def messages(self) -> int:
        """Messages published on bag topics (not counting /clock)."""
        return sum(self.published.values())


class BagPlayer:
    """Publishes a bag's messages with their recorded timing (scaled by ``rate``) and /clock, from one node.

    ``play()`` blocks the calling thread; ``pause()``, ``resume()`` and ``stop()`` may be called from any thread.
    Publishing needs no executor; spin ``player.node`` only to serve the ``~/pause`` topic.
    """

    def __init__(self, path: str, context: Optional[Context] = None, *,
                 topics: Sequence[str] = (), rate: float = 1.0, start_offset_s: float = 0.0, loop: bool = False,
                 reliability: str = "reliable", depth: int = 10, publish_clock: bool = True, clock_hz: float = 100.0,
                 wait_for_subscribers: int = 0, wait_topics: Optional[Sequence[str]] = None,
                 wait_timeout_s: float = 30.0, start_paused: bool = False, delay_s: float = 0.0,
                 node_name: str = "vltseg_bag_player"):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if reliability not in ("reliable", "best_effort"):
            raise ValueError(f"reliability must be reliable or best_effort, got {reliability!r}")
        self.path = path
        self.rate = rate
        self.start_offset_ns = int(start_offset_s * 1e9)
        self.loop = loop
        self.clock_hz = clock_hz
        self.wait_for_subscribers = wait_for_subscribers
        self.wait_timeout_s = wait_timeout_s
        self.delay_s = delay_s
        self.stats = PlayStats()
        self._cond = threading.Condition(threading.RLock())  # RLock: the SIGINT handler may call stop() inside
        self._paused = start_paused
        self._paused_at = time.monotonic()
        self._stopped = False
        self._wall0 = 0.0  # monotonic time at which bag time self._t0 is due
        self._t0 = 0
        self._clock_ns = 0
        self._stack = ExitStack()
        # The bag module's source: rosbags for intact bags, a record/row scan for damaged ones.
        self._source = self._stack.enter_context(open_messages(Path(path)))
        self.bag_topics: dict[str, str] = dict(self._source.topics)
        self.node = rclpy.create_node(node_name, context=context)
        self._stack.callback(self.node.destroy_node)
        log = self.node.get_logger()
        unknown = sorted(set(topics) - set(self.bag_topics))
        if unknown:
            log.warning(f"topics not in the bag are ignored: {unknown}")
        selected = [t for t in self.bag_topics if not topics or t in topics]
        if publish_clock and CLOCK_TOPIC in selected:
            log.warning("the bag's own /clock is not played; the player publishes /clock from the bag time")
            selected.remove(CLOCK_TOPIC)
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
                         reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        self._classes: dict[str, type] = {}
        self.publishers: dict[str, Any] = {}
        for topic in selected:
            cls = message_class(self.bag_topics[topic])
            if cls is None:
                log.warning(f"{topic}: message type {self.bag_topics[topic]!r} is not installed; not played")
                continue
            self._classes[topic] = cls
            self.publishers[topic] = self.node.create_publisher(cls, topic, qos)
        self._clock_pub = self.node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=10)) \
            if publish_clock else None
        if wait_topics is None:
            images = [t for t in self.publishers if self.bag_topics[t] in IMAGE_TYPES]
            wait_topics = [t for t in images if CAMERA_TOPIC.search(t)] or images
        self.wait_topics = list(wait_topics)
        missing = sorted(set(self.wait_topics) - set(self.publishers))
        if wait_for_subscribers and (missing or not self.wait_topics):
            self.close()
            raise ValueError(f"cannot wait for subscribers on {missing or 'no topic'}: not a played topic of {path}")
        self.node.create_subscription(Bool, "~/pause", lambda msg: self.pause() if msg.data else self.resume(), 10)

    # ------------------------------------------------------------------------------------------------ control
    @property
    def paused(self) -> bool:
        """Whether playback is paused."""
        return self._paused

    def pause(self) -> None:
        """Hold playback (and /clock) at the current bag time."""
        with self._cond:
            if not self._paused:
                self._paused, self._paused_at = True, time.monotonic()
            self._cond.notify_all()

    def resume(self) -> None:
        """Continue after ``pause()`` or ``start_paused``; the paused span is not played."""
        with self._cond:
            if self._paused:
                self._wall0 += time.monotonic() - self._paused_at
                self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        """Make ``play()`` return after the message being published."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop, destroy the node and close the bag."""
        self.stop()
        self._stack.close()

    def __enter__(self) -> "BagPlayer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ playing
    def play(self) -> PlayStats:
        """Wait for subscribers, then publish the bag (again and again with ``loop``). Raises BagError for a
        damaged bag after publishing what was readable, TimeoutError when the subscribers do not appear."""
        started = time.monotonic()
        try:
            self._wait_for_subscribers()
            if self.delay_s > 0:
                self._sleep(self.delay_s)
            topics = set(self.publishers)
            while not self._stopped:
                self._play_once(topics)
                if not self.loop or self._stopped or not self.stats.messages:
                    break
                self.stats.loops += 1
        finally:
            self.stats.wall_s = time.monotonic() - started
        if self.stats.undecodable:
            raise BagError(f"{self.path}: messages that do not deserialise as their recorded type were skipped: "
                           f"{self.stats.undecodable}")
        return self.stats

    def _play_once(self, topics: set[str]) -> None:
        started = False
        for topic, timestamp, raw in self._read(topics):
            if not started:
                # The first message starts bag time; start_offset_s skips that much of the bag.
                with self._cond:
                    self._t0 = self._clock_ns = timestamp + self.start_offset_ns
                    self._wall0 = self._paused_at = time.monotonic()
                started = True
            if timestamp < self._t0:
                continue
            if not self._wait_due(timestamp):
                return
            self._publish(topic, timestamp, raw)

    def _read(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """The source's messages; a failure while reading becomes a BagError saying how much was published."""
        messages = self._source.messages(topics)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # rosbags, apsw and struct errors all mean damaged storage here
                raise BagError(f"{self.path}: damaged bag after {self.stats.messages} published messages: {exc}") \
                    from exc
            yield item

    def _publish(self, topic: str, timestamp: int, raw: bytes) -> None:
        try:
            msg = deserialize_message(bytes(raw), self._classes[topic])  # rclpy takes bytes, never a memoryview
        except Exception as exc:  # rclpy raises its RMWError (not exported) for CDR it cannot read
            self.stats.undecodable[topic] = self.stats.undecodable.get(topic, 0) + 1
            self.node.get_logger().error(f"{topic}: message at {timestamp} ns does not deserialise: {exc}",
                                         throttle_duration_sec=2.0)
            return
        self._tick_clock(timestamp)  # clock first: a sim-time subscriber never sees a message from its future
        self.publishers[topic].publish(msg)
        self.stats.published[topic] = self.stats.published.get(topic, 0) + 1
        self.stats.first_ns = timestamp if self.stats.first_ns is None else min(self.stats.first_ns, timestamp)
        self.stats.last_ns = timestamp if self.stats.last_ns is None else max(self.stats.last_ns, timestamp)

    def _tick_clock(self, bag_ns: int) -> None:
        if self._clock_pub is None:
            return
        self._clock_ns = max(self._clock_ns, bag_ns)
        sec, nanosec = divmod(self._clock_ns, 1_000_000_000)
        self._clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))
        self.stats.clock_messages += 1

    def _wait_due(self, bag_ns: int) -> bool:
        """Sleep until ``bag_ns`` is due at the scaled rate, publishing /clock meanwhile; False when stopped."""
        period = 1.0 / self.clock_hz if self._clock_pub is not None and self.clock_hz > 0 else None
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                remaining = None
                if not self._paused:
                    remaining = self._wall0 + (bag_ns - self._t0) / 1e9 / self.rate - now
                    if remaining <= 0:
                        return True
                if period is not None:  # bag time runs between messages too, and is held while paused
                    running = self._t0 + int((now - self._wall0) * self.rate * 1e9)
                    self._tick_clock(self._clock_ns if self._paused else min(bag_ns, running))
                self._cond.wait(timeout=min(w for w in (remaining, period, WAIT_SLICE_S) if w is not None))
        return False

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless stopped first."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopped and time.monotonic() < deadline:
                self._cond.wait(timeout=min(WAIT_SLICE_S, deadline - time.monotonic()))

    def _wait_for_subscribers(self) -> None:
        if not self.wait_for_subscribers:
            return
        deadline = time.monotonic() + self.wait_timeout_s
        while not self._stopped:
            counts = {t: self.publishers[t].get_subscription_count() for t in self.wait_topics}
            if min(counts.values()) >= self.wait_for_subscribers:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.wait_timeout_s:g} s for {self.wait_for_subscribers} "
                                   f"subscriber(s) on each of {self.wait_topics}; have {counts}")
            self._sleep(0.05)


# ------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg bag play`` options."""
    parser.add_argument("bag", help="bag directory (mcap or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed (1.0 = real time)")
    parser.add_argument("--topics", nargs="+", default=[], metavar="TOPIC", help="play only these topics")
    parser.add_argument("--start-offset", dest="start_offset", type=float, default=0.0, metavar="S",
                        help="start this many seconds into the bag")
    parser.add_argument("--loop", action="store_true", help="play the bag again and again")
    parser.add_argument("--qos", choices=["reliable", "best_effort"], default="reliable",
                        help="reliability of every publisher (volatile, keep last)")
    parser.add_argument("--depth", type=int, default=10, help="publisher queue depth")
    parser.add_argument("--clock-hz", dest="clock_hz", type=float, default=100.0,
                        help="/clock rate between messages (0 = one /clock per message)")
    parser.add_argument("--no-clock", dest="clock", action="store_false", help="do not publish /clock")
    parser.add_argument("--wait-for-subscribers", dest="wait_for_subscribers", type=int, default=0, metavar="N",
                        help="start only when each camera image topic has N subscribers")
    parser.add_argument("--wait-topic", dest="wait_topics", action="append", metavar="TOPIC",
                        help="topic(s) --wait-for-subscribers watches (default: the camera image topics)")
    parser.add_argument("--wait-timeout", dest="wait_timeout", type=float, default=30.0, metavar="S",
                        help="give up waiting for subscribers after S seconds")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S", help="sleep S seconds before playing")
    parser.add_argument("--start-paused", dest="start_paused", action="store_true",
                        help="wait for 'false' on <node>/pause (std_msgs/Bool) before playing")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg bag play``: 0 when the whole bag played or SIGINT/SIGTERM stopped it, 1 on a damaged
    bag or missing subscribers."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = STOP.install()  # a no-op where the module's import installed it
    if stop.requested:  # SIGINT/SIGTERM while importing
        print("stopped after 0 messages", file=sys.stderr)
        return 0
    # rclpy's handlers would shut the context down under a publish() call; the stop request ends play() instead.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    player = None
    executor = SingleThreadedExecutor()
    spinner = threading.Thread(target=executor.spin, daemon=True)  # serves ~/pause
    try:
        player = BagPlayer(
            args.bag, topics=args.topics, rate=args.rate, start_offset_s=args.start_offset, loop=args.loop,
            reliability=args.qos, depth=args.depth, publish_clock=args.clock, clock_hz=args.clock_hz,
            wait_for_subscribers=args.wait_for_subscribers, wait_topics=args.wait_topics,
            wait_timeout_s=args.wait_timeout, start_paused=args.start_paused, delay_s=args.delay,
        )
        stop.on_request(player.stop)  # from the signal handler: stop() takes the player's RLock only
        executor.add_node(player.node)
        spinner.start()
        stats = player.play()
        if stop.requested:
            print(f"stopped ({stop.name}) after {stats.messages} messages", file=sys.stderr)
        else:
            print(f"played {stats.messages} messages on {len(stats.published)} topics in {stats.wall_s:.1f} s")
        return 0
    except (BagError, TimeoutError, ValueError) as exc:
        print(f"vltseg bag play: error: {exc}", file=sys.stderr)
        return 1
    finally:
        executor.shutdown()
        if spinner.is_alive():
            spinner.join()
        if player is not None:
            player.close()
        rclpy.try_shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vltseg_bag_play BAG [options] [--ros-args ...]`` (also ``python -m vltseg_ros.node.player``)."""
    from rclpy.utilities import remove_ros_args

    parser = argparse.ArgumentParser(prog="vltseg_bag_play", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(remove_ros_args(list(sys.argv[1:] if argv is None else argv))))


if __name__ == "__main__":
    sys.exit(main())
