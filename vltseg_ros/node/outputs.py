"""The node's outputs, one table: topic name, message type, how the message is built, its ``publish.*`` switch and
its README row. The node creates, switches and lazily computes its outputs from this table alone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from sensor_msgs.msg import Image
from vision_msgs.msg import Classification, Detection2DArray, LabelInfo
from visualization_msgs.msg import MarkerArray

from . import conversions as conv


@dataclass(frozen=True)
class Output:
    """One published topic, ``~/<name>`` (``~/<camera>/<name>`` with several cameras)."""

    name: str
    msg_type: type
    description: str  # the README's notes column
    build: Optional[Callable[[conv.FrameResult, conv.Rendering], Any]] = None  # None: latched, set at configure
    needs: Optional[str] = None  # "seg" or "det": only for checkpoints with that head
    default: bool = True  # default of the publish.<name> switch

    @property
    def latched(self) -> bool:
        """Published once per configuration (transient local), not per frame; not switchable, never lazy."""
        return self.build is None

    @property
    def parameter(self) -> Optional[str]:
        """The switch that turns this output off, or None for a latched output."""
        return None if self.latched else f"publish.{self.name}"

    @property
    def type_name(self) -> str:
        """``package/Type`` of the message."""
        return f"{self.msg_type.__module__.split('.')[0]}/{self.msg_type.__name__}"

    def readme_row(self) -> str:
        """The row of the README's topic table."""
        return f"| `~/{self.name}` | pub `{self.type_name}` | {self.description} |"


OUTPUTS: tuple[Output, ...] = (
    Output("label_mask", Image, "mono8 trainIds at the source resolution, 255 = unlabeled", conv.label_mask_msg,
           needs="seg"),
    Output("label_info", LabelInfo, "transient local: class id → name, and the score threshold"),
    Output("colored_mask", Image, "rgb8, checkpoint palette", conv.colored_mask_msg, needs="seg"),
    Output("overlay", Image, "rgb8: mask blended, boxes drawn", conv.overlay_msg),
    Output("detections", Detection2DArray, "`class_id` = the class id as a string (same ids as the mask; `car` = "
                                           "`\"13\"`), score, bbox centre/size in pixels", conv.detections_msg,
           needs="det"),
    Output("detection_markers", MarkerArray, "the boxes as RViz line strips and labels, 1 m in front of the camera "
                                             "in the image's frame", conv.detection_markers_msg, needs="det"),
    Output("confidence", Image, "32FC1 score of the winning class, 0..1 (computed only while subscribed)",
           conv.confidence_msg, needs="seg"),
    Output("frame_score", Classification, "the domain-shift monitor, per frame with the input's header: "
                                          "`results[0]` = decision (`in_domain`, `out_of_domain`, "
                                          "`far_out_of_domain`, `uncalibrated`) with the frame score (higher = "
                                          "more trustworthy), then each frame score by name",
           conv.frame_score_msg, needs="seg"),
)
