"""Buffers that pair the node's inputs by stamp, and the single frame slot of its worker.

* :class:`StampPairer`: colour images and ``Detection2DArray`` messages of exactly the same stamp
  (a detector answers one image; either message may arrive first).
* :class:`DepthBuffer`: the depth image nearest a colour image's stamp, within a skew;
  :func:`usable_depth` says whether it can be used (the node and the bag command share it).
* :class:`FrameSlot`: newest frame wins; an unprocessed frame that is overwritten is counted.

All are thread-safe (the executor thread fills them, the worker thread takes from the slot).
Stamps are ``builtin_interfaces/Time``; :func:`stamp_ns` is the one conversion.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["stamp_ns", "StampPairer", "DepthBuffer", "FrameSlot", "DEPTH_MAX_SKEW_S", "usable_depth"]

#: Depth images whose stamp is further than this from the colour image's are not used (s).
DEPTH_MAX_SKEW_S = 0.1


def stamp_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` → integer nanoseconds (exact, for pairing messages by stamp)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _take(buffer: deque, want: int, stamp_of: Callable[[Any], Any]) -> Any:
    """Remove and return the item of ``buffer`` stamped ``want`` ns (None if none)."""
    for item in buffer:
        if stamp_ns(stamp_of(item)) == want:
            buffer.remove(item)
            return item
    return None


class StampPairer:
    """Pairs images with detection arrays of the same stamp.

    Keeps the last ``capacity`` images (with their arrival time) and up to ``capacity`` arrays
    that came before their image; arrays pushed out unmatched are counted in :attr:`unmatched`.
    """

    def __init__(self, capacity: int = 30):
        self._lock = threading.Lock()
        self._images: deque[tuple[Any, float]] = deque(maxlen=capacity)  # newest last
        self._pending: deque[Any] = deque()
        self._capacity = capacity
        self.unmatched = 0

    def add_image(self, image: Any, received: float) -> Any:
        """Buffer ``image``; returns the detection array already waiting for it, else None."""
        with self._lock:
            self._images.append((image, received))
            return _take(self._pending, stamp_ns(image.header.stamp), lambda d: d.header.stamp)

    def add_detections(self, detections: Any) -> tuple[tuple[Any, float] | None, bool]:
        """Pair ``detections`` with its buffered image.

        Returns ``((image, received), False)`` when paired, else ``(None, older)`` after keeping
        the array for its image; ``older`` is True when it is older than every buffered image (the
        detector is behind, or on another clock).
        """
        want = stamp_ns(detections.header.stamp)
        with self._lock:
            pair = _take(self._images, want, lambda item: item[0].header.stamp)
            if pair is not None:
                return pair, False
            older = bool(self._images) and want < stamp_ns(self._images[0][0].header.stamp)
            self._pending.append(detections)
            while len(self._pending) > self._capacity:
                self._pending.popleft()
                self.unmatched += 1
            return None, older


class DepthBuffer:
    """The last ``capacity`` depth images, to find the one nearest a colour image's stamp."""

    def __init__(self, capacity: int = 10):
        self._lock = threading.Lock()
        self._depths: deque[Any] = deque(maxlen=capacity)

    def add(self, depth: Any) -> None:
        with self._lock:
            self._depths.append(depth)

    def closest(self, stamp: Any) -> tuple[Any | None, float]:
        """The buffered depth image with the stamp nearest ``stamp`` and that difference (s); ``(None, inf)``
        when there is none."""
        t = stamp_ns(stamp)
        with self._lock:
            depths = list(self._depths)
        if not depths:
            return None, math.inf
        best = min(depths, key=lambda d: abs(stamp_ns(d.header.stamp) - t))
        return best, 1e-9 * abs(stamp_ns(best.header.stamp) - t)


class FrameSlot:
    """Single-slot buffer: the newest frame wins; overwritten unprocessed frames are counted as dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float) -> Any:
        """The newest frame, or ``None`` after ``timeout`` seconds without one."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def usable_depth(depth: Any, skew_s: float, K: Any) -> tuple[Any, tuple[str, str] | None]:
    """The depth image (m, ``(H, W)`` float) of the ``sensor_msgs/Image`` ``depth`` found ``skew_s``
    seconds from the colour image, with intrinsics ``K`` (or ``None``); ``(None, None)`` without one.

    Returns:
        ``(depth_m, None)``, or ``(None, (kind, text))`` saying why it is not used: ``"depth_skew"``
        (further than :data:`DEPTH_MAX_SKEW_S`) and ``"depth_no_info"`` (no intrinsics) are warnings,
        ``"depth"`` a bad depth image (an error: wrong encoding, size, data).
    """
    from pose_distribution_ros.image_conversion import ImageConversionError, depth_image_to_meters

    if depth is None:
        return None, None
    if skew_s > DEPTH_MAX_SKEW_S:
        return None, ("depth_skew", f"nearest depth image is {skew_s * 1000:.0f} ms from the colour image (more "
                                    f"than {DEPTH_MAX_SKEW_S * 1000:.0f} ms): not used")  # fmt: skip
    if K is None:
        return None, ("depth_no_info", "depth image but no matching camera_info: depth not used")
    try:
        return depth_image_to_meters(depth), None
    except ImageConversionError as exc:
        return None, ("depth", f"bad depth: {exc}")
