"""End-to-end ROS 2 demo: simulated camera -> pose_distribution node -> listener that scores it.

    python -m pose_distribution_ros.demo [--checkpoint checkpoints/demo.pt] [--duration 20]
                                         [--rate 5] [--shape cube] [--size 224] [--device auto]
                                         [-p image_size:=64 ...] [--summary-json FILE]
    python -m pose_distribution_ros.demo --se3 [--checkpoint checkpoints/se3_duck.pt] [...]

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

``--se3`` (an SE(3) checkpoint, SpyroPose; default ``checkpoints/se3_duck.pt``): the camera is
:mod:`pose_distribution_ros.sim_scene` instead (640x480 images of the checkpoint's own training
object moving in 3D, 0.4 to 1.2 m away and across the view, with a detector's box on
``/sim/detections`` and the true position as well as the orientation on ``/sim/truth``), the node
runs with ``use_detections:=true`` on those boxes, and the listener also scores the translation of
the mode: its error (mm, and % of the true distance) and whether the truth lies inside the 95 %
ellipsoid of the covariance's translation block (:func:`pose_core.metrics.inside_ellipsoid`; the
covariance is the second moment about the mode, so the ellipsoid is centred on it). ``--size`` and
``--shape`` do not apply (the checkpoint's training scenes say the camera and the object; ``--shape``
only for a checkpoint without a training config). Without ``--se3`` nothing changes.
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
DEFAULT_SE3_CHECKPOINT = Path("checkpoints/se3_duck.pt")
PARAMS = REPO / "config" / "pose_distribution.yaml"
START_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------- listener (child process)


def summarize(
    errors_deg: list[float], latencies_s: list[float], elapsed_s: float, flips: int = 0,
    translation_errors_m: list[float] | None = None, distances_m: list[float] | None = None,
    inside95: list[bool] | None = None,
) -> dict[str, Any]:
    """Summary numbers of a run (pure; NaN where there is no data); ``flips``: of the published mode
    (:func:`pose_core.metrics.mode_flips`) over the run. With ``translation_errors_m`` (SE(3): per
    frame ``|t_mode - t_true|`` m, with ``distances_m`` ``|t_true|`` and ``inside95`` the truth inside
    the 95 % ellipsoid) also ``median_translation_error_mm``, ``translation_error_mm_p90``,
    ``median_translation_error_pct`` (of the distance) and ``inside95`` (share of frames)."""
    import numpy as np

    e = np.asarray(errors_deg, dtype=np.float64)
    lat = np.asarray(latencies_s, dtype=np.float64) * 1000
    n = int(e.size)
    out = {
        "frames": n,
        "median_error_deg": float(np.median(e)) if n else math.nan,
        "acc15": float((e < 15.0).mean()) if n else math.nan,
        "rate_hz": (n - 1) / elapsed_s if n > 1 and elapsed_s > 0 else math.nan,
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else math.nan,
        "latency_ms_p90": float(np.percentile(lat, 90)) if lat.size else math.nan,
        "flips": int(flips),
        "flips_per_min": 60.0 * flips / elapsed_s if elapsed_s > 0 else math.nan,
    }
    if translation_errors_m is None:
        return out
    dt = np.asarray(translation_errors_m, dtype=np.float64) * 1000
    pct = 100 * dt / (1000 * np.asarray(distances_m if distances_m is not None else [], dtype=np.float64))
    inside = np.asarray(inside95 if inside95 is not None else [], dtype=bool)
    if pct.shape != dt.shape or inside.shape != dt.shape:
        raise ValueError(f"translation_errors_m, distances_m and inside95 must have one entry per frame, got "
                         f"{dt.size}, {pct.size}, {inside.size}")
    out.update({
        "median_translation_error_mm": float(np.median(dt)) if dt.size else math.nan,
        "translation_error_mm_p90": float(np.percentile(dt, 90)) if dt.size else math.nan,
        "median_translation_error_pct": float(np.median(pct)) if pct.size else math.nan,
        "inside95": float(inside.mean()) if inside.size else math.nan,
    })
    return out


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
    from pose_core.metrics import inside_ellipsoid, mode_flips, nearest_equivalent_error

    se3 = bool(opts.se3)
    if se3:  # the simulated scene's object (its symmetries), as pose_distribution_ros.sim_scene shows it
        from pose_distribution_ros.sim_scene import checkpoint_object

        scene_object = checkpoint_object(opts.checkpoint, opts.shape)
        shape, radius_m = scene_object.shape, scene_object.radius_m
    else:
        shape = get_shape(opts.shape)
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=50,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
    truths: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # stamp -> (R, t) true
    errors: list[float] = []
    translation_errors: list[float] = []  # SE(3): |t_mode - t_true| (m)
    distances: list[float] = []  # SE(3): |t_true| (m)
    inside: list[bool] = []  # SE(3): the truth inside the 95 % ellipsoid of the translation covariance
    latencies: list[float] = []
    first: list[float] = []
    unmatched = [0]
    last: dict[str, Any] = {}  # samples, weights and truth set of the newest scored result, for the plot
    sequence: list[tuple[float, np.ndarray, np.ndarray]] = []  # (stamp, published mode, truth), for the flips

    def quat(q: Any) -> np.ndarray:
        return so3.quat_to_matrix(torch.tensor([q.x, q.y, q.z, q.w], dtype=torch.float64)).numpy()

    def on_truth(msg: PoseStamped) -> None:
        p = msg.pose.position
        truths[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (quat(msg.pose.orientation),
                                                                      np.array([p.x, p.y, p.z]))
        while len(truths) > 500:
            truths.pop(next(iter(truths)))

    def on_result(msg: PoseDistribution) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        truth = truths.get((msg.header.stamp.sec, msg.header.stamp.nanosec))
        if truth is None:
            unmatched[0] += 1
            return
        R_true, t_true = truth
        if se3:  # marked shapes: the distance in object radii decides which symmetric poses look alike
            eq = torch.as_tensor(shape.equivalent_rotations(R_true, distance=float(np.linalg.norm(t_true)) / radius_m))
        else:
            eq = torch.as_tensor(shape.equivalent_rotations(R_true))  # (K, 3, 3)
        R = torch.as_tensor(quat(msg.mode.orientation))
        err = math.degrees(float(nearest_equivalent_error(R[None], eq[None])[0]))
        if not first:
            first.append(time.monotonic())
        errors.append(err)
        latencies.append(now - stamp)
        sequence.append((stamp, R.numpy(), R_true))
        last.update(samples=[(q.x, q.y, q.z, q.w) for q in msg.samples], weights=list(msg.sample_weights), eq=eq)
        if not se3:
            s = summarize(errors, latencies, time.monotonic() - first[0])
            print(
                f"[{len(errors):4d}] error {err:6.1f} deg | latency {1000 * latencies[-1]:6.0f} ms | "
                f"rate {s['rate_hz']:5.2f} Hz | Acc@15 {s['acc15']:.2f} | entropy {msg.entropy:+.2f}",
                flush=True,
            )
            return
        m = msg.mode.position
        t_mode = np.array([m.x, m.y, m.z])
        cov = np.asarray(msg.covariance, dtype=np.float64).reshape(6, 6)[:3, :3]
        translation_errors.append(float(np.linalg.norm(t_mode - t_true)))
        distances.append(float(np.linalg.norm(t_true)))
        inside.append(bool(inside_ellipsoid(t_true[None], t_mode[None], cov[None])[0]))
        s = summarize(errors, latencies, time.monotonic() - first[0], 0, translation_errors, distances, inside)
        print(
            f"[{len(errors):4d}] rotation {err:6.1f} deg | translation {1000 * translation_errors[-1]:5.0f} mm "
            f"({100 * translation_errors[-1] / distances[-1]:4.1f} % of {distances[-1]:.2f} m), "
            f"{'inside ' if inside[-1] else 'outside'} the 95 % ellipsoid | latency {1000 * latencies[-1]:6.0f} ms | "
            f"rate {s['rate_hz']:5.2f} Hz | Acc@15 {s['acc15']:.2f} | inside95 {s['inside95']:.2f} | "
            f"entropy {msg.entropy:+.2f}",
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
    if se3:
        s = summarize(errors, latencies, elapsed, flips, translation_errors, distances, inside)
    else:
        s = summarize(errors, latencies, elapsed, flips)
    s["unmatched"] = unmatched[0]
    print(
        f"\nsummary over {elapsed:.1f} s: {s['frames']} frames, median error {s['median_error_deg']:.1f} deg, "
        f"Acc@15 {s['acc15']:.2f}, rate {s['rate_hz']:.2f} Hz, latency p50 {s['latency_ms_p50']:.0f} ms, "
        f"p90 {s['latency_ms_p90']:.0f} ms, {s['flips_per_min']:.1f} flips/min of the mode (> 30 deg while the "
        f"truth moves < 5 deg) ({unmatched[0]} results without a matching truth)",
        flush=True,
    )
    if se3:
        print(
            f"translation: median error {s['median_translation_error_mm']:.0f} mm "
            f"({s['median_translation_error_pct']:.1f} % of the distance), p90 {s['translation_error_mm_p90']:.0f} mm; "
            f"truth inside the 95 % ellipsoid in {s['inside95']:.2f} of the frames",
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
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"default {DEFAULT_CHECKPOINT}, with --se3 {DEFAULT_SE3_CHECKPOINT}")
    parser.add_argument("--se3", action="store_true",
                        help="SE(3) demo: the object moving in 3D with detection boxes, translation scored too")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of results to score")
    parser.add_argument("--rate", type=float, default=5.0, help="camera frames per second")
    parser.add_argument("--shape", default="cube",
                        help="the object (with --se3: the checkpoint's, this only when it has no training config)")
    parser.add_argument("--size", type=int, default=224,
                        help="side (px) of the camera images; the node resizes crops to the model's input "
                             "(not with --se3: the checkpoint's training camera, 640x480)")
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
    if opts.checkpoint is None:
        opts.checkpoint = DEFAULT_SE3_CHECKPOINT if opts.se3 else DEFAULT_CHECKPOINT
    if opts.listener:
        return _listen(opts)

    checkpoint = opts.checkpoint if opts.checkpoint.is_absolute() else (Path.cwd() / opts.checkpoint)
    if not checkpoint.is_file() and not opts.checkpoint.is_absolute() and (REPO / opts.checkpoint).is_file():
        checkpoint = REPO / opts.checkpoint
    if not checkpoint.is_file():
        train_hint = (
            "python train/train.py --config config/train/spyropose_duck_cpu.yaml\n"
            "  then:  python train/export.py --checkpoint checkpoints/se3_duck_run.pt --out checkpoints/se3_duck.pt"
            if opts.se3 else "python train/train.py --config config/train/demo.yaml"
        )
        print(f"checkpoint not found: {checkpoint}\nTrain one with:  {train_hint}\nor pass --checkpoint PATH.",
              file=sys.stderr)
        return 2
    if opts.se3:
        try:
            scene = _se3_scene(checkpoint, opts.shape)
        except ValueError as exc:
            print(f"--se3: {exc}", file=sys.stderr)
            return 2

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    py = sys.executable
    distance = 4.0  # pose_core.data.Camera's default distance: the nominal range is then right
    if opts.se3:
        commands = _se3_commands(opts, checkpoint, py)
        print(
            f"demo (SE(3)): {scene}, {opts.rate} Hz, checkpoint {checkpoint}; the node on the boxes of "
            f"/sim/detections; scoring {opts.duration:.0f} s of results (the node needs a while to start)",
            flush=True,
        )
        return _run(commands, env)
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
    print(
        f"demo: {opts.shape} at {opts.rate} Hz, {opts.size}x{opts.size}, checkpoint {checkpoint}; "
        f"scoring {opts.duration:.0f} s of results (the node needs a while to start)",
        flush=True,
    )
    return _run(commands, env)


def _se3_scene(checkpoint: Path, fallback_shape: str) -> str:
    """What the SE(3) scene of ``checkpoint`` shows (e.g. ``"duck (0.15 m) at 640x480, f = 600 px"``);
    ValueError when the checkpoint cannot drive it (not an SE(3) one, no single object)."""
    from pose_core.model import read_checkpoint
    from pose_distribution_ros.sim_scene import checkpoint_object, scene_camera

    try:
        kind = read_checkpoint(checkpoint).get("kind")
        if kind != "spyropose":
            raise ValueError(f"{checkpoint} is not an SE(3) checkpoint (kind {kind!r}, not 'spyropose'); "
                             "train one with config/train/spyropose_duck_cpu.yaml or drop --se3")
        obj = checkpoint_object(checkpoint, fallback_shape)
    except (OSError, KeyError) as exc:
        raise ValueError(f"cannot tell the object of {checkpoint}: {exc}") from exc
    sc = obj.scene
    note = "" if obj.source == "training config" else f" ({obj.source})"
    return f"{obj.name} ({sc.diameter_m:g} m) at {sc.width}x{sc.height}, f = {scene_camera(sc)[0, 0]:g} px{note}"


def _se3_commands(opts: argparse.Namespace, checkpoint: Path, py: str) -> dict[str, list[str]]:
    """The three child processes of the SE(3) demo (module docstring)."""
    return {
        "camera": [py, "-m", "pose_distribution_ros.sim_scene", "--checkpoint", str(checkpoint), "--shape",
                   opts.shape, "--rate", str(opts.rate)],
        "node": [py, "-m", "pose_distribution_ros.node", "--ros-args", "--params-file", str(PARAMS),
                 "-r", "image:=/sim/image", "-r", "camera_info:=/sim/camera_info", "-r", "detections:=/sim/detections",
                 "-p", f"checkpoint:={checkpoint}", "-p", f"device:={opts.device}", "-p", "use_detections:=true"]
        + [a for p in opts.node_param for a in ("-p", p)],
        "listener": [py, "-m", "pose_distribution_ros.demo", "--listener", "--se3", "--checkpoint", str(checkpoint),
                     "--shape", opts.shape, "--duration", str(opts.duration), "--start-timeout",
                     str(opts.start_timeout)]
        + (["--summary-json", opts.summary_json] if opts.summary_json else [])
        + ["--plot", opts.plot],
    }  # fmt: skip


def _run(commands: dict[str, list[str]], env: dict[str, str]) -> int:
    """Start the camera, the node and the listener; wait for the listener; stop them all (module docstring)."""
    procs: dict[str, subprocess.Popen[Any]] = {}
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
