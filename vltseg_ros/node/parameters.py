"""The node's parameters: one table with type, default, description and constraint per parameter.

The table is the single source for declaration (with descriptors), validation, ``config/vltseg.yaml`` (which
launch/vltseg.launch.py turns into one launch argument per parameter) and the README's parameter table. The
``publish.*`` switches come from the output table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from ..visualize import DISPLAY_SCORE_THRESHOLD
from .outputs import OUTPUTS

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAY_TYPES = {
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    str: ParameterType.PARAMETER_STRING_ARRAY,
}


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter."""

    name: str
    default: Any
    description: str
    kind: type  # element type; arrays have a list default
    read_only: bool = False  # fixed once the node is configured (model-shape and topic parameters)
    choices: Optional[Sequence[str]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    length: Optional[int] = None  # exact array length

    @property
    def is_array(self) -> bool:
        """Whether the parameter holds a list."""
        return isinstance(self.default, list)

    def descriptor(self) -> ParameterDescriptor:
        """The ROS descriptor: type, description, constraints, range and read-only flag."""
        constraints = []
        if self.choices:
            constraints.append("one of: " + ", ".join(self.choices))
        if self.length:
            constraints.append(f"exactly {self.length} values")
        desc = ParameterDescriptor(
            name=self.name,
            type=(_ARRAY_TYPES if self.is_array else _TYPES)[self.kind],
            description=self.description,
            additional_constraints="; ".join(constraints),
            read_only=self.read_only,
        )
        if not self.is_array and self.kind is float and self.low is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=self.low, to_value=self.high, step=0.0)]
        elif not self.is_array and self.kind is int and self.low is not None:
            desc.integer_range = [IntegerRange(from_value=int(self.low), to_value=int(self.high), step=0)]
        return desc

    def check(self, value: Any) -> Optional[str]:
        """None when ``value`` is acceptable, else the reason it is not."""
        values = list(value) if self.is_array else [value]
        if self.length is not None and len(values) != self.length:
            return f"{self.name}: expected {self.length} values, got {len(values)}"
        for v in values:
            if self.choices is not None and v not in self.choices:
                return f"{self.name}: {v!r} is not one of {list(self.choices)}"
            if self.low is not None and not self.low <= v <= self.high:
                return f"{self.name}: {v} is outside [{self.low}, {self.high}]"
        return None


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("checkpoint", "", "path of the .safetensors checkpoint (required; never downloaded)", str,
              read_only=True),
    ParamSpec("device", "auto", "torch device: auto (cuda if available), cpu, cuda or cuda:N", str, read_only=True),
    ParamSpec("precision", "auto", "autocast precision; auto = bf16 where the device runs it natively, else fp32",
              str, read_only=True, choices=("auto", "fp32", "bf16", "fp16")),
    ParamSpec("monitor_score", "feature_shift", "frame score the domain-shift monitor decides on (~/frame_score, "
              "/diagnostics): feature_shift, or the model-free image_baseline", str,
              choices=("feature_shift", "image_baseline")),
    ParamSpec("compile", False, "torch.compile the network at configure time (slow first start, faster frames)",
              bool, read_only=True),
    ParamSpec("compile_mode", "default", "torch.compile mode; reduce-overhead = CUDA graphs (static shapes)", str,
              read_only=True, choices=("default", "reduce-overhead", "max-autotune")),
    ParamSpec("compile_cache_dir", "~/.cache/vltseg_ros/inductor", "compiled-kernel cache, so restarts skip "
                                                                    "most of the compile", str, read_only=True),
    ParamSpec("inference.mode", "checkpoint", "checkpoint = the checkpoint's own settings; whole or slide override",
              str, read_only=True, choices=("checkpoint", "whole", "slide")),
    ParamSpec("inference.size", [512, 1024], "whole mode: network input [height, width]", int, read_only=True,
              low=16, high=8192, length=2),
    ParamSpec("inference.fit_size", [512, 1024], "slide mode: resize to fit [height, width] first", int,
              read_only=True, low=16, high=8192, length=2),
    ParamSpec("inference.window", 512, "slide mode: window size in pixels", int, read_only=True, low=16, high=8192),
    ParamSpec("inference.stride", 426, "slide mode: window stride in pixels", int, read_only=True, low=1, high=8192),
    ParamSpec("score_threshold", DISPLAY_SCORE_THRESHOLD, "minimum detection score", float, low=0.0, high=1.0),
    ParamSpec("class_filter", [], "class names to keep (empty = all); other classes become 255 in masks and are "
                                  "dropped from detections", str),
    ParamSpec("cameras", [""], "camera namespaces; '' = no namespace (topics image, camera_info). Frames that "
                               "arrive together from several cameras share one forward pass", str, read_only=True),
    ParamSpec("input_transport", "raw", "raw: sensor_msgs/Image on <camera>/image; compressed: CompressedImage on "
                                        "<camera>/image/compressed", str, read_only=True, choices=("raw", "compressed")),
    ParamSpec("jpeg_decoder", "auto", "compressed input: auto = torchvision/nvJPEG straight to the GPU when the "
                                      "model runs on CUDA, else OpenCV", str, read_only=True,
              choices=("auto", "opencv", "torchvision")),
    ParamSpec("use_camera_info", False, "subscribe to <camera>/camera_info and reject frames whose size disagrees",
              bool, read_only=True),
    ParamSpec("input_qos.reliability", "best_effort", "input QoS reliability (best_effort also matches reliable "
                                                      "publishers)", str, read_only=True,
              choices=("best_effort", "reliable")),
    ParamSpec("input_qos.depth", 1, "input queue depth (1 = always the newest frame)", int, read_only=True,
              low=1, high=100),
    ParamSpec("output_qos.depth", 5, "output queue depth (reliable, volatile)", int, read_only=True, low=1, high=100),
    ParamSpec("frame_queue", 1, "frames kept per camera while the model is busy: 1 = only the newest (stale frames "
                                "are dropped and counted); more = score every frame of a replay, latency grows", int,
              read_only=True, low=1, high=1000),
    ParamSpec("max_frame_age_s", 0.0, "drop frames older than this (node clock - header stamp); 0 = off", float,
              low=0.0, high=3600.0),
    ParamSpec("batch_timeout_ms", 10.0, "with several cameras: how long to wait for the other cameras' frames",
              float, low=0.0, high=1000.0),
    ParamSpec("overlay_alpha", 0.5, "mask opacity in the overlay", float, low=0.0, high=1.0),
    ParamSpec("always_on", False, "subscribe and infer even while no output has a subscriber, and publish every "
                                  "enabled output (default: lazy, like image_pipeline)", bool),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics messages", float, read_only=True,
              low=0.05, high=60.0),
    ParamSpec("diagnostics_window_s", 10.0, "diagnostics levels and rates cover this many recent seconds", float,
              read_only=True, low=0.1, high=3600.0),
    ParamSpec("stale_input_s", 3.0, "a subscribed camera without a frame for this long is reported stale (WARN); "
                                    "0 = off", float, low=0.0, high=3600.0),
    ParamSpec("expected_rate_hz", 0.0, "expected frame rate of each camera; /diagnostics warns outside "
                                       "rate_tolerance; 0 = no check", float, low=0.0, high=1000.0),
    ParamSpec("rate_tolerance", 0.1, "accepted relative deviation from expected_rate_hz", float, low=0.0, high=1.0),
    ParamSpec("autostart", True, "walk the lifecycle to active at start-up (plain ros2 run)", bool, read_only=True),
) + tuple(ParamSpec(o.parameter, o.default, f"publish ~/{o.name} ({o.type_name}) while it has a subscriber", bool)
          for o in OUTPUTS if o.parameter)

SPECS = {spec.name: spec for spec in PARAMETERS}
