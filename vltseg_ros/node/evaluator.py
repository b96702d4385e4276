"""``vltseg_eval_node``: scores the perception node's outputs against a replayed bag's ground truth, online.

Predictions (``label_mask``, ``detections``) and ground truth (``gt/label_mask``, ``gt/detections``) are paired by
exact header stamp, since the node copies its input stamps and the bag's GT carries the image's stamp. A frame is
scored as soon as every stream that exists (a publisher is discovered or a message was seen) has delivered its
part; a frame still missing parts ``match_timeout_s`` after its prediction arrived is scored with what it has.
Scoring is ``vltseg_ros.report.Scorer``, the code offline evaluation uses, so online and offline numbers agree.
Latency is the node clock at the prediction's arrival minus its stamp, so with ``use_sim_time`` and a player's
/clock it is measured in bag time.
"""
from __future__ import annotations

# First, before the heavy imports: as ``vltseg_eval_node``, SIGINT and SIGTERM are a stop request from here on
# (launch_support.py).
from .launch_support import STOP

STOP.install_for("vltseg_eval_node", __name__)

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Classification, Detection2DArray, LabelInfo

from ..bag import topics_for
from ..codec import CodecError, detection_arrays, frame_score_values, label_array, stamp_ns
from ..evaluation import DatasetFrame, score
from ..labels import CITYSCAPES_CLASSES, CITYSCAPES_THING_CLASSES, IGNORE_INDEX
from ..prediction import Prediction
from ..report import Scorer, percent, write_report
from .parameters import ParamSpec

_BAG = topics_for()

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("pred_label_topic", "/vltseg/label_mask", "predicted label mask (mono8 class ids)", str,
              read_only=True),
    ParamSpec("pred_detections_topic", "/vltseg/detections", "predicted vision_msgs/Detection2DArray", str,
              read_only=True),
    ParamSpec("pred_frame_score_topic", "/vltseg/frame_score", "the domain-shift monitor's per-frame "
              "vision_msgs/Classification (decision, frame scores)", str, read_only=True),
    ParamSpec("diagnostics_topic", "/diagnostics", "recorded: the node's domain-monitor statuses (level, message, "
              "stamp) go to monitor_diagnostics.jsonl", str, read_only=True),
    ParamSpec("label_info_topic", "/vltseg/label_info", "latched vision_msgs/LabelInfo naming the class ids", str,
              read_only=True),
    ParamSpec("gt_label_topic", _BAG.gt_label, "ground-truth label mask (mono8 trainIds, 255 = ignore)", str,
              read_only=True),
    ParamSpec("gt_detections_topic", _BAG.gt_detections, "ground-truth Detection2DArray (class_id = trainId)", str,
              read_only=True),
    ParamSpec("image_topic", _BAG.image, "input images, only counted (a .../compressed topic is CompressedImage)",
              str, read_only=True),
    ParamSpec("output_dir", "", "report directory (results.json, results.md, plots, frames.jsonl); '' = none",
              str, read_only=True),
    ParamSpec("write_period_s", 10.0, "rewrite the report this often (wall seconds); 0 = only at the end", float,
              read_only=True, low=0.0, high=3600.0),
    ParamSpec("domain_name", "online", "label of this run in the report", str, read_only=True),
    ParamSpec("expected_frames", 0, "frames the replay holds (0 = unknown); when scored, the report is written",
              int, low=0, high=2**31 - 1),
    ParamSpec("exit_when_done", True, "the executable exits once expected_frames are done", bool),
    ParamSpec("score_threshold", 0.0, "predicted detections below this score are not scored", float,
              low=0.0, high=1.0),
    ParamSpec("match_timeout_s", 1.0, "once a frame's prediction arrived, wait this long (wall) for its other "
                                      "parts", float, read_only=True, low=0.0, high=600.0),
    ParamSpec("max_age_s", 10.0, "frames this much older (stamp time) than the newest stamp are given up as "
                                 "unmatched", float, read_only=True, low=0.0, high=86400.0),
    ParamSpec("max_pending", 200, "most frames waiting for their match; the oldest are given up first", int,
              read_only=True, low=1, high=100000),
    ParamSpec("idle_timeout_s", 5.0, "with expected_frames: once that many input frames arrived, finish after "
                                     "this long (wall) without messages (the node dropped some frames)", float,
              read_only=True, low=0.0, high=3600.0),
    ParamSpec("qos.reliability", "reliable", "QoS reliability of the prediction and GT subscriptions", str,
              read_only=True, choices=("reliable", "best_effort")),
    ParamSpec("qos.depth", 50, "queue depth of the prediction and GT subscriptions", int, read_only=True,
              low=1, high=1000),
)

PRED_STREAMS = ("pred_label", "pred_det", "pred_score")
GT_STREAMS = ("gt_label", "gt_det")
_NO_BOXES = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
_TOPIC_PARAMS = {"pred_label": "pred_label_topic", "pred_det": "pred_detections_topic",
                 "pred_score": "pred_frame_score_topic",
                 "gt_label": "gt_label_topic", "gt_det": "gt_detections_topic"}


@dataclass
class _Frame:
    """The parts of one stamp that have arrived so far."""

    stamp_ns: int
    parts: dict[str, Any] = field(default_factory=dict)
    pred_wall: Optional[float] = None  # monotonic time of the first prediction part
    pred_node_ns: Optional[int] = None  # node-clock time of the first prediction part (latency)


class EvaluatorNode(Node):
    """Matches predictions to ground truth by stamp and accumulates the scores of one run."""

    def __init__(self, node_name: str = "vltseg_eval", **kwargs):
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
            problem = spec.check(self.get_parameter(spec.name).value)
            if problem:
                raise ValueError(f"invalid parameter {problem}")
        self._lock = threading.RLock()
        self.done = threading.Event()
        self.counters = {"matched": 0, "unmatched_predictions": 0, "unmatched_gt": 0, "latency_only": 0,
                         "input_frames": 0, "bad_messages": 0, "size_mismatch": 0}
        self.decisions: dict[str, int] = {}  # the monitor's per-frame decisions, counted
        self.monitor_statuses: list[dict] = []  # the node's domain-monitor diagnostics, as received
        self._status_lines: list[str] = []
        self._pending: dict[int, _Frame] = {}
        self._seen: set[str] = set()  # streams that delivered a message or have a discovered publisher
        self._newest_ns = 0
        self._backlog: list[tuple] = []  # finalised frames waiting for LabelInfo to name the classes
        self._scorer: Optional[Scorer] = None
        self.class_names: Optional[list[str]] = None
        self._pred_frames = 0
        self._first_pred_wall: Optional[float] = None
        self._last_pred_wall: Optional[float] = None
        self._last_message_wall = time.monotonic()
        self._last_write_wall = time.monotonic()
        self._lines: list[str] = []
        self._topics = {s: self.param(p) for s, p in _TOPIC_PARAMS.items()}
        self._output_dir = self.param("output_dir")
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            for name in ("frames.jsonl", "monitor_diagnostics.jsonl"):
                open(os.path.join(self._output_dir, name), "w").close()  # one run per file

        reliability = (ReliabilityPolicy.RELIABLE if self.param("qos.reliability") == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(depth=self.param("qos.depth"), reliability=reliability,
                         durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        for stream in ("pred_label", "gt_label"):
            self.create_subscription(Image, self._topics[stream],
                                     lambda msg, s=stream: self._on_part(s, msg, label_array), qos)
        for stream in ("pred_det", "gt_det"):
            self.create_subscription(Detection2DArray, self._topics[stream],
                                     lambda msg, s=stream: self._on_part(s, msg, detection_arrays), qos)
        self.create_subscription(Classification, self._topics["pred_score"],
                                 lambda msg: self._on_part("pred_score", msg, frame_score_values), qos)
        self.create_subscription(LabelInfo, self.param("label_info_topic"), self._on_label_info, latched)
        self.create_subscription(DiagnosticArray, self.param("diagnostics_topic"), self._on_diagnostics, 10)
        image_topic = self.param("image_topic")
        # raw=True: counting frames needs no deserialisation of megabyte images.
        self.create_subscription(CompressedImage if image_topic.endswith("/compressed") else Image, image_topic,
                                 self._on_image, qos, raw=True)
        # Wall-clock timer: with use_sim_time a ROS timer stops when the bag (and its /clock) ends.
        self.create_timer(0.1, self._on_timer, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def param(self, name: str) -> Any:
        """Current value of a declared parameter."""
        return self.get_parameter(name).value

    # ------------------------------------------------------------------------------------------------- input
    def _on_image(self, _raw: bytes) -> None:
        with self._lock:
            self.counters["input_frames"] += 1
            self._last_message_wall = time.monotonic()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        stamp = stamp_ns(msg)
        for status in msg.status:
            if "domain monitor" in status.name:
                level = status.level if isinstance(status.level, int) else int.from_bytes(status.level, "big")
                record = {"stamp_ns": stamp, "name": status.name, "level": level, "message": status.message}
                with self._lock:
                    self.monitor_statuses.append(record)
                    self._status_lines.append(json.dumps(record))

    def _on_label_info(self, msg: LabelInfo) -> None:
        ids = {int(c.class_id): c.class_name for c in msg.class_map}
        if not ids:
            self.get_logger().warning(f"{self.param('label_info_topic')}: empty class_map ignored")
            return
        names = [ids.get(i, f"class_{i}") for i in range(max(ids) + 1)]
        with self._lock:
            if self.class_names is None:
                self._start_scoring(names)
            elif names != self.class_names:
                self.get_logger().warning("LabelInfo changed during the run; the first class map is kept")

    def _start_scoring(self, names: list[str]) -> None:
        """Create the Scorer for these class names and score the frames that waited for them."""
        self.class_names = names
        det_classes = {i: n for i, n in enumerate(names) if n in CITYSCAPES_THING_CLASSES}
        self._scorer = Scorer(names, det_classes or None)
        for args in self._backlog:
            score(self._scorer, *args)
        self._backlog.clear()

    def _on_part(self, stream: str, msg, decode) -> None:
        arrival_ns = self.get_clock().now().nanoseconds
        wall = time.monotonic()
        try:
            value = decode(msg)
        except CodecError as exc:
            with self._lock:
                self.counters["bad_messages"] += 1
            self.get_logger().warning(f"{self._topics[stream]}: unusable message: {exc}", throttle_duration_sec=5.0)
            return
        stamp = stamp_ns(msg)
        with self._lock:
            self._last_message_wall = wall
            self._seen.add(stream)
            self._discover()
            if stamp > self._newest_ns or self._newest_ns - stamp > self.param("max_age_s") * 1e9:
                self._newest_ns = stamp  # a jump back in stamps is a looped or restarted bag, not old frames
            frame = self._pending.setdefault(stamp, _Frame(stamp))
            frame.parts[stream] = value
            if stream in PRED_STREAMS and frame.pred_wall is None:
                frame.pred_wall, frame.pred_node_ns = wall, arrival_ns
                self._pred_frames += 1
                self._first_pred_wall = self._first_pred_wall or wall
                self._last_pred_wall = wall
            if self._seen <= frame.parts.keys() and frame.pred_wall is not None:
                self._finalise(self._pending.pop(stamp))
            self._evict(wall)

    def _discover(self) -> None:
        """Add streams whose publisher is discovered: a complete frame has a part from each (the first frame's GT
        may come before any other stream spoke). Runs in callbacks only, where the context is valid."""
        self._seen |= {s for s, topic in self._topics.items() if s not in self._seen and self.count_publishers(topic)}

    # -------------------------------------------------------------------------------------------- matching
    def _evict(self, wall: float) -> None:
        """Finalise frames whose prediction waited too long, that are too old, or beyond ``max_pending``."""
        timeout = self.param("match_timeout_s")
        oldest_ns = self._newest_ns - int(self.param("max_age_s") * 1e9)
        for stamp in sorted(self._pending):
            frame = self._pending[stamp]
            if (frame.pred_wall is not None and wall - frame.pred_wall > timeout) or stamp < oldest_ns \
                    or len(self._pending) > self.param("max_pending"):
                self._finalise(self._pending.pop(stamp))

    def _finalise(self, frame: _Frame) -> None:
        """Score a frame (or count it unmatched) and queue its frames.jsonl line."""
        parts = frame.parts
        has_pred = frame.pred_wall is not None
        has_gt = any(s in parts for s in GT_STREAMS)
        record: dict[str, Any] = {"stamp_ns": frame.stamp_ns}
        if has_pred and (has_gt or not self._seen & set(GT_STREAMS)):
            status = "matched" if has_gt else "latency_only"
            latency_s = (frame.pred_node_ns - frame.stamp_ns) / 1e9
            label, gt_label = parts.get("pred_label"), parts.get("gt_label")
            if label is not None and gt_label is not None and label.shape != gt_label.shape:
                # Not scorable pixel by pixel (a resizing node?); counted, and the frame's boxes still score.
                self.counters["size_mismatch"] += 1
                self.get_logger().warning(f"label mask {label.shape} and GT {gt_label.shape} differ in size",
                                          throttle_duration_sec=5.0)
                label = gt_label = None
            boxes, class_ids, scores = parts.get("pred_det", _NO_BOXES)
            keep = scores >= self.param("score_threshold")
            gt_boxes, gt_class_ids, _ = parts.get("gt_det", (None, None, None))
            shape = (gt_label if gt_label is not None else label if label is not None else np.zeros((0, 0))).shape
            decision, frame_scores = parts.get("pred_score", (None, {}))
            if decision is not None:
                self.decisions[decision] = self.decisions.get(decision, 0) + 1
                record.update(decision=decision, frame_scores=frame_scores)
            args = (DatasetFrame(None, gt_label, gt_boxes, gt_class_ids),
                    Prediction(label, None, boxes[keep], class_ids[keep], scores[keep], frame_scores), latency_s,
                    None, shape)
            if self._scorer is None:
                self._backlog.append(args)
            else:
                score(self._scorer, *args)
            record.update(latency_ms=round(1000 * latency_s, 3), pred_boxes=int(keep.sum()),
                          gt_boxes=None if gt_boxes is None else len(gt_boxes))
            if label is not None and gt_label is not None:
                valid = gt_label != IGNORE_INDEX
                record["pixel_accuracy"] = float((label[valid] == gt_label[valid]).mean()) if valid.any() else None
        else:
            status = "unmatched_prediction" if has_pred else "unmatched_gt"
        self.counters["unmatched_predictions" if status == "unmatched_prediction" else status] += 1
        record["status"] = status
        record["parts"] = sorted(parts)
        self._lines.append(json.dumps(record))

    def _on_timer(self) -> None:
        wall = time.monotonic()
        with self._lock:
            self._discover()
            self._evict(wall)
            expected = self.param("expected_frames")
            if expected and not self.done.is_set():
                scored = self.counters["matched"] + self.counters["latency_only"]
                idle = wall - self._last_message_wall > self.param("idle_timeout_s")
                if scored >= expected or (self.counters["input_frames"] >= expected and idle):
                    self.finish()
                    return
        period = self.param("write_period_s")
        if self._output_dir and period > 0 and wall - self._last_write_wall >= period:
            self.write_outputs()

    # ------------------------------------------------------------------------------------------------ output
    def summary(self) -> dict:
        """The Scorer's result plus counters and frames_per_s (of prediction arrivals, wall clock)."""
        with self._lock:
            out = self._scorer.result() if self._scorer is not None else {"images": 0}
            out.update(self.counters)
            out["pending"] = len(self._pending)
            out["awaiting_label_info"] = len(self._backlog)
            out["monitor_decisions"] = dict(self.decisions)
            levels = [s["level"] for s in self.monitor_statuses]
            out["monitor_levels"] = {name: levels.count(level) for level, name in enumerate(("OK", "WARN", "ERROR"))
                                     if level in levels}
            span = (self._last_pred_wall or 0.0) - (self._first_pred_wall or 0.0)
            out["frames_per_s"] = (self._pred_frames - 1) / span if self._pred_frames > 1 and span > 0 else None
            return out

    def finish(self) -> dict:
        """Finalise every pending frame, write the outputs, log a summary line and set ``done``; returns summary."""
        with self._lock:
            for stamp in sorted(self._pending):
                self._finalise(self._pending.pop(stamp))
            if self._scorer is None and self._backlog:
                self.get_logger().warning("no LabelInfo received; naming classes by the Cityscapes trainIds")
                self._start_scoring(list(CITYSCAPES_CLASSES))
            result = self.write_outputs(plots=True)
            self.done.set()
        seg, det, lat = result.get("segmentation"), result.get("detection"), result.get("latency_ms")
        self.get_logger().info(
            f"{self.param('domain_name')}: {result['images']} frames scored ({result['matched']} matched, "
            f"{result['unmatched_gt']} GT and {result['unmatched_predictions']} predictions unmatched)"
            + (f", mIoU {percent(seg['mIoU'])}" if seg else "") + (f", AP {percent(det['AP'])}" if det else "")
            + (f", latency p50 {lat['p50']:.1f} ms" if lat else ""))
        return result

    def write_outputs(self, plots: bool = False) -> dict:
        """Append new frames.jsonl lines and rewrite results.json/results.md (and the plots when ``plots``: they
        take seconds of GIL time, which would stall a node sharing this process); returns the summary."""
        with self._lock:
            result = self.summary()
            lines, self._lines = self._lines, []
            status_lines, self._status_lines = self._status_lines, []
            names = self.class_names
            self._last_write_wall = time.monotonic()
            if not self._output_dir:
                return result
            with open(os.path.join(self._output_dir, "frames.jsonl"), "a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
            with open(os.path.join(self._output_dir, "monitor_diagnostics.jsonl"), "a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in status_lines)
            if names is not None:
                header = {"source": "vltseg_eval_node", "stamp_matching": "exact",
                          "topics": {**self._topics, "image": self.param("image_topic")},
                          "score_threshold": self.param("score_threshold")}
                write_report({self.param("domain_name"): result}, self._output_dir, names, header, plots=plots)
            return result


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``vltseg_eval_node`` (``ros2 run vltseg_ros vltseg_eval_node --ros-args ...``): runs until
    ``expected_frames`` are done (with ``exit_when_done``) or SIGINT/SIGTERM, then writes the report; 0."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = STOP.install()
    if stop.requested:  # SIGINT/SIGTERM while importing: nothing was scored
        return 0
    # rclpy's handlers would shut the context down under a callback; the loop below checks the stop request instead.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = EvaluatorNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.requested and not (node.done.is_set() and node.param("exit_when_done")):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        if not node.done.is_set():
            node.finish()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
