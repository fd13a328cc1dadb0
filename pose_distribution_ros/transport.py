"""Camera streams that arrive whole: the shipped Fast DDS profile, and a monitor for frames lost in transport.

Large images (a 640x480 rgb8 frame is 0.9 MB) do not fit the default shared-memory segment of Fast
DDS, so between two processes on one host they go over UDP in fragments, and the default socket
buffer overflows: a best-effort subscription loses almost every frame, silently.
:func:`apply_default_profile` points the node's Fast DDS at ``config/fastdds.xml`` (why and what
it does: see there) unless the user has chosen a profile; :func:`socket_buffer_problem` says
when the kernel would cap its buffer; :class:`GapMonitor` tells, from the stamps of the frames
that do arrive, how many do not.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path

__all__ = ["PROFILE_VARIABLES", "RECEIVE_BUFFER", "package_share", "default_profile", "apply_default_profile",
           "socket_buffer_problem", "GapMonitor"]

#: Socket receive buffer (bytes) of the shipped profile.
RECEIVE_BUFFER = 4 * 2**20
SYSCTL_FIX = "sudo sysctl -w net.core.rmem_max=4194304 net.core.wmem_max=4194304"

#: Environment variables through which Fast DDS reads an XML profile (either may be set).
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def package_share() -> Path | None:
    """``share/pose_distribution`` of an installed package, or None (no ament index, not installed)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("pose_distribution"))
    except (ImportError, LookupError, OSError, ValueError):  # PackageNotFoundError is a KeyError
        return None


def default_profile() -> Path | None:
    """The shipped ``fastdds.xml``: the repository's ``config/`` or the package share's, None if neither."""
    here = Path(__file__).resolve().parent.parent / "config" / "fastdds.xml"
    if here.is_file():
        return here
    share = package_share()
    shared = None if share is None else share / "config" / "fastdds.xml"
    return shared if shared is not None and shared.is_file() else None


def apply_default_profile(environ: dict[str, str] | None = None) -> Path | None:
    """Set ``FASTDDS_DEFAULT_PROFILES_FILE`` to :func:`default_profile` when no profile variable is set,
    no other RMW is chosen and ``POSE_DISTRIBUTION_FASTDDS_PROFILE`` is not ``0``. Call before
    ``rclpy.init``. Returns the profile applied, or None."""
    env = os.environ if environ is None else environ
    if env.get("POSE_DISTRIBUTION_FASTDDS_PROFILE", "1") == "0" or any(env.get(v) for v in PROFILE_VARIABLES):
        return None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        return None
    profile = default_profile()
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return profile


def socket_buffer_problem(path: str = "/proc/sys/net/core/rmem_max") -> str | None:
    """Why the profile's 4 MiB receive buffer would be capped (``net.core.rmem_max`` lower), or None."""
    try:
        limit = int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if limit >= RECEIVE_BUFFER:
        return None
    return (f"net.core.rmem_max is {limit} bytes: the kernel caps the 4 MiB socket buffer of the Fast DDS profile, "
            f"and large camera frames may be lost. Raise it once, as root: {SYSCTL_FIX}")


class GapMonitor:
    """Estimates, from image stamps, what fraction of a camera's frames reach the node.

    The camera's period is the 10th percentile of the stamp differences of consecutive received
    frames (the frames that did arrive one after the other); the received fraction is that period
    over the mean difference, over the last :data:`WINDOW` frames. A difference over
    :data:`PAUSE_S` starts a new window (a paused camera, a new bag), and repeated or older
    stamps are ignored.
    """

    WINDOW = 90
    MIN_FRAMES = 30
    PAUSE_S = 1.0
    #: Below this received fraction the node warns (timing jitter alone stays well above it).
    WARN_FRACTION = 0.8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamps: deque[int] = deque(maxlen=self.WINDOW)
        self._arrivals: deque[float] = deque(maxlen=self.WINDOW)

    def add(self, stamp_ns: int, received: float) -> str | None:
        """Record a frame; returns a warning text when too few of the camera's frames arrive, else None."""
        with self._lock:
            if self._stamps:
                delta = stamp_ns - self._stamps[-1]
                if delta <= 0:
                    return None
                if delta > self.PAUSE_S * 1e9:
                    self._stamps.clear()
                    self._arrivals.clear()
            self._stamps.append(stamp_ns)
            self._arrivals.append(received)
        s = self.summary()
        if s["frames"] >= self.MIN_FRAMES and s["received_fraction"] < self.WARN_FRACTION:
            return (
                f"only about {100 * s['received_fraction']:.0f} % of the camera's frames arrive (stamps every "
                f"{1000 / s['input_rate_hz']:.0f} ms on average, camera period {1000 / s['camera_rate_hz']:.0f} ms): "
                "frames are lost in transport. The node's Fast DDS profile (config/fastdds.xml, in "
                "FASTDDS_DEFAULT_PROFILES_FILE) fixes it on one host; check net.core.rmem_max >= 4194304 "
                f"({SYSCTL_FIX}), or use image_qos:=reliable with a reliable publisher; see docs/ROS2_BARE_MACHINE.md"
            )
        return None

    def summary(self) -> dict[str, float]:
        """``frames``, ``camera_rate_hz``, ``input_rate_hz`` (of the stamps received) and
        ``received_fraction`` (1 while unknown)."""
        with self._lock:
            stamps = list(self._stamps)
        if len(stamps) < 3:
            return {"frames": len(stamps), "camera_rate_hz": 0.0, "input_rate_hz": 0.0, "received_fraction": 1.0}
        deltas = sorted(b - a for a, b in zip(stamps, stamps[1:]))
        period = deltas[len(deltas) // 10]
        mean = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return {
            "frames": len(stamps),
            "camera_rate_hz": 1e9 / period,
            "input_rate_hz": 1e9 / mean,
            "received_fraction": min(1.0, period / mean),
        }
