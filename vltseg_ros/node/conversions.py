"""sensor_msgs Image/CompressedImage <-> numpy, without cv_bridge on the hot path.

Raw images become zero-copy numpy views (``step`` row padding honoured); colour order is reported, not converted,
because the predictor flips channels on the device. Encodings outside the common set go through cv_bridge where
the ROS install provides it (the PyPI ``cv-bridge`` is broken with OpenCV 5 / numpy 2 and is never used).
"""
from __future__ import annotations

import array
from typing import Optional

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

try:  # only on full ROS installs
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None

# encoding -> (channels, colour order as the predictor understands it, cv2 conversion to 3-channel or None)
_ENCODINGS = {
    "rgb8": (3, "RGB", None),
    "bgr8": (3, "BGR", None),
    "rgba8": (4, "RGB", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "BGR", cv2.COLOR_BGRA2BGR),
    "mono8": (1, "RGB", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, "RGB", cv2.COLOR_GRAY2RGB),
    "8UC3": (3, "BGR", None),
}

MAX_PIXELS = 8192 * 8192
"""Images larger than this are rejected: such a size is a corrupt header, not a camera."""


class ImageError(ValueError):
    """A message cannot be turned into an image; the message says why."""


def image_to_numpy(msg: Image, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Image message -> (HxWx3 uint8 array, "RGB"|"BGR"). A view of ``msg.data`` where the encoding allows."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageError(f"zero-size image {width}x{height}")
    if height * width > max_pixels:
        raise ImageError(f"image {width}x{height} exceeds the {max_pixels}-pixel limit")
    spec = _ENCODINGS.get(msg.encoding)
    if spec is None:
        return _via_cv_bridge(msg)
    channels, order, conversion = spec
    if step < width * channels:
        raise ImageError(f"step {step} is smaller than width*channels = {width * channels} for {msg.encoding}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size < height * step:
        raise ImageError(f"data has {data.size} bytes, expected height*step = {height * step}")
    rows = data[: height * step].reshape(height, step)[:, : width * channels]
    image = rows.reshape(height, width, channels)
    if conversion is not None:
        image = cv2.cvtColor(image, conversion)
    return image, order


def _via_cv_bridge(msg: Image) -> tuple[np.ndarray, str]:
    if CvBridge is None:
        supported = ", ".join(sorted(_ENCODINGS))
        raise ImageError(f"unsupported encoding {msg.encoding!r} (supported: {supported}; others need cv_bridge)")
    try:
        return CvBridge().imgmsg_to_cv2(msg, desired_encoding="bgr8"), "BGR"
    except Exception as exc:  # cv_bridge raises its own error types
        raise ImageError(f"cv_bridge cannot convert encoding {msg.encoding!r}: {exc}") from exc


def compressed_to_numpy(msg: CompressedImage, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """CompressedImage (JPEG/PNG) -> (HxWx3 uint8 BGR array, "BGR")."""
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size == 0:
        raise ImageError(f"empty compressed image (format {msg.format!r})")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"cannot decode {data.size}-byte compressed image (format {msg.format!r})")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"decoded image {image.shape[1]}x{image.shape[0]} exceeds the {max_pixels}-pixel limit")
    return image, "BGR"


def is_jpeg(msg: CompressedImage) -> bool:
    """Whether a CompressedImage holds a JPEG (by its format string, or the JPEG magic bytes)."""
    return "jpeg" in msg.format.lower() or "jpg" in msg.format.lower() or bytes(msg.data[:2]) == b"\xff\xd8"


def jpeg_to_tensor(msg: CompressedImage, device, max_pixels: int = MAX_PIXELS):
    """JPEG CompressedImage -> (HxWx3 uint8 RGB torch tensor on ``device``, "RGB"), decoded by torchvision
    (nvJPEG on CUDA), so the frame never exists on the host."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size == 0:
        raise ImageError(f"empty compressed image (format {msg.format!r})")
    try:
        image = decode_jpeg(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        raise ImageError(f"cannot decode {data.size}-byte JPEG (format {msg.format!r}): {exc}") from exc
    if image.shape[1] * image.shape[2] > max_pixels:
        raise ImageError(f"decoded image {image.shape[2]}x{image.shape[1]} exceeds the {max_pixels}-pixel limit")
    return image.permute(1, 2, 0), "RGB"


def numpy_to_image(array_: np.ndarray, encoding: str, header, out: Optional[Image] = None) -> Image:
    """HxW or HxWxC uint8/float32 array -> Image with the given encoding and header (one memory copy)."""
    msg = out or Image()
    msg.header = header
    msg.height, msg.width = int(array_.shape[0]), int(array_.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    contiguous = np.ascontiguousarray(array_)
    msg.step = int(contiguous.strides[0])
    data = array.array("B")
    data.frombytes(contiguous.reshape(-1).view(np.uint8).data)  # no per-element conversion (stack.md §8.3)
    msg.data = data
    return msg
