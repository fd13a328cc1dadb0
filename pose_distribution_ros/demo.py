"""End-to-end ROS 2 demo: simulated camera -> pose_distribution node -> listener that scores it.

    python -m pose_distribution_ros.demo [--checkpoint checkpoints/demo.pt] [--duration 20]
                                         [--rate 5] [--shape cube] [--size 224] [--device auto]
                                         [-p image_size:=64 ...] [--summary-json FILE]

Starts three processes: the simulated camera (:mod:`pose_distribution_ros.sim_camera`: rendered
images of the object at known, smoothly moving rotations, with camera_info and the true pose on
``/sim/truth``), the node (with ``config/pose_distribution.yaml``, remapped to ``/sim/image`` and
``/sim/camera_info``), and a listener which matches each ``PoseDistribution`` to the truth with
the same stamp and measures the symmetry-aware error (geodesic distance from the mode to the
nearest of ``shape.equivalent_rotations(truth)``) and the latency (arrival time minus image stamp:
transport, queueing and inference). It prints a live line per result and, after ``--duration``
seconds counted from the first result (the node needs 10 to 30 s to start on a CPU), a summary:
median error, Acc@15 (share of frames with error < 15 deg), rate, latency p50 / p90. Then it stops
its children (SIGINT, then SIGKILL) and exits 0; 2 when the checkpoint is missing, 1 when no
result arrived.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = Path("checkpoints/demo.pt")
PARAMS = REPO / "config" / "pose_distribution.yaml"
START_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------- listener (child process)


def summarize(
    errors_deg: list[float], latencies_s: list[float], elapsed_s: float, flips: int = 0
) -> dict[str, Any]:
    """Summary numbers of a run (pure; NaN where there is no data); ``flips``: of the published mode
    (:func:`pose_core.metrics.mode_flips`) over the run."""
    import numpy as np

    e = np.asarray(errors_deg, dtype=np.float64)
    lat = np.asarray(latencies_s, dtype=np.float64) * 1000
    n = int(e.size)
    return {
        "frames": n,
        "median_error_deg": float(np.median(e)) if n else math.nan,
        "acc15": float((e < 15.0).mean()) if n else math.nan,
        "rate_hz": (n - 1) / elapsed_s if n > 1 and elapsed_s > 0 else math.nan,
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else math.nan,
        "latency_ms_p90": float(np.percentile(lat, 90)) if lat.size else math.nan,
        "flips": int(flips),
        "flips_per_min": 60.0 * flips / elapsed_s if elapsed_s > 0 else math.nan,
    }


def _listen(opts: argparse.Namespace) -> int:
    import numpy as np
    import rclpy
    import torch
    from geometry_msgs.msg import PoseStamped
    from pose_distribution.msg import PoseDistribution
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    from pose_core import so3
    from pose_core.data.shapes import get_shape
    from pose_core.metrics import mode_flips, nearest_equivalent_error

    shape = get_shape(opts.shape)
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=50,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
    truths: dict[tuple[int, int], np.ndarray] = {}
    errors: list[float] = []
    latencies: list[float] = []
    first: list[float] = []
    unmatched = [0]
    last: dict[str, Any] = {}  # samples, weights and truth set of the newest scored result, for the plot
    sequence: list[tuple[float, np.ndarray, np.ndarray]] = []  # (stamp, published mode, truth), for the flips

    def quat(q: Any) -> np.ndarray:
        return so3.quat_to_matrix(torch.tensor([q.x, q.y, q.z, q.w], dtype=torch.float64)).numpy()

    def on_truth(msg: PoseStamped) -> None:
        truths[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = quat(msg.pose.orientation)
        while len(truths) > 500:
            truths.pop(next(iter(truths)))

    def on_result(msg: PoseDistribution) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        R_true = truths.get((msg.header.stamp.sec, msg.header.stamp.nanosec))
        if R_true is None:
            unmatched[0] += 1
            return
        eq = torch.as_tensor(shape.equivalent_rotations(R_true))  # (K, 3, 3)
        R = torch.as_tensor(quat(msg.mode.orientation))
        err = math.degrees(float(nearest_equivalent_error(R[None], eq[None])[0]))
        if not first:
            first.append(time.monotonic())
        errors.append(err)
        latencies.append(now - stamp)
        sequence.append((stamp, R.numpy(), R_true))
        last.update(samples=[(q.x, q.y, q.z, q.w) for q in msg.samples], weights=list(msg.sample_weights), eq=eq)
        s = summarize(errors, latencies, time.monotonic() - first[0])
        print(
            f"[{len(errors):4d}] error {err:6.1f} deg | latency {1000 * latencies[-1]:6.0f} ms | "
            f"rate {s['rate_hz']:5.2f} Hz | Acc@15 {s['acc15']:.2f} | entropy {msg.entropy:+.2f}",
            flush=True,
        )

    rclpy.init()
    node = rclpy.create_node("pose_distribution_demo_listener")
    node.create_subscription(PoseStamped, "/sim/truth", on_truth, qos)
    node.create_subscription(PoseDistribution, "/pose_distribution/distribution", on_result, qos)
    t_start = time.monotonic()
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
            if first and time.monotonic() - first[0] >= opts.duration:
                break
            if not first and time.monotonic() - t_start > opts.start_timeout:
                print(f"no result within {opts.start_timeout:.0f} s", file=sys.stderr)
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        elapsed = time.monotonic() - first[0] if first else 0.0
        rclpy.try_shutdown()
    flips = 0
    if len(sequence) > 1:
        sequence.sort(key=lambda item: item[0])
        modes = torch.as_tensor(np.stack([m for _, m, _ in sequence]))
        truth = torch.as_tensor(np.stack([t for _, _, t in sequence]))
        flips = int(mode_flips(modes, truth)[0].sum())
    s = summarize(errors, latencies, elapsed, flips)
    s["unmatched"] = unmatched[0]
    print(
        f"\nsummary over {elapsed:.1f} s: {s['frames']} frames, median error {s['median_error_deg']:.1f} deg, "
        f"Acc@15 {s['acc15']:.2f}, rate {s['rate_hz']:.2f} Hz, latency p50 {s['latency_ms_p50']:.0f} ms, "
        f"p90 {s['latency_ms_p90']:.0f} ms, {s['flips_per_min']:.1f} flips/min of the mode (> 30 deg while the "
        f"truth moves < 5 deg) ({unmatched[0]} results without a matching truth)",
        flush=True,
    )
    if opts.summary_json:
        Path(opts.summary_json).write_text(json.dumps(s, indent=2))
    if opts.plot and last.get("samples"):
        _plot_samples(last["samples"], last["weights"], last["eq"], Path(opts.plot))
        print(f"plot of the last distribution (its published samples) with the true rotations: {opts.plot}")
    return 0 if s["frames"] else 1


def _plot_samples(samples: list, weights: list, truth, path: Path) -> None:
    """Draw a published distribution from its weighted samples: their histogram on the level-3 grid."""
    import torch

    from pose_core import SO3Distribution, grids, so3
    from pose_core.plots import plot_so3_distribution

    R = so3.quat_to_matrix(torch.tensor(samples, dtype=torch.float64))
    level = 3
    mass = torch.zeros(grids.num_cells(level), dtype=torch.float64)
    mass.index_add_(0, grids.cell_of(R, level), torch.tensor(weights, dtype=torch.float64))
    dist = SO3Distribution.from_grid_logits(mass.clamp_min(1e-30).log()[None], level)
    plot_so3_distribution(dist, gt=truth, path=path, title="published samples (dots) and true rotations (circles)")


# --------------------------------------------------------------------------- orchestration


def _stop(procs: list[subprocess.Popen[Any]], timeout_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of results to score")
    parser.add_argument("--rate", type=float, default=5.0, help="camera frames per second")
    parser.add_argument("--shape", default="cube")
    parser.add_argument("--size", type=int, default=224,
                        help="side (px) of the camera images; the node resizes crops to the model's input")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--summary-json", default="", help="also write the summary to this file")
    parser.add_argument(
        "--plot", default="outputs/demo_distribution.png", help="PNG of the last published distribution ('' for none)"
    )
    parser.add_argument(
        "-p",
        "--node-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra node parameter, e.g. -p image_size:=64 (repeatable)",
    )
    parser.add_argument("--start-timeout", type=float, default=START_TIMEOUT_S, help=argparse.SUPPRESS)
    parser.add_argument("--listener", action="store_true", help=argparse.SUPPRESS)  # internal: child role
    opts = parser.parse_args(argv)
    if opts.listener:
        return _listen(opts)

    checkpoint = opts.checkpoint if opts.checkpoint.is_absolute() else (Path.cwd() / opts.checkpoint)
    if not checkpoint.is_file() and not opts.checkpoint.is_absolute() and (REPO / opts.checkpoint).is_file():
        checkpoint = REPO / opts.checkpoint
    if not checkpoint.is_file():
        print(
            f"checkpoint not found: {checkpoint}\n"
            "Train one with:  python train/train.py --config config/train/demo.yaml\n"
            "or pass --checkpoint PATH.",
            file=sys.stderr,
        )
        return 2

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    py = sys.executable
    distance = 4.0  # pose_core.data.Camera's default distance: the nominal range is then right
    commands = {
        "camera": [
            py,
            "-m",
            "pose_distribution_ros.sim_camera",
            "--shape",
            opts.shape,
            "--rate",
            str(opts.rate),
            "--size",
            str(opts.size),
        ],
        "node": [
            py,
            "-m",
            "pose_distribution_ros.node",
            "--ros-args",
            "--params-file",
            str(PARAMS),
            "-r",
            "image:=/sim/image",
            "-r",
            "camera_info:=/sim/camera_info",
            "-p",
            f"checkpoint:={checkpoint}",
            "-p",
            f"device:={opts.device}",
            "-p",
            f"nominal_distance_m:={distance}",
        ]
        + [a for p in opts.node_param for a in ("-p", p)],
        "listener": [
            py,
            "-m",
            "pose_distribution_ros.demo",
            "--listener",
            "--shape",
            opts.shape,
            "--duration",
            str(opts.duration),
            "--start-timeout",
            str(opts.start_timeout),
        ]
        + (["--summary-json", opts.summary_json] if opts.summary_json else [])
        + ["--plot", opts.plot],
    }
    procs: dict[str, subprocess.Popen[Any]] = {}
    print(
        f"demo: {opts.shape} at {opts.rate} Hz, {opts.size}x{opts.size}, checkpoint {checkpoint}; "
        f"scoring {opts.duration:.0f} s of results (the node needs a while to start)",
        flush=True,
    )
    rc = 1
    try:
        for name in ("camera", "node"):
            procs[name] = subprocess.Popen(commands[name], cwd=REPO, env=env)
        procs["listener"] = subprocess.Popen(commands["listener"], cwd=REPO, env=env)
        while procs["listener"].poll() is None:
            for name in ("camera", "node"):
                if procs[name].poll() is not None:
                    print(f"demo: {name} exited with status {procs[name].returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        rc = procs["listener"].returncode
    except KeyboardInterrupt:
        rc = 130
    finally:
        _stop([procs[n] for n in ("listener", "node", "camera") if n in procs])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
