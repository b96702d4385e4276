"""``vltseg_node``: camera images in; label masks, colored masks, overlays, detections and markers out.

A lifecycle node. Configure loads the checkpoint and warms the model up; activate starts the inference thread;
deactivate unsubscribes and moves the model off the GPU; by default the node walks itself to active so plain
``ros2 run`` works. A failed transition logs its exception with the traceback (rclpy would swallow it).

Work is lazy, as in image_pipeline: a camera's input is subscribed only while one of its enabled outputs has a
subscriber (or ``always_on`` is set), so a node nobody listens to runs no inference, and an output nobody subscribes
to is not computed. Subscription callbacks only convert and park the newest frame per camera in a slot; an inference
thread takes whatever the slots hold (several cameras -> one batch), so a slow model drops stale frames instead of
queueing them.
"""
from __future__ import annotations

# First, before the heavy imports: as ``vltseg_node``, SIGINT and SIGTERM become a stop request from here on, so a
# Ctrl-C while importing ends the process cleanly instead of with a KeyboardInterrupt traceback (launch_support.py).
from .launch_support import STOP, STOP_GRACE_S, exit_at_deadline, exit_now

STOP.install_for("vltseg_node", __name__)

import collections
import functools
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..codec import CodecError, compressed_colour, header_msg, is_jpeg, jpeg_tensor
from ..visualize import palette_lut
from . import diagnostics
from .conversions import FrameResult, Rendering, image_to_numpy, label_info_msg
from .msg_types import RCLPY_TYPES
from .outputs import OUTPUTS, Output
from .parameters import PARAMETERS, SPECS
from .stats import Counters, Percentiles, RateWindow, ValueWindow
from .topics import CameraTopics

INPUT_CHECK_PERIOD_S = 0.25
"""How often the node looks for output subscribers to (un)subscribe its inputs (steady clock)."""


@dataclass
class Frame:
    """One received image waiting for inference."""

    camera: int
    header: Any
    image: Any  # HxWx3 uint8 numpy view, or a device tensor when JPEGs are decoded on the GPU
    image_format: str
    received: float  # node-clock seconds


class CameraIO:
    """Topics of one camera: its input subscriptions, its output publishers and its input statistics."""

    def __init__(self, namespace: str, window_s: float):
        self.topics = CameraTopics(namespace)
        self.subscriptions: list = []
        self.publishers: dict[str, Any] = {}
        self.camera_info: Optional[CameraInfo] = None
        self.input_rate = RateWindow(window_s)  # steady-clock seconds
        self.frame_scores = ValueWindow(window_s)  # the monitor's default frame score, steady-clock seconds
        self.last_frame: Optional[float] = None  # steady-clock seconds of the last frame (or of subscribing)
        self.input_topic = self.topics.image  # resolved once subscribed


def warmup_batches(mode: str, compiled: bool, cameras: int, max_batch: int) -> list[int]:
    """Batch sizes to run at configure time. A compiled network has one graph per input shape, and frames from
    ``cameras`` cameras arrive in batches of 1..cameras, so each of those is compiled before the node goes live
    (not minutes into a drive). Sliding-window inference runs one image at a time, so one frame covers its shapes."""
    if not compiled or mode != "whole":
        return [1]
    return list(range(1, max(1, min(cameras, max_batch)) + 1))


def _logged_transition(callback):
    """A lifecycle callback that logs any exception with its traceback and fails the transition. rclpy turns an
    exception into a silent ERROR transition; a node whose start failed must say why."""

    @functools.wraps(callback)
    def wrapper(self, state):
        try:
            return callback(self, state)
        except Exception as exc:
            self.get_logger().error(f"{callback.__name__[3:]} failed: {exc!r}\n{traceback.format_exc()}")
            self._transition_failed(callback.__name__)
            return TransitionCallbackReturn.FAILURE

    return wrapper


class VLTSegNode(LifecycleNode):
    """Lifecycle node running a VLTSeg/VLTDet checkpoint on one or more cameras."""

    def __init__(self, node_name: str = "vltseg", **kwargs):
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self._declare(spec)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.predictor = None
        self.cameras: list[CameraIO] = []
        self.counters = Counters(self.param("diagnostics_window_s"))
        self.input_rate = RateWindow(self.param("diagnostics_window_s"))
        self.output_rate = RateWindow(self.param("diagnostics_window_s"))
        self.latency_ms = Percentiles()
        self.inference_ms = Percentiles()
        self._slots: dict[int, collections.deque[Frame]] = {}  # camera -> frames waiting for inference
        self._cond = threading.Condition()
        self._stop = threading.Event()  # the inference thread's: deactivate sets it too
        self._stopping = threading.Event()  # the process is shutting down (request_stop)
        self._worker: Optional[threading.Thread] = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diag_pub = None
        self._diag_timer = None
        self._input_timer = None
        self._label_info_pubs: list = []
        self._palette_lut: Optional[np.ndarray] = None
        self._jpeg_device = None  # torch device for torchvision JPEG decoding, None = OpenCV
        self._last_error: Optional[str] = None

    # ----------------------------------------------------------------------------------------------- parameters
    def _declare(self, spec) -> None:
        if spec.is_array and not spec.default:
            # rclpy infers an empty list as a byte array; declare the type and set the default afterwards.
            self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, spec.descriptor())
            try:
                self.get_parameter(spec.name).value
            except ParameterUninitializedException:
                self.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])])
        else:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        problem = spec.check(self.get_parameter(spec.name).value)
        if problem:
            raise ValueError(f"invalid parameter {problem}")

    def param(self, name: str) -> Any:
        """Current value of a declared parameter."""
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            spec = SPECS.get(p.name)
            problem = spec.check(p.value) if spec is not None else None
            if problem:
                self.get_logger().warning(f"rejected parameter change: {problem}")
                return SetParametersResult(successful=False, reason=problem)
        for p in params:
            if p.name == "score_threshold" and self.predictor is not None:
                self.predictor.set_score_threshold(float(p.value))
                self._publish_label_info(float(p.value))
            if p.name == "monitor_score" and self.predictor is not None:
                self.predictor.monitor_default = str(p.value)
            if p.name == "class_filter" and self.predictor is not None:
                self._set_class_filter(list(p.value))
        return SetParametersResult(successful=True)

    def _set_class_filter(self, names: list[str]) -> None:
        unknown = self.predictor.set_class_filter(names)
        if unknown:
            self.get_logger().warning(f"class_filter: unknown class names {unknown} are ignored")

    # ------------------------------------------------------------------------------------------------ lifecycle
    @_logged_transition
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the checkpoint, warm the model up, create publishers and publish the label map. A shutdown request
        stops it between these steps (FAILURE, back to unconfigured, nothing left behind)."""
        if self._interrupted("configure"):
            return TransitionCallbackReturn.FAILURE
        import torch

        from ..config import InferenceConfig
        from ..predictor import Predictor

        path = self.param("checkpoint")
        if not path:
            self.get_logger().error("parameter 'checkpoint' is empty: give the path of a .safetensors checkpoint")
            return TransitionCallbackReturn.FAILURE
        device = self.param("device")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        predictor = Predictor.from_checkpoint(
            path, device=device, precision=self.param("precision"), score_threshold=self.param("score_threshold"),
            compile=self.param("compile_mode") if self.param("compile") else False,
            compile_cache_dir=self.param("compile_cache_dir"),
        )
        if self._interrupted("configure"):
            return TransitionCallbackReturn.FAILURE
        mode = self.param("inference.mode")
        if mode != "checkpoint":
            inference = InferenceConfig(
                mode=mode, size=list(self.param("inference.size")), fit_size=list(self.param("inference.fit_size")),
                window=self.param("inference.window"), stride=self.param("inference.stride"),
            )
            predictor.set_inference(inference)
        decoder = self.param("jpeg_decoder")
        use_torchvision = decoder == "torchvision" or (decoder == "auto" and predictor.device.type == "cuda")
        started = time.perf_counter()
        size = predictor.inference.size if predictor.inference.mode == "whole" else predictor.inference.fit_size
        frame = np.zeros((size[0], size[1], 3), np.uint8)
        for batch in warmup_batches(predictor.inference.mode, bool(self.param("compile")),
                                    len(self.param("cameras")), predictor.max_batch):
            if self._interrupted("configure"):
                return TransitionCallbackReturn.FAILURE
            predictor.predict([frame] * batch)
        if self._interrupted("configure"):
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"loaded {path} ({predictor.meta.model.encoder.name}, {device}, {predictor.precision}); "
            f"warm-up {1000 * (time.perf_counter() - started):.0f} ms"
        )
        self.predictor = predictor
        predictor.monitor_default = self.param("monitor_score")
        self._jpeg_device = predictor.device if use_torchvision else None
        self._palette_lut = palette_lut(predictor.palette)
        self._set_class_filter(list(self.param("class_filter")))
        self._create_publishers()
        return TransitionCallbackReturn.SUCCESS

    def _create_publishers(self) -> None:
        out_qos = QoSProfile(depth=self.param("output_qos.depth"), reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        self.cameras = [CameraIO(ns, self.param("diagnostics_window_s")) for ns in self.param("cameras")]
        for cam in self.cameras:
            cam.publishers = {o.name: self.create_publisher(o.msg_type, cam.topics.output(o.name),
                                                            latched if o.latched else out_qos) for o in OUTPUTS}
        self._label_info_pubs = [cam.publishers[o.name] for cam in self.cameras for o in OUTPUTS if o.latched]
        self._publish_label_info(self.param("score_threshold"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Steady clock: diagnostics must keep coming when a replay's /clock stops (or has not started).
        self._diag_timer = self.create_timer(self.param("diagnostics_period_s"), self._publish_diagnostics,
                                             clock=self._steady)

    def _publish_label_info(self, threshold: float) -> None:
        header = header_msg(RCLPY_TYPES, self.get_clock().now().nanoseconds, "")
        msg = label_info_msg(self.predictor.class_names, threshold, header)
        for pub in self._label_info_pubs:
            pub.publish(msg)

    def _transition_failed(self, callback: str) -> None:
        if callback == "on_configure":
            self._release()
        elif callback == "on_activate":
            self._unsubscribe()

    @_logged_transition
    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Move the model to its device, start the inference thread, and subscribe the inputs whose outputs are
        wanted (checked again every ``INPUT_CHECK_PERIOD_S``)."""
        if self._interrupted("activate"):
            return TransitionCallbackReturn.FAILURE
        self.predictor.restore_device()
        self._stop.clear()
        self._worker = threading.Thread(target=self._inference_loop, name="vltseg-inference", daemon=True)
        self._worker.start()
        self._update_inputs()
        self._input_timer = self.create_timer(INPUT_CHECK_PERIOD_S, self._update_inputs, clock=self._steady)
        lazy = "" if self.param("always_on") else " while an output has a subscriber"
        topics = ", ".join(c.topics.compressed if self._compressed else c.topics.image for c in self.cameras)
        self.get_logger().info(f"active: input {topics} (subscribed{lazy})")
        self._warn_about_large_images()
        return super().on_activate(state)

    @_logged_transition
    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe, stop the inference thread and free GPU memory."""
        self._unsubscribe()
        if self.predictor is not None and self.predictor.device.type == "cuda":
            self.predictor.release_device()
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Destroy publishers and drop the model."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop everything from any state."""
        self._unsubscribe()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        if self._input_timer is not None:
            self.destroy_timer(self._input_timer)
            self._input_timer = None
        self._stop_inference()
        for cam in self.cameras:
            self._unsubscribe_camera(cam)

    def _release(self) -> None:
        for cam in self.cameras:
            for pub in cam.publishers.values():
                self.destroy_publisher(pub)
        self.cameras = []
        self._label_info_pubs = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self.destroy_publisher(self._diag_pub)
            self._diag_timer = self._diag_pub = None
        self.predictor = None

    def _stop_inference(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        with self._cond:
            self._slots.clear()

    # ------------------------------------------------------------------------------------------------- stopping
    @property
    def stopping(self) -> bool:
        """Whether the node is shutting down (``request_stop``)."""
        return self._stopping.is_set()

    def request_stop(self) -> None:
        """Begin shutting down (thread-safe): a transition in progress gives up at its next step, and the inference
        thread ends after the frame it is running, without publishing it."""
        self._stopping.set()
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def wait_for_inference(self, timeout: Optional[float]) -> bool:
        """Whether the inference thread has ended (or never ran) within ``timeout`` s; after ``request_stop``."""
        worker = self._worker
        if worker is None:
            return True
        worker.join(timeout)
        return not worker.is_alive()

    def _interrupted(self, transition: str) -> bool:
        if self._stopping.is_set():
            self.log("info", f"{transition}: stopped, the node is shutting down")
            return True
        return False

    def log(self, level: str, message: str) -> None:
        """Log ``message`` at ``level`` (debug/info/warning/error/fatal); once the context is gone (a host program
        shut it down under the node), on the console only: /rosout cannot take it, and rcl would print an error
        about the invalid context instead."""
        logger = self.get_logger() if self.context.ok() else rclpy.logging.get_logger(f"{self.get_name()}.stopped")
        getattr(logger, level)(message)

    def _warn_about_large_images(self) -> None:
        """Fast DDS with its default transports never delivers best-effort images of about 1 MB or more."""
        rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
        if (rmw.startswith("rmw_fastrtps") and not os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")
                and self.param("input_qos.reliability") == "best_effort" and not self._compressed):
            self.get_logger().info(
                "Fast DDS with default transports: best-effort images of 1 MB or more are not delivered; set "
                "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA for every process (camera driver, this node, RViz, ros2 CLI)")

    # ------------------------------------------------------------------------------------------------- input
    @property
    def _compressed(self) -> bool:
        return self.param("input_transport") == "compressed"

    def _wanted_outputs(self, cam: CameraIO) -> list[Output]:
        """The per-frame outputs of ``cam`` to compute now: enabled, possible with this checkpoint, and (unless
        ``always_on``) subscribed."""
        heads = {None: True, "seg": self.predictor.has_seg, "det": self.predictor.has_det}
        always_on = self.param("always_on")
        return [o for o in OUTPUTS if not o.latched and heads[o.needs] and self.param(o.parameter)
                and (always_on or cam.publishers[o.name].get_subscription_count() > 0)]

    def _update_inputs(self) -> None:
        """Subscribe each camera whose outputs are wanted, unsubscribe the others (image_pipeline's laziness)."""
        for index, cam in enumerate(self.cameras):
            wanted = self.param("always_on") or bool(self._wanted_outputs(cam))
            if wanted and not cam.subscriptions:
                self._subscribe_camera(index, cam)
            elif not wanted and cam.subscriptions:
                self._unsubscribe_camera(cam)
                with self._cond:
                    self._slots.pop(index, None)
                self.get_logger().info(f"unsubscribed from {cam.input_topic}: no subscriber to its outputs")

    def _subscribe_camera(self, index: int, cam: CameraIO) -> None:
        reliability = (ReliabilityPolicy.BEST_EFFORT if self.param("input_qos.reliability") == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        in_qos = QoSProfile(depth=self.param("input_qos.depth"), reliability=reliability,
                            durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        if self._compressed:
            sub = self.create_subscription(CompressedImage, cam.topics.compressed,
                                           lambda msg: self._on_image(msg, index, compressed=True), in_qos)
        else:
            sub = self.create_subscription(Image, cam.topics.image,
                                           lambda msg: self._on_image(msg, index, compressed=False), in_qos)
        cam.subscriptions.append(sub)
        if self.param("use_camera_info"):
            cam.subscriptions.append(self.create_subscription(
                CameraInfo, cam.topics.camera_info, lambda msg: self._on_camera_info(msg, cam), in_qos))
        cam.input_topic = sub.topic_name
        cam.last_frame = self._steady.now().nanoseconds * 1e-9  # the stale check counts from here
        self.get_logger().info(f"subscribed to {cam.input_topic}")

    def _unsubscribe_camera(self, cam: CameraIO) -> None:
        for sub in cam.subscriptions:
            self.destroy_subscription(sub)
        cam.subscriptions.clear()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, reason: str, detail: str) -> None:
        self.counters.add("rejected")
        self.counters.add(f"rejected.{reason}")
        self.get_logger().warning(f"rejected frame ({reason}): {detail}", throttle_duration_sec=5.0)

    def _on_camera_info(self, msg: CameraInfo, cam: CameraIO) -> None:
        if msg.width <= 0 or msg.height <= 0:
            self._reject("camera_info", f"{cam.topics.camera_info} has zero size {msg.width}x{msg.height}")
            return
        cam.camera_info = msg

    def _on_image(self, msg, camera: int, compressed: bool) -> None:
        steady = self._steady.now().nanoseconds * 1e-9
        self.input_rate.tick(steady)
        cam = self.cameras[camera]
        cam.input_rate.tick(steady)
        cam.last_frame = steady
        try:
            if not compressed:
                image, image_format = image_to_numpy(msg)
            elif self._jpeg_device is not None and is_jpeg(msg):
                image, image_format = jpeg_tensor(msg, self._jpeg_device)
            else:
                image, image_format = compressed_colour(msg)
        except CodecError as exc:
            self._reject(exc.reason, f"{cam.input_topic}: {exc}")
            return
        info = cam.camera_info
        if info is not None and (info.width, info.height) != (image.shape[1], image.shape[0]):
            self._reject("camera_info", f"{cam.topics.camera_info} says {info.width}x{info.height}, "
                                        f"image is {image.shape[1]}x{image.shape[0]}")
            return
        frame = Frame(camera, msg.header, image, image_format, self._now())
        with self._cond:
            queue = self._slots.setdefault(camera, collections.deque(maxlen=self.param("frame_queue")))
            if len(queue) == queue.maxlen:
                self.counters.add("dropped")  # the oldest waiting frame is pushed out: a stale frame
            queue.append(frame)
            self._cond.notify_all()

    # --------------------------------------------------------------------------------------------- inference
    def _take_batch(self) -> list[Frame]:
        cameras = len(self.cameras)
        with self._cond:
            self._cond.wait_for(lambda: self._slots or self._stop.is_set(), timeout=0.2)
            if self._slots and len(self._slots) < cameras:
                # Wait briefly for the other cameras so simultaneous frames share one forward pass.
                self._cond.wait_for(lambda: len(self._slots) >= cameras or self._stop.is_set(),
                                    timeout=self.param("batch_timeout_ms") / 1000.0)
            frames = [self._slots[k].popleft() for k in sorted(self._slots)]
            for camera in [k for k, queue in self._slots.items() if not queue]:
                del self._slots[camera]
        return frames

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            frames = self._take_batch()
            max_age = self.param("max_frame_age_s")
            if max_age > 0:
                now = self._now()
                fresh = [f for f in frames if now - Time.from_msg(f.header.stamp).nanoseconds * 1e-9 <= max_age]
                if len(fresh) < len(frames):
                    self.counters.add("stale", len(frames) - len(fresh))
                frames = fresh
            if not frames or self._stop.is_set():
                continue
            try:
                self._process(frames)
            except Exception as exc:  # keep the node alive on CUDA OOM and the like; the next frame may work
                if self._stopping.is_set() or not self.context.ok():
                    break  # shutting down (or the context was shut down under the node): no error, no traceback
                self.counters.add("inference_errors")
                self._last_error = repr(exc)
                self.get_logger().error(f"inference failed: {exc!r}\n{traceback.format_exc()}",
                                        throttle_duration_sec=5.0)

    def _process(self, frames: list[Frame]) -> None:
        wanted = {f.camera: self._wanted_outputs(self.cameras[f.camera]) for f in frames}
        frames = [f for f in frames if wanted[f.camera]]  # its last subscriber left while the frame waited
        if not frames:
            return
        started = time.perf_counter()
        results = self.predictor.predict(
            [f.image for f in frames], image_format=[f.image_format for f in frames],
            return_confidence=any(o.name == "confidence" for outputs in wanted.values() for o in outputs),
        )
        self.inference_ms.add(1000 * (time.perf_counter() - started))
        if self._stopping.is_set():
            return  # the process is shutting down: its publishers are about to go
        self.counters.add("batches")
        rendering = Rendering(self.predictor.class_names, self._palette_lut, self.param("overlay_alpha"),
                              *self._monitor_settings())
        for frame, prediction in zip(frames, results):
            cam = self.cameras[frame.camera]
            result = self._frame_result(frame, prediction, cam)
            score = prediction.frame_scores.get(self.predictor.monitor_default)
            if score is not None:
                cam.frame_scores.add(self._steady.now().nanoseconds * 1e-9, score)
            for output in wanted[frame.camera]:
                cam.publishers[output.name].publish(output.build(result, rendering))
                self.counters.add(f"published.{output.name}")
            now = self._now()
            self.output_rate.tick(self._steady.now().nanoseconds * 1e-9)
            self.latency_ms.add(1000 * (now - Time.from_msg(frame.header.stamp).nanoseconds * 1e-9))
            self.counters.add("published")

    def _frame_result(self, frame: Frame, prediction, cam: CameraIO) -> FrameResult:
        """The prediction (the predictor applied threshold and class filter) together with its frame."""
        return FrameResult(frame.header, frame.image, frame.image_format, prediction.label_map,
                           prediction.confidence, prediction.boxes, prediction.box_class_ids, prediction.box_scores,
                           cam.camera_info, prediction.frame_scores)

    def _monitor_settings(self) -> tuple[str, Optional[dict[str, float]]]:
        """The monitor's default score name and its thresholds (None while the checkpoint is uncalibrated)."""
        name = self.predictor.monitor_default
        return name, self.predictor.monitor_thresholds.get(name)

    # ------------------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        steady = self._steady.now().nanoseconds * 1e-9
        window = self.param("diagnostics_window_s")
        counts = self.counters.snapshot()
        recent = self.counters.recent()
        lat50, lat95 = self.latency_ms.get((50, 95))
        inf50, inf95 = self.inference_ms.get((50, 95))
        device = str(self.predictor.device) if self.predictor else "none"
        values = {
            "model": self.predictor.meta.model.encoder.name if self.predictor else "none",
            "device": device,
            "input_rate_hz": f"{self.input_rate.rate(steady):.2f}",
            "output_rate_hz": f"{self.output_rate.rate(steady):.2f}",
            "latency_p50_ms": f"{lat50:.1f}",
            "latency_p95_ms": f"{lat95:.1f}",
            "inference_p50_ms": f"{inf50:.1f}",
            "inference_p95_ms": f"{inf95:.1f}",
            "gpu_memory_mb": self._gpu_memory_mb(),
            "host_rss_mb": f"{_rss_mb():.0f}",
            "window_s": f"{window:g}",
        }
        for name in ("published", "batches", "dropped", "stale", "rejected", "inference_errors"):
            values[name] = str(counts.get(name, 0))
        values.update({k: str(v) for k, v in sorted(counts.items()) if k.startswith(("rejected.", "published."))})
        node = self.get_name()
        statuses = [diagnostics.status(f"{node}: inference", device,
                                       diagnostics.inference_checks(recent, window, self._last_error), values)]
        expected, tolerance = self.param("expected_rate_hz"), self.param("rate_tolerance")
        for cam in self.cameras:
            state = diagnostics.InputState(
                topic=cam.input_topic, subscribed=bool(cam.subscriptions), rate_hz=cam.input_rate.rate(steady),
                frames_in_window=cam.input_rate.count(steady),
                since_last_s=None if cam.last_frame is None else steady - cam.last_frame)
            statuses.append(diagnostics.status(
                f"{node}: input {cam.topics.image}", device,
                diagnostics.input_checks(state, self.param("stale_input_s"), expected, tolerance),
                diagnostics.input_values(state, window, expected, tolerance)))
            if self.predictor is not None and self.predictor.has_seg:
                name, thresholds = self._monitor_settings()
                scores = cam.frame_scores.values(steady)
                statuses.append(diagnostics.status(
                    f"{node}: domain monitor {cam.topics.image}", device,
                    diagnostics.monitor_checks(scores, thresholds, window),
                    diagnostics.monitor_values(scores, thresholds, name,
                                               (self.predictor.meta.monitor or {}).get("calibration"))))
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def _gpu_memory_mb(self) -> str:
        if self.predictor is None or self.predictor.device.type != "cuda":
            return "n/a"
        import torch

        return f"{torch.cuda.memory_allocated(self.predictor.device) / 2**20:.0f}"


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _autostart(node: VLTSegNode) -> bool:
    """Configure and activate; False (with a FATAL line) when a transition failed, True when both succeeded or a
    shutdown request stopped them (not a failure)."""
    for name, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
        if node.stopping:
            return True
        if trigger() != TransitionCallbackReturn.SUCCESS and not node.stopping:
            node.get_logger().fatal(f"{name} failed; see the error above")
            return False
    return True


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``vltseg_node`` (``ros2 run vltseg_ros vltseg_node --ros-args ...``): 0 after SIGINT or
    SIGTERM, 1 when autostart's configure or activate failed.

    The main thread only waits for a signal; a lifecycle thread runs autostart and then spins. On a signal the node
    stops in order: transitions give up at their next step, the inference thread ends (``request_stop``), the
    lifecycle thread returns, then the shutdown transition, the node and the context. rclpy's own signal handlers
    are off (they would shut the context down under a running transition). What is still running after
    ``STOP_GRACE_S`` (a warm-up compiling in native code, a frame in a long forward pass) is left behind: the
    process exits at once with status 0, well before ``ros2 launch`` escalates to SIGTERM (5 s)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from rclpy.task import Future

    stop = STOP.install()
    if stop.requested:  # SIGINT/SIGTERM while importing
        print(f"vltseg_node: {stop.name} while starting: exiting", file=sys.stderr, flush=True)
        return 0
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = VLTSegNode()
    except BaseException:
        rclpy.try_shutdown()
        raise
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stopped: Future = Future()
    outcome: dict[str, Any] = {"code": 0}

    def run_lifecycle() -> None:
        try:
            if node.param("autostart") and not _autostart(node):
                outcome["code"] = 1
                return
            executor.spin_until_future_complete(stopped)
        except BaseException as exc:  # re-raised by the main thread, after the clean-up
            outcome["error"] = exc
        finally:
            outcome["done"] = True
            stop.wake()

    runner = threading.Thread(target=run_lifecycle, name="vltseg-lifecycle", daemon=True)
    runner.start()
    while "done" not in outcome and not stop.wait():
        pass
    if stop.requested:
        exit_at_deadline(stop)  # a clean-up that hangs (in DDS, say) still ends the process, with status 0
        node.log("info", f"{stop.name}: shutting down")
        node.request_stop()
        stopped.set_result(stop.signum)  # wakes the executor
        runner.join(stop.remaining(STOP_GRACE_S))
        busy = f"the {node._state_machine.current_state[1]} transition" if runner.is_alive() else None
        if busy is None and not node.wait_for_inference(stop.remaining(STOP_GRACE_S)):
            busy = "the inference of a frame"
        if busy is not None:
            node.log("info", f"{busy} is still running after {STOP_GRACE_S:g} s: exiting without waiting for it")
            exit_now(0)
    try:
        if node._state_machine.current_state[1] in ("unconfigured", "inactive", "active"):
            node.trigger_shutdown()
        if stop.requested:
            node.log("info", "stopped")
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if "error" in outcome:
        raise outcome["error"]
    if stop.requested:
        # ROS is shut down in order; what is left is the interpreter's teardown of torch and the other modules
        # (1.5 s on an idle 2-core machine, several on a busy one), which would push the exit towards the 5 s after
        # which ros2 launch escalates. Nothing in it matters to a stopping node.
        exit_now(0)
    return outcome["code"]
