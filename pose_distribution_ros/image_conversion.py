"""``sensor_msgs/Image`` <-> numpy, without cv_bridge.

The project's own small converter for the encodings the node needs:

=========  ===========  ========  ==============================================
encoding   numpy dtype  channels  meaning
=========  ===========  ========  ==============================================
rgb8       uint8        3         colour, R G B
bgr8       uint8        3         colour, B G R
rgba8      uint8        4         colour with alpha
bgra8      uint8        4         colour with alpha, B G R A
mono8      uint8        1         grey
16UC1      uint16       1         depth in millimetres (REP 118), 0 = no data
32FC1      float32      1         depth in metres (REP 118), NaN / 0 = no data
=========  ===========  ========  ==============================================

It honours ``step`` (row padding) and ``is_bigendian``, and raises :class:`ImageConversionError`
(a ``ValueError``) naming the problem for an unsupported encoding, a zero-sized image, a ``step``
shorter than a row or ``data`` shorter than ``height * step``. For other encodings it delegates to
the ROS 2 ``cv_bridge`` when that is importable; the PyPI package ``cv_bridge`` (ROS 1, version
1.x) is never used. No ROS import happens at module import time except in the functions that
build or read messages, so the numpy side can be tested without ROS.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = [
    "ENCODINGS",
    "ImageConversionError",
    "image_to_numpy",
    "numpy_to_image",
    "image_to_rgb",
    "depth_image_to_meters",
    "ros2_cv_bridge",
]

#: encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_DEPTH = ("16UC1", "32FC1")


class ImageConversionError(ValueError):
    """The image message cannot be converted; the message says why.

    ``kind`` says which problem it is, for callers that report problems separately:
    ``"encoding"`` (unsupported or wrong encoding), ``"size"`` (zero-sized), ``"data"`` (``data``
    shorter than ``height * step`` or ``step`` shorter than a row), ``"array"`` (numpy side).
    """

    def __init__(self, message: str, kind: str = "data"):
        super().__init__(message)
        self.kind = kind


_BRIDGE: Any = None
_BRIDGE_CHECKED = False


def ros2_cv_bridge() -> Any | None:
    """A ROS 2 ``cv_bridge.CvBridge`` when one is importable, else ``None``.

    ROS 2's cv_bridge has version >= 2 (Foxy 2.x, Humble 3.x, Jazzy 4.x); the PyPI ``cv_bridge``
    (a ROS 1 copy, 1.x) is refused.
    """
    global _BRIDGE, _BRIDGE_CHECKED
    if not _BRIDGE_CHECKED:
        _BRIDGE_CHECKED = True
        try:
            from importlib.metadata import PackageNotFoundError, version

            try:
                major = int(version("cv_bridge").split(".")[0])
            except PackageNotFoundError:
                major = None
            if major is not None and major >= 2:
                from cv_bridge import CvBridge

                _BRIDGE = CvBridge()
        except Exception:  # no cv2, broken install...: use our own converter only
            _BRIDGE = None
    return _BRIDGE


def _describe(msg: Any) -> str:
    return f"{msg.width}x{msg.height} {msg.encoding!r} image (step {msg.step}, {len(msg.data)} bytes)"


def image_to_numpy(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` → ``(H, W)`` (one channel) or ``(H, W, C)`` array in native byte order.

    The array has the encoding's dtype (see :data:`ENCODINGS`) and is a copy (padding dropped).

    Raises:
        ImageConversionError: unsupported encoding (and no ROS 2 cv_bridge), zero size, ``step``
            shorter than a row, or ``data`` shorter than ``height * step``.
    """
    encoding = msg.encoding
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"zero-sized image: {_describe(msg)}", "size")
    if encoding not in ENCODINGS:
        bridge = ros2_cv_bridge()
        if bridge is not None:
            try:
                return np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
            except Exception as exc:
                raise ImageConversionError(f"cv_bridge cannot convert {_describe(msg)}: {exc}", "encoding") from exc
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r} ({_describe(msg)}); supported: {', '.join(ENCODINGS)}",
            "encoding",
        )
    dtype, channels = ENCODINGS[encoding]
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is shorter than one row ({row_bytes} bytes) in {_describe(msg)}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)  # bytes or array.array('B'), no copy
    if buf.size < height * step:
        raise ImageConversionError(
            f"image data too short: {buf.size} bytes < height * step = {height * step} in {_describe(msg)}"
        )
    rows = buf[: height * step].reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    arr = np.ascontiguousarray(rows).view(wire).reshape(height, width, channels)
    arr = arr.astype(dtype.newbyteorder("="), copy=True)  # native order, owns its memory
    return arr[:, :, 0] if channels == 1 else arr


def numpy_to_image(array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """``(H, W)`` / ``(H, W, C)`` array → ``sensor_msgs/Image`` (native byte order, no padding).

    Raises:
        ImageConversionError: unsupported encoding, or an array whose dtype / channels do not
            match it, or a zero-sized array.
    """
    from sensor_msgs.msg import Image

    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}", "array"
        )
    dtype, channels = ENCODINGS[encoding]
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels or a.dtype != dtype:
        raise ImageConversionError(
            f"{encoding} needs an array (H, W{', ' + str(channels) if channels > 1 else ''}) of {dtype}, "
            f"got {np.asarray(array).shape} {np.asarray(array).dtype}",
            "array",
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageConversionError(f"zero-sized image array {a.shape}", "array")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = np.ascontiguousarray(a).tobytes()
    return msg


def image_to_rgb(msg: Any) -> np.ndarray:
    """Colour ``sensor_msgs/Image`` → RGB ``(H, W, 3)`` uint8 (alpha dropped, mono replicated).

    Raises:
        ImageConversionError: as :func:`image_to_numpy`, or a depth encoding.
    """
    if msg.encoding in _DEPTH:
        raise ImageConversionError(f"expected a colour image, got depth encoding {msg.encoding!r}", "encoding")
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if enc == "mono8" or arr.ndim == 2:
        if arr.dtype != np.uint8:
            raise ImageConversionError(f"expected an 8-bit colour image, got {arr.dtype} from {enc!r}", "encoding")
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.shape[2] not in (3, 4):
        raise ImageConversionError(
            f"expected an 8-bit colour image, got {arr.shape} {arr.dtype} from {enc!r}", "encoding"
        )
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


def depth_image_to_meters(msg: Any) -> np.ndarray:
    """Depth ``sensor_msgs/Image`` (``16UC1`` mm or ``32FC1`` m) → ``(H, W)`` float32 metres.

    Values that are no measurement (0, NaN, +-inf, negative) are kept as they are:
    :mod:`pose_core.pinhole` is the one place that decides what a valid depth is, and can then
    say what the invalid ones were.

    Raises:
        ImageConversionError: as :func:`image_to_numpy`, or a non-depth encoding.
    """
    if msg.encoding not in _DEPTH:
        raise ImageConversionError(f"depth image must be 16UC1 (mm) or 32FC1 (m), got {msg.encoding!r}", "encoding")
    arr = image_to_numpy(msg)
    if msg.encoding == "16UC1":
        return arr.astype(np.float32) / 1000.0
    return arr.astype(np.float32, copy=True)
