"""``vltseg_node``: camera images in; label masks, colored masks, overlays and detections out.

A lifecycle node. Configure loads the checkpoint and warms the model up; activate subscribes; deactivate unsubscribes
and moves the model off the GPU; by default the node walks itself to active so plain ``ros2 run`` works.
Subscription callbacks only convert and park the newest frame per camera in a slot; an inference thread takes
whatever the slots hold (several cameras -> one batch), so a slow model drops stale frames instead of queueing them.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import (
    Detection2D, Detection2DArray, LabelInfo, ObjectHypothesis, ObjectHypothesisWithPose, VisionClass,
)

from ..labels import IGNORE_INDEX
from ..visualize import draw_overlay, palette_lut
from .conversions import ImageError, compressed_to_numpy, image_to_numpy, is_jpeg, jpeg_to_tensor, numpy_to_image
from .parameters import PARAMETERS, SPECS
from .stats import Counters, Percentiles, RateWindow


@dataclass
class Frame:
    """One received image waiting for inference."""

    camera: int
    header: Any
    image: Any  # HxWx3 uint8 numpy view, or a device tensor when JPEGs are decoded on the GPU
    image_format: str
    received: float  # node-clock seconds


class CameraIO:
    """Topics of one camera: its input subscriptions and its output publishers."""

    def __init__(self, namespace: str):
        self.namespace = namespace.strip("/")
        prefix = f"{self.namespace}/" if self.namespace else ""
        self.image_topic = f"{prefix}image"
        self.camera_info_topic = f"{prefix}camera_info"
        self.output_prefix = f"~/{prefix}"
        self.subscriptions: list = []
        self.publishers: dict[str, Any] = {}
        self.camera_info: Optional[CameraInfo] = None


def warmup_batches(mode: str, compiled: bool, cameras: int, max_batch: int) -> list[int]:
    """Batch sizes to run at configure time. A compiled network has one graph per input shape, and frames from
    ``cameras`` cameras arrive in batches of 1..cameras, so each of those is compiled before the node goes live
    (not minutes into a drive). Sliding-window inference runs one image at a time, so one frame covers its shapes."""
    if not compiled or mode != "whole":
        return [1]
    return list(range(1, max(1, min(cameras, max_batch)) + 1))


class VLTSegNode(LifecycleNode):
    """Lifecycle node running a VLTSeg/VLTDet checkpoint on one or more cameras."""

    def __init__(self, node_name: str = "vltseg", **kwargs):
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self._declare(spec)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.predictor = None
        self.cameras: list[CameraIO] = []
        self.counters = Counters()
        self.input_rate = RateWindow()
        self.output_rate = RateWindow()
        self.latency_ms = Percentiles()
        self.inference_ms = Percentiles()
        self._slots: dict[int, collections.deque[Frame]] = {}  # camera -> frames waiting for inference
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._diag_pub = None
        self._diag_timer = None
        self._class_lut: Optional[np.ndarray] = None
        self._palette_lut: Optional[np.ndarray] = None
        self._keep_det_ids: Optional[set[int]] = None
        self._jpeg_device = None  # torch device for torchvision JPEG decoding, None = OpenCV

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
                self.predictor.score_threshold = float(p.value)
            if p.name == "class_filter" and self.predictor is not None:
                self._build_class_filter(list(p.value))
        return SetParametersResult(successful=True)

    def _build_class_filter(self, names: list[str]) -> None:
        classes = self.predictor.class_names
        unknown = sorted(set(names) - set(classes))
        if unknown:
            self.get_logger().warning(f"class_filter: unknown class names {unknown} are ignored")
        keep = {i for i, n in enumerate(classes) if n in names} if names else set(range(len(classes)))
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[sorted(keep)] = sorted(keep)
        self._class_lut = None if not names else lut
        self._keep_det_ids = None if not names else keep

    # ------------------------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the checkpoint, warm the model up, create publishers and publish the label map."""
        import torch

        from ..checkpoint import CheckpointError
        from ..config import ConfigError, InferenceConfig, validate_inference_config
        from ..predictor import Predictor

        path = self.param("checkpoint")
        if not path:
            self.get_logger().error("parameter 'checkpoint' is empty: give the path of a .safetensors checkpoint")
            return TransitionCallbackReturn.FAILURE
        device = self.param("device")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            predictor = Predictor.from_checkpoint(
                path, device=device, precision=self.param("precision"),
                score_threshold=self.param("score_threshold"),
                compile=self.param("compile_mode") if self.param("compile") else False,
                compile_cache_dir=self.param("compile_cache_dir"),
            )
            mode = self.param("inference.mode")
            if mode != "checkpoint":
                inference = InferenceConfig(
                    mode=mode, size=list(self.param("inference.size")),
                    fit_size=list(self.param("inference.fit_size")),
                    window=self.param("inference.window"), stride=self.param("inference.stride"),
                )
                validate_inference_config(inference)
                predictor.inference = inference
        except (CheckpointError, ConfigError, RuntimeError, ValueError) as exc:
            self.get_logger().error(f"cannot load checkpoint: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.predictor = predictor
        decoder = self.param("jpeg_decoder")
        use_torchvision = decoder == "torchvision" or (decoder == "auto" and predictor.device.type == "cuda")
        self._jpeg_device = predictor.device if use_torchvision else None
        self._palette_lut = palette_lut(predictor.palette)
        self._build_class_filter(list(self.param("class_filter")))
        started = time.perf_counter()
        size = predictor.inference.size if predictor.inference.mode == "whole" else predictor.inference.fit_size
        frame = np.zeros((size[0], size[1], 3), np.uint8)
        for batch in warmup_batches(predictor.inference.mode, bool(self.param("compile")),
                                    len(self.param("cameras")), predictor.max_batch):
            predictor.predict([frame] * batch)
        self.get_logger().info(
            f"loaded {path} ({predictor.meta.model.encoder.name}, {device}, {predictor.precision}); "
            f"warm-up {1000 * (time.perf_counter() - started):.0f} ms"
        )
        self._create_publishers()
        return TransitionCallbackReturn.SUCCESS

    def _create_publishers(self) -> None:
        out_qos = QoSProfile(depth=self.param("output_qos.depth"), reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        self.cameras = [CameraIO(ns) for ns in self.param("cameras")]
        label_info = LabelInfo(
            class_map=[VisionClass(class_id=i, class_name=n) for i, n in enumerate(self.predictor.class_names)],
            threshold=float(self.param("score_threshold")),
        )
        label_info.header.stamp = self.get_clock().now().to_msg()
        for cam in self.cameras:
            p = cam.output_prefix
            cam.publishers = {
                "label_mask": self.create_publisher(Image, p + "label_mask", out_qos),
                "colored_mask": self.create_publisher(Image, p + "colored_mask", out_qos),
                "overlay": self.create_publisher(Image, p + "overlay", out_qos),
                "detections": self.create_publisher(Detection2DArray, p + "detections", out_qos),
                "confidence": self.create_publisher(Image, p + "confidence", out_qos),
                "label_info": self.create_publisher(LabelInfo, p + "label_info", latched),
            }
            cam.publishers["label_info"].publish(label_info)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self.param("diagnostics_period_s"), self._publish_diagnostics)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Move the model to its device, subscribe, and start the inference thread."""
        self.predictor.model.to(self.predictor.device)
        reliability = (ReliabilityPolicy.BEST_EFFORT if self.param("input_qos.reliability") == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        in_qos = QoSProfile(depth=self.param("input_qos.depth"), reliability=reliability,
                            durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        compressed = self.param("input_transport") == "compressed"
        for index, cam in enumerate(self.cameras):
            if compressed:
                cam.subscriptions.append(self.create_subscription(
                    CompressedImage, cam.image_topic + "/compressed",
                    lambda msg, i=index: self._on_image(msg, i, compressed=True), in_qos))
            else:
                cam.subscriptions.append(self.create_subscription(
                    Image, cam.image_topic, lambda msg, i=index: self._on_image(msg, i, compressed=False), in_qos))
            if self.param("use_camera_info"):
                cam.subscriptions.append(self.create_subscription(
                    CameraInfo, cam.camera_info_topic, lambda msg, c=cam: self._on_camera_info(msg, c), in_qos))
        self._stop.clear()
        self._worker = threading.Thread(target=self._inference_loop, name="vltseg-inference", daemon=True)
        self._worker.start()
        topics = ", ".join(c.image_topic + ("/compressed" if compressed else "") for c in self.cameras)
        self.get_logger().info(f"active: subscribed to {topics}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe, stop the inference thread and free GPU memory."""
        self._unsubscribe()
        if self.predictor is not None and self.predictor.device.type == "cuda":
            import torch

            self.predictor.model.to("cpu")
            torch.cuda.empty_cache()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Destroy publishers and drop the model."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop everything from any state."""
        self._unsubscribe()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        self._stop_inference()
        for cam in self.cameras:
            for sub in cam.subscriptions:
                self.destroy_subscription(sub)
            cam.subscriptions.clear()

    def _release(self) -> None:
        for cam in self.cameras:
            for pub in cam.publishers.values():
                self.destroy_publisher(pub)
        self.cameras = []
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

    # ------------------------------------------------------------------------------------------------- input
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, reason: str, detail: str) -> None:
        self.counters.add("rejected")
        self.counters.add(f"rejected.{reason}")
        self.get_logger().warning(f"rejected frame ({reason}): {detail}", throttle_duration_sec=5.0)

    def _on_camera_info(self, msg: CameraInfo, cam: CameraIO) -> None:
        if msg.width <= 0 or msg.height <= 0:
            self._reject("camera_info", f"{cam.camera_info_topic} has zero size {msg.width}x{msg.height}")
            return
        cam.camera_info = msg

    def _on_image(self, msg, camera: int, compressed: bool) -> None:
        now = self._now()
        self.input_rate.tick(now)
        cam = self.cameras[camera]
        try:
            if not compressed:
                image, image_format = image_to_numpy(msg)
            elif self._jpeg_device is not None and is_jpeg(msg):
                image, image_format = jpeg_to_tensor(msg, self._jpeg_device)
            else:
                image, image_format = compressed_to_numpy(msg)
        except ImageError as exc:
            self._reject("compressed" if compressed else "image", f"{cam.image_topic}: {exc}")
            return
        info = cam.camera_info
        if info is not None and (info.width, info.height) != (image.shape[1], image.shape[0]):
            self._reject("camera_info", f"{cam.camera_info_topic} says {info.width}x{info.height}, "
                                        f"image is {image.shape[1]}x{image.shape[0]}")
            return
        frame = Frame(camera, msg.header, image, image_format, now)
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
                self.counters.add("inference_errors")
                self.get_logger().error(f"inference failed: {exc!r}", throttle_duration_sec=5.0)

    def _process(self, frames: list[Frame]) -> None:
        started = time.perf_counter()
        results = self.predictor.predict(
            [f.image for f in frames], image_format=[f.image_format for f in frames],
            return_confidence=self.param("publish.confidence"),
        )
        self.inference_ms.add(1000 * (time.perf_counter() - started))
        self.counters.add("batches")
        for frame, result in zip(frames, results):
            self._publish(frame, result)

    # ------------------------------------------------------------------------------------------------ output
    def _publish(self, frame: Frame, result) -> None:
        cam = self.cameras[frame.camera]
        pubs = cam.publishers
        header = frame.header
        label_map = result.label_map
        if label_map is not None and self._class_lut is not None:
            label_map = self._class_lut[label_map]
        keep = np.ones(len(result.box_class_ids), bool) if self._keep_det_ids is None else np.array(
            [int(c) in self._keep_det_ids for c in result.box_class_ids], bool)
        boxes, class_ids, scores = result.boxes[keep], result.box_class_ids[keep], result.box_scores[keep]
        if label_map is not None:
            if self.param("publish.label_mask"):
                pubs["label_mask"].publish(numpy_to_image(label_map, "mono8", header))
            if self.param("publish.colored_mask"):
                pubs["colored_mask"].publish(numpy_to_image(self._palette_lut[label_map], "rgb8", header))
            if self.param("publish.confidence") and result.confidence is not None:
                pubs["confidence"].publish(numpy_to_image(result.confidence, "32FC1", header))
        if self.param("publish.detections") and self.predictor.has_det:
            pubs["detections"].publish(self._detections(header, boxes, class_ids, scores))
        if self.param("publish.overlay") and pubs["overlay"].get_subscription_count() > 0:
            image = frame.image if isinstance(frame.image, np.ndarray) else frame.image.cpu().numpy()
            overlay = draw_overlay(image, frame.image_format, label_map, self._palette_lut, boxes, class_ids,
                                   scores, self.predictor.class_names, self.param("overlay_alpha"))
            pubs["overlay"].publish(numpy_to_image(overlay, "rgb8", header))
        now = self._now()
        self.output_rate.tick(now)
        self.latency_ms.add(1000 * (now - Time.from_msg(header.stamp).nanoseconds * 1e-9))
        self.counters.add("published")

    @staticmethod
    def _detections(header, boxes: np.ndarray, class_ids: np.ndarray, scores: np.ndarray) -> Detection2DArray:
        out = Detection2DArray(header=header)
        for (x1, y1, x2, y2), cid, score in zip(boxes.tolist(), class_ids.tolist(), scores.tolist()):
            det = Detection2D(header=header)
            det.bbox.center.position.x = (x1 + x2) / 2
            det.bbox.center.position.y = (y1 + y2) / 2
            det.bbox.size_x = x2 - x1
            det.bbox.size_y = y2 - y1
            det.results = [ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=str(cid), score=score))]
            out.detections.append(det)
        return out

    # ------------------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        now = self._now()
        counts = self.counters.snapshot()
        lat50, lat95 = self.latency_ms.get((50, 95))
        inf50, inf95 = self.inference_ms.get((50, 95))
        values = {
            "model": self.predictor.meta.model.encoder.name if self.predictor else "none",
            "device": str(self.predictor.device) if self.predictor else "none",
            "input_rate_hz": f"{self.input_rate.rate(now):.2f}",
            "output_rate_hz": f"{self.output_rate.rate(now):.2f}",
            "latency_p50_ms": f"{lat50:.1f}",
            "latency_p95_ms": f"{lat95:.1f}",
            "inference_p50_ms": f"{inf50:.1f}",
            "inference_p95_ms": f"{inf95:.1f}",
            "gpu_memory_mb": self._gpu_memory_mb(),
            "host_rss_mb": f"{_rss_mb():.0f}",
        }
        for name in ("published", "batches", "dropped", "stale", "rejected", "inference_errors"):
            values[name] = str(counts.get(name, 0))
        values.update({k: str(v) for k, v in sorted(counts.items()) if k.startswith("rejected.")})
        level, message = DiagnosticStatus.OK, "ok"
        if counts.get("inference_errors"):
            level, message = DiagnosticStatus.ERROR, "inference errors"
        elif counts.get("rejected"):
            level, message = DiagnosticStatus.WARN, "rejected input frames"
        status = DiagnosticStatus(
            level=level, name=f"{self.get_name()}: vltseg", message=message, hardware_id=values["device"],
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        msg = DiagnosticArray(status=[status])
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


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``vltseg_node`` (``ros2 run vltseg_ros vltseg_node --ros-args ...``)."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = VLTSegNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.param("autostart"):
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("configure failed; see the error above")
                code = 1
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                code = 1
        if code == 0:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if rclpy.ok():
            node.trigger_shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code
