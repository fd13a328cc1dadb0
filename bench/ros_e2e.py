"""End-to-end benchmark through ROS 2: this process publishes images, the node (a child process) answers.

The node runs as ``python -m pose_distribution_ros.node`` with ``config/pose_distribution.yaml``
(and the checkpoint given), on a random ``ROS_DOMAIN_ID`` with discovery limited to this host
(``test/ros_helpers.py``). This process publishes pre-rendered 224x224 ``rgb8`` images (and
``camera_info``) on a fixed-rate schedule and subscribes to ``/pose_distribution/distribution``.
The node copies the image stamp into its output header, so the latency of a frame is its arrival
time here minus its stamp (one clock: both processes are on this machine). A frame published but
never answered is dropped (the node keeps only the newest frame, and ``max_rate_hz`` caps its
rate). The node's RSS and CPU time are read from ``/proc``.

Conventions (timings, memory) are those of :mod:`bench.common`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import process_cpu_s, process_rss_mb, summarize_ms

__all__ = ["NodeUnderTest"]

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "config" / "pose_distribution.yaml"
START_TIMEOUT_S = 180.0


class NodeUnderTest:
    """The node child process and this process's publisher/subscriber; use as a context manager.

    Args:
        images: ``[(H, W, 3) uint8]`` frames, published in turn.
        K: ``(3, 3)`` intrinsics sent as ``camera_info``.
        checkpoint: path given to the node.
        device: the node's ``device`` parameter.
        node_params: more ``name:=value`` parameters of the node.
        env: more environment of the node (e.g. ``POSE_DISTRIBUTION_FASTDDS_PROFILE=0``).
        reliable: publish images with reliable QoS (else sensor data, as most camera drivers).
    """

    def __init__(self, images: list[np.ndarray], K: np.ndarray, checkpoint: Path, device: str = "cpu",
                 node_params: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 reliable: bool = False):
        sys.path.insert(0, str(REPO / "test"))
        from ros_helpers import random_domain_id, ros_env

        self._log_dir = tempfile.TemporaryDirectory(prefix="bench_ros_")
        self.env = ros_env(random_domain_id(), self._log_dir.name)
        self.env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
        self.env.pop("OMP_NUM_THREADS", None)  # the node's threads are its torch_threads parameter
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)
        self.env.update(env or {})
        self.images, self.K = images, K
        self.checkpoint, self.device = checkpoint, device
        self.node_params, self.reliable = tuple(node_params), reliable
        self.log_path = Path(self._log_dir.name) / "node.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.startup_s = float("nan")

    # ------------------------------------------------------------------ set-up and tear-down
    def __enter__(self) -> NodeUnderTest:
        import rclpy
        from pose_distribution.msg import PoseDistribution
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        from pose_distribution_ros.image_conversion import numpy_to_image

        for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION"):
            os.environ[key] = self.env[key]
        for key in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "FASTDDS_DEFAULT_PROFILES_FILE",
                    "FASTRTPS_DEFAULT_PROFILES_FILE"):
            os.environ.pop(key, None)  # this process publishes as an unchanged camera driver would
        cmd = [sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "--params-file", str(PARAMS),
               "-r", "image:=/bench/image", "-r", "camera_info:=/bench/camera_info",
               "-p", f"checkpoint:={self.checkpoint}", "-p", f"device:={self.device}"]
        for param in self.node_params:
            cmd += ["-p", param]
        t0 = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_log("ready:", START_TIMEOUT_S)
        self.startup_s = time.monotonic() - t0

        rclpy.init()
        self._node = rclpy.create_node("pose_distribution_bench")
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self._node)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE) if self.reliable else qos_profile_sensor_data
        self._pub = self._node.create_publisher(Image, "/bench/image", image_qos)
        self._pub_info = self._node.create_publisher(CameraInfo, "/bench/camera_info", image_qos)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        self._node.create_subscription(PoseDistribution, "/pose_distribution/distribution", self._on_result, reliable)
        from diagnostic_msgs.msg import DiagnosticArray

        self._diagnostics: dict[str, str] = {}
        self._node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        self._msgs = [numpy_to_image(img, "rgb8") for img in self.images]
        for m in self._msgs:
            m.header.frame_id = "bench_camera_optical"
        info = CameraInfo()
        info.width, info.height = self.images[0].shape[1], self.images[0].shape[0]
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = self.K.ravel().tolist()
        info.r = np.eye(3).ravel().tolist()
        info.p = np.concatenate([self.K, np.zeros((3, 1))], axis=1).ravel().tolist()
        self._info = info
        self._sent: dict[tuple[int, int], float] = {}
        self._latencies: list[float] = []
        self._received = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        import rclpy
        from ros_helpers import stop_process

        try:
            self._node.destroy_node()
        except Exception:
            pass
        rclpy.try_shutdown()
        if self.proc is not None:
            stop_process(self.proc, timeout_s=15.0)
        self._log_dir.cleanup()

    def _wait_for_log(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log_path.read_text(errors="replace"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"node not ready (rc {self.proc.poll() if self.proc else None}):\n"
                           f"{self.log_path.read_text(errors='replace')[-4000:]}")

    def node_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ traffic
    def _on_result(self, msg: Any) -> None:
        now = self._node.get_clock().now().nanoseconds * 1e-9
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if key in self._sent:
            self._latencies.append(now - (key[0] + 1e-9 * key[1]))
            self._received += 1

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith("pose_distribution"):
                self._diagnostics = {kv.key: kv.value for kv in status.values}

    def _node_count(self, key: str) -> int:
        try:
            return int(self._diagnostics.get(key, "0"))
        except ValueError:
            return 0

    def _publish(self, i: int) -> None:
        stamp = self._node.get_clock().now().to_msg()
        msg = self._msgs[i % len(self._msgs)]
        msg.header.stamp = stamp
        self._info.header = msg.header
        self._sent[(stamp.sec, stamp.nanosec)] = time.monotonic()
        self._pub_info.publish(self._info)
        self._pub.publish(msg)

    def _spin_until(self, t: float) -> None:
        while True:
            left = t - time.monotonic()
            if left <= 0:
                return
            self._executor.spin_once(timeout_sec=left)

    def warm_up(self, timeout_s: float = 60.0) -> None:
        """Publish at 5 Hz until results come back (discovery done, node warm), then settle."""
        deadline, i = time.monotonic() + timeout_s, 0
        while self._received < 3:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result from the node within {timeout_s} s:\n{self.node_log()[-4000:]}")
            self._publish(i)
            i += 1
            self._spin_until(time.monotonic() + 0.2)
        self._spin_until(time.monotonic() + 1.0)

    def run(self, rate_hz: float, frames: int, rss_every: int = 0, until_received: bool = False,
            max_s: float = 3600.0) -> dict[str, Any]:
        """Publish ``frames`` frames at ``rate_hz`` (or until ``frames`` results when ``until_received``).

        Returns latency ``{"p50", "p90", "max"}`` (ms), published / received / dropped counts,
        the node's CPU use (cores), RSS (MiB) and, with ``rss_every``, RSS samples
        ``[(results so far, MiB)]`` every ``rss_every`` published frames.
        """
        assert self.proc is not None
        self._sent.clear()
        self._latencies = []
        self._received = 0
        period = 1.0 / rate_hz
        samples: list[tuple[int, float]] = []
        self._spin_until(time.monotonic() + 1.1)  # a fresh diagnostics message
        dropped0, processed0 = self._node_count("dropped"), self._node_count("processed")
        cpu0, t0 = process_cpu_s(self.proc.pid), time.monotonic()
        t_next, i = t0, 0
        while (self._received < frames if until_received else i < frames) and time.monotonic() - t0 < max_s:
            self._spin_until(t_next)
            self._publish(i)
            i += 1
            t_next += period
            if rss_every and i % rss_every == 0:
                samples.append((self._received, process_rss_mb(self.proc.pid)["rss_mb"]))
        self._spin_until(time.monotonic() + 2.5)  # results still in flight, and the diagnostics after them
        elapsed = time.monotonic() - t0
        cpu = process_cpu_s(self.proc.pid) - cpu0
        lat = summarize_ms(1000 * np.asarray(self._latencies))
        out: dict[str, Any] = {
            "rate_hz": rate_hz,
            "published": i,
            "received": self._received,
            "dropped": i - self._received,
            "result_rate_hz": self._received / (elapsed - 2.5) if elapsed > 2.5 else float("nan"),
            "latency_ms": {"p50": lat["p50_ms"], "p90": lat["p90_ms"],
                           "max": float(1000 * max(self._latencies)) if self._latencies else float("nan")},
            "node_dropped": self._node_count("dropped") - dropped0,  # overwritten in the node's slot
            "node_processed": self._node_count("processed") - processed0,
            "received_fraction": float(self._diagnostics.get("received_fraction", "nan")),
            "node_cpu_cores": cpu / elapsed,
            "node_memory": process_rss_mb(self.proc.pid),
        }
        # neither answered nor dropped by the node: never reached it (or its answer never came back)
        out["lost_in_transport"] = max(0, out["published"] - out["received"] - out["node_dropped"])
        if rss_every:
            out["rss_samples"] = samples
        return out

    def set_parameter(self, name: str, value: float, timeout_s: float = 10.0) -> None:
        """Set a double parameter of the node through its ``set_parameters`` service."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        client = self._node.create_client(SetParameters, "/pose_distribution/set_parameters")
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError("the node's set_parameters service did not appear")
        req = SetParameters.Request(parameters=[Parameter(
            name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value)))])
        future = client.call_async(req)
        self._executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        result = future.result()
        if result is None or not result.results[0].successful:
            raise RuntimeError(f"setting {name} failed: {result}")
        self._node.destroy_client(client)


def leak_summary(samples: list[tuple[int, float]], warmup_fraction: float = 0.1) -> dict[str, Any]:
    """First / last / max RSS (MiB) of ``[(frames, MiB)]`` samples and the drift after the first ``warmup_fraction``."""
    if not samples:
        return {"samples": 0}
    rss = np.asarray([s[1] for s in samples], dtype=np.float64)
    start = min(len(rss) - 1, int(len(rss) * warmup_fraction))
    base = rss[start]
    after = rss[start:]
    return {
        "samples": len(rss),
        "first_mb": float(rss[0]),
        "after_warmup_mb": float(base),
        "last_mb": float(rss[-1]),
        "max_mb": float(rss.max()),
        "drift_rel": float((rss[-1] - base) / base),
        "max_deviation_rel": float(np.abs(after - base).max() / base),
    }
