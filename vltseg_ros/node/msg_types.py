"""The rclpy side of ``vltseg_ros.codec``: message classes by ROS type name, from the installed Python bindings."""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Optional

from ..codec import MessageTypes, rclpy_bytes


@lru_cache(maxsize=None)
def message_class(type_name: str) -> Optional[type]:
    """The rclpy class of ``pkg/msg/Type`` (or ``pkg/Type``), or None when its package is not installed."""
    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        return None
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        return None


def _required_class(type_name: str) -> type:
    cls = message_class(type_name)
    if cls is None:
        raise KeyError(f"no Python bindings for {type_name} are installed")
    return cls


RCLPY_TYPES = MessageTypes(_required_class, rclpy_bytes)
"""Builds rclpy messages with ``vltseg_ros.codec``."""
