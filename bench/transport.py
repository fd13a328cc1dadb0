"""What the ROS 2 transport delivers for camera images between two plain rclpy processes (no node of ours).

    .venv/bin/python bench/transport.py [--sizes 640x480,1280x720,1920x1080] [--frames 150] [--json OUT]

A publisher process sends ``--frames`` rgb8 images at 30 Hz (a filled buffer, stamped
``time.time()`` per frame) once a subscriber is matched; a subscriber process counts them and
the latency (arrival minus stamp, one clock). Each process is fresh, so its Fast DDS profile
(read once per process, when its first node is created) is exactly the configuration's:

* ``default``: Fast DDS's defaults; best-effort publisher and subscriber (sensor-data QoS).
* ``node_profile``: the subscriber with ``config/fastdds.xml`` (what the node applies to itself),
  the publisher unchanged.
* ``shm_both``: ``config/fastdds_shm.xml`` in both processes.
* ``reliable``: Fast DDS's defaults, reliable publisher and subscriber.

Both processes get ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a random ``ROS_DOMAIN_ID``.
The kernel's ``net.core.rmem_max`` is recorded: it caps the socket buffers of ``node_profile``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "default": ({}, {}, "sensor"),
    "node_profile": ({}, {"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds.xml")}, "sensor"),
    "shm_both": ({"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_shm.xml")},
                 {"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_shm.xml")}, "sensor"),
    "reliable": ({}, {}, "reliable"),
}


def _qos(name: str) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if name == "sensor":
        return qos_profile_sensor_data
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def _publisher(width: int, height: int, frames: int, qos: str) -> dict[str, Any]:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("transport_bench_pub")
    pub = node.create_publisher(Image, "/transport_bench/image", _qos(qos))
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width)
    msg.data = np.random.default_rng(0).integers(0, 256, height * width * 3, dtype=np.uint8).tobytes()
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)
    t_next = time.monotonic()
    for i in range(frames):
        time.sleep(max(0.0, t_next - time.monotonic()))
        t = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
        msg.header.frame_id = str(i)
        pub.publish(msg)
        t_next += 1 / 30
    time.sleep(1.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return {"sent": frames}


def _subscriber(frames: int, qos: str, timeout_s: float) -> dict[str, Any]:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("transport_bench_sub")
    got: dict[str, float] = {}

    def on_image(msg: Any) -> None:
        got[msg.header.frame_id] = time.time() - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)

    node.create_subscription(Image, "/transport_bench/image", on_image, _qos(qos))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(got) < frames:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.try_shutdown()
    return {"received": len(got), "latencies_s": sorted(got.values())}


def measure(width: int, height: int, config: str, frames: int) -> dict[str, Any]:
    """One configuration at one size: frames received of ``frames`` and latency p50 / p90 (ms)."""
    import random

    pub_env, sub_env, qos = CONFIGS[config]
    base = {k: v for k, v in os.environ.items()
            if k not in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "ROS_LOCALHOST_ONLY")}
    base.update(ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 100)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    me = [sys.executable, str(Path(__file__).resolve())]
    timeout = frames / 30 + 40
    sub = subprocess.Popen([*me, "--role", "sub", "--frames", str(frames), "--qos", qos, "--timeout", str(timeout)],
                           env={**base, **sub_env}, stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen([*me, "--role", "pub", "--frames", str(frames), "--qos", qos, "--size",
                            f"{width}x{height}"], env={**base, **pub_env}, stdout=subprocess.PIPE, text=True)
    pub.communicate(timeout=timeout + 30)
    out, _ = sub.communicate(timeout=timeout + 30)
    result = json.loads(out.strip().splitlines()[-1])
    lat = result.pop("latencies_s")
    pct = (lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
    return {"width": width, "height": height, "config": config, "sent": frames, "received": result["received"],
            "latency_ms_p50": pct(0.5), "latency_ms_p90": pct(0.9)}


def rmem_max() -> int | None:
    try:
        return int(open("/proc/sys/net/core/rmem_max").read())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x480,1280x720,1920x1080")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", choices=("pub", "sub"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--qos", default="sensor", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="640x480", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "pub":
        w, h = (int(v) for v in args.size.split("x"))
        print(json.dumps(_publisher(w, h, args.frames, args.qos)))
        return 0
    if args.role == "sub":
        print(json.dumps(_subscriber(args.frames, args.qos, args.timeout)))
        return 0
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for config in args.configs.split(","):
            row = measure(w, h, config, args.frames)
            rows.append(row)
            print(f"{w}x{h} {config:13s} {row['received']:4d}/{row['sent']} received, p50 "
                  f"{row['latency_ms_p50']:6.1f} ms, p90 {row['latency_ms_p90']:6.1f} ms", flush=True)
    result = {"rmem_max": rmem_max(), "rows": rows, "command": " ".join([sys.executable, *sys.argv])}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
