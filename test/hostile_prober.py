"""A child process that feeds the node one scenario of (hostile) input and reports what came back.

    python test/hostile_prober.py NAMESPACE SCENARIO [--json ARGS]

Publishes on ``NAMESPACE/image``, ``camera_info``, ``depth``, ``detections`` and listens on
``NAMESPACE/pose_distribution/distributions`` and ``/diagnostics``; prints one JSON line with the
result. Scenarios (each returns counts and timings, never asserts; the tests assert):

* ``stream``: ``count`` frames of ``width`` x ``height`` rgb8 at ``rate`` Hz (with camera_info);
  which stamps were answered, latencies, the node's last ``dropped`` diagnostic.
* ``after_camera_info``: a good camera_info, then a bad one (``bad``: nan | inf | zero_fy | zero_size),
  then ``count`` images; how many were answered, and the position of the last answer (the last
  good K keeps giving the ray).
* ``boxes``: one image with ``boxes`` (list of ``[u, v, w, h, id]``) as detections, then a good
  frame with one normal box: the ids answered for the first, and the delay of the second.
* ``depth``: one image with a depth image (``fill`` value, ``shape`` [h, w]) and camera_info;
  answered or not (the node's log says the rest).

The node must run with ``image_qos`` matching (sensor_data: best-effort publishers here).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZE = 96


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("namespace")
    parser.add_argument("scenario")
    parser.add_argument("--json", default="{}")
    args = parser.parse_args()
    opts = json.loads(args.json)

    import rclpy  # a camera driver with its defaults: the profile is the node's only
    from diagnostic_msgs.msg import DiagnosticArray
    from pose_distribution.msg import PoseDistributionArray
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from pose_distribution_ros.image_conversion import numpy_to_image

    rclpy.init()
    node = rclpy.create_node("hostile_prober")
    ns = args.namespace
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    pub_image = node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
    pub_info = node.create_publisher(CameraInfo, f"{ns}/camera_info", qos_profile_sensor_data)
    pub_depth = node.create_publisher(Image, f"{ns}/depth", qos_profile_sensor_data)
    pub_det = None
    try:
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        pub_det = node.create_publisher(Detection2DArray, f"{ns}/detections", reliable)
    except ImportError:
        pass
    answers: dict[tuple[int, int], tuple[float, Any]] = {}
    diag: dict[str, str] = {}

    def on_result(msg: Any) -> None:
        answers[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.time(), msg)

    def on_diag(msg: Any) -> None:
        for status in msg.status:
            if "pose_distribution" in status.name:
                diag.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(PoseDistributionArray, f"{ns}/pose_distribution/distributions", on_result, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=max(0.0, min(0.02, end - time.monotonic())))

    def stamp_of(t: float) -> Any:
        from builtin_interfaces.msg import Time

        return Time(sec=int(t), nanosec=int((t % 1) * 1e9))

    def stamp_now() -> Any:
        return stamp_of(time.time())

    def image(width: int, height: int, seed: int = 0) -> Any:
        rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        msg = numpy_to_image(rgb, "rgb8")
        msg.header.frame_id = "prober_camera"
        return msg

    def info(width: int, height: int, k: list[float] | None = None) -> Any:
        msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        f = 1.2 * max(width, height)
        msg.k = k if k is not None else [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0]
        return msg

    def send(msg: Any, pub: Any, stamp: Any) -> None:
        msg.header.stamp = stamp
        pub.publish(msg)

    def key(stamp: Any) -> tuple[int, int]:
        return (stamp.sec, stamp.nanosec)

    def wait_answer(stamp: Any, timeout: float) -> float | None:
        """Seconds from now until the answer to ``stamp`` (None if none within ``timeout``)."""
        t0 = time.time()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if key(stamp) in answers:
                return answers[key(stamp)][0] - t0
            rclpy.spin_once(node, timeout_sec=0.01)
        return None

    def discover() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end and pub_image.get_subscription_count() == 0:
            spin(0.1)
        spin(0.5)

    discover()
    out: dict[str, Any] = {"scenario": args.scenario}
    if args.scenario == "stream":
        w, h, rate, count = opts.get("width", 640), opts.get("height", 480), opts.get("rate", 30), opts.get("count", 90)
        msg, cam = image(w, h), info(w, h)
        stamps, period, t_next = [], 1.0 / rate, time.monotonic()
        t_capture = time.time()
        for i in range(count):
            spin(max(0.0, t_next - time.monotonic()))
            # stamped with the capture time of a camera at ``rate`` (regular), not when this process gets
            # to publish: on a busy machine it publishes late frames back to back, as a driver would
            st = stamp_of(t_capture + i * period)
            send(cam, pub_info, st)
            send(msg, pub_image, st)
            stamps.append((key(st), time.time()))
            t_next += period
        spin(3.0)
        lat = [answers[k][0] - t for k, t in stamps if k in answers]
        out.update(published=count, answered=len(lat), dropped=int(diag.get("dropped", "0")),
                   latency_ms_p50=1000 * float(np.median(lat)) if lat else math.nan,
                   received_fraction=float(diag.get("received_fraction", "nan")))
    elif args.scenario == "after_camera_info":
        bad = {"nan": [math.nan, 0, 47.5, 0, 100, 47.5, 0, 0, 1], "inf": [math.inf, 0, 47.5, 0, 100, 47.5, 0, 0, 1],
               "zero_fy": [100, 0, 47.5, 0, 0, 47.5, 0, 0, 1], "zero_size": None}[opts["bad"]]
        msg = image(SIZE, SIZE)
        good = info(SIZE, SIZE, [100.0, 0, 20.0, 0, 100.0, 47.5, 0, 0, 1])  # principal point left: x > 0
        send(good, pub_info, stamp_now())
        spin(0.5)
        bad_info = info(0, SIZE) if bad is None else info(SIZE, SIZE, [float(v) for v in bad])
        answered, last_x = 0, None
        for _ in range(opts.get("count", 5)):
            st = stamp_now()
            send(bad_info, pub_info, st)
            send(msg, pub_image, st)
            if wait_answer(st, 10.0) is not None:
                answered += 1
                dists = answers[key(st)][1].distributions
                last_x = dists[0].mode.position.x if dists else None
            spin(0.2)
        out.update(answered=answered, last_x=last_x)
    elif args.scenario == "boxes":
        msg, cam = image(SIZE * 2, SIZE), info(SIZE * 2, SIZE)

        def detections(boxes: list[list[Any]], st: Any) -> Any:
            arr = Detection2DArray()
            arr.header.stamp = st
            for u, v, w, hh, did in boxes:
                d = Detection2D(id=str(did))
                d.bbox.center.position.x, d.bbox.center.position.y = float(u), float(v)
                d.bbox.size_x, d.bbox.size_y = float(w), float(hh)
                hyp = ObjectHypothesisWithPose()
                hyp.hypothesis.score = 0.5
                d.results = [hyp]
                arr.detections.append(d)
            return arr

        st = stamp_now()
        send(cam, pub_info, st)
        send(msg, pub_image, st)
        pub_det.publish(detections(opts["boxes"], st))
        first = wait_answer(st, 30.0)
        ids = [d.object_frame_id for d in answers[key(st)][1].distributions] if first is not None else None
        spin(0.2)
        st2 = stamp_now()
        send(cam, pub_info, st2)
        send(msg, pub_image, st2)
        pub_det.publish(detections([[SIZE / 2, SIZE / 2, 60, 60, "good"]], st2))
        delay = wait_answer(st2, 30.0)
        out.update(first_s=first, ids=ids, next_good_s=delay)
    elif args.scenario == "depth":
        h, w = opts.get("shape", [SIZE, SIZE])
        depth = np.full((h, w), float(opts["fill"]), np.float32)
        dmsg = numpy_to_image(depth, "32FC1")
        msg, cam = image(SIZE, SIZE), info(SIZE, SIZE)
        answered = 0
        for _ in range(3):
            st = stamp_now()
            send(cam, pub_info, st)
            send(dmsg, pub_depth, st)
            send(msg, pub_image, st)
            answered += wait_answer(st, 10.0) is not None
            spin(0.3)
        out.update(answered=answered)
    else:
        raise SystemExit(f"unknown scenario {args.scenario!r}")
    print(json.dumps(out), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
