"""The node's topic names: the relative names it uses per camera, and the absolute topics they become under a
namespace and remappings (as rcl resolves them). Plain Python (no rclpy, no launch), so launch files of any
distribution and the tests use the same naming as the node."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class CameraTopics:
    """Node-side names of one camera; ``camera`` '' = no camera namespace."""

    camera: str

    @property
    def _prefix(self) -> str:
        return f"{self.camera.strip('/')}/" if self.camera.strip("/") else ""

    @property
    def image(self) -> str:
        """Raw image input."""
        return f"{self._prefix}image"

    @property
    def compressed(self) -> str:
        """Compressed image input (image_transport's naming)."""
        return f"{self.image}/compressed"

    @property
    def camera_info(self) -> str:
        """CameraInfo input, next to the image."""
        return f"{self._prefix}camera_info"

    def output(self, name: str) -> str:
        """Private output topic ``~/<camera>/<name>``."""
        return f"~/{self._prefix}{name}"


def sibling_camera_info(image_topic: str) -> str:
    """The camera_info topic next to an image topic (image_pipeline's convention): /cam/image_raw -> /cam/camera_info."""
    head, slash, _ = image_topic.rstrip("/").rpartition("/")
    return f"{head}/camera_info" if slash else "camera_info"


def expand(name: str, namespace: str, node_name: str) -> str:
    """Absolute form of a topic name: ``~`` is the node's namespace and name, relative names join the namespace."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("/"):
        return name
    if name == "~" or name.startswith("~/"):
        return f"{ns}/{node_name}{name[1:]}"
    return f"{ns}/{name}"


def resolve(name: str, namespace: str, node_name: str,
            remappings: Optional[Iterable[tuple[str, str]]] = None) -> str:
    """The topic a node-side ``name`` ends up on: the first remapping rule whose (expanded) source matches wins."""
    full = expand(name, namespace, node_name)
    for source, target in remappings or ():
        if expand(source, namespace, node_name) == full:
            return expand(target, namespace, node_name)
    return full
