"""The node's ``reconstruction_checkpoint`` option, with real rclpy in separate processes: 640x480 camera images
(with CameraInfo and an aligned depth image where it matters) in, each object's reconstructed shape out on
``~/shape`` (``sensor_msgs/PointCloud2`` in the object's TF frame, the image's stamp; metres: the configured size
without depth, the visible depth points' size with it); off by default, and a checkpoint of another kind is
refused with an error in the log while the node goes on publishing poses.

Small checkpoints written by the tests: an untrained one checks that the node publishes the model's answer for
the crop; one whose decoder answers a fixed unit sphere (its last layer's bias) checks the depth sizing against a
rendered sphere, which looks the same in every orientation, so the untrained pose model's rotation does not
matter. The shapes' quality is ``bench/reconstruction.py``'s; the fits' accuracy ``test/test_shape_fusion.py``'s.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import collect_messages, node_domain, require_ros, run_python, start_publisher  # noqa: E402
from test_node import START_TIMEOUT_S, RunningNode, _start_node  # noqa: E402
from test_node_refine import _image, _stop  # noqa: E402

require_ros("rclpy", "pose_distribution.msg", "sensor_msgs.msg", "geometry_msgs.msg")

W, H = 640, 480
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
CLOUD = "sensor_msgs/msg/PointCloud2"
POSE = "geometry_msgs/msg/PoseWithCovarianceStamped"
N_POINTS = 120
#: The rendered sphere: radius (m), centre in the camera frame (m; off the optical axis), the camera's focal (px).
RADIUS, CENTER, FOCAL = 0.1, np.array([0.03, -0.02, 0.6]), 600.0
SPHERE_SIZE = 2 * RADIUS * 3**0.5  # its bounding-box diagonal (m)
NOMINAL_SIZE = 0.6  # reconstruction_size_m of the depth test: 1.7x the truth, what a cloud ignoring depth would be
CAMERA_FRAME, OBJECT_FRAME = "cam", "mug"
COMMON = ("image_size:=64", "device:=cpu", "num_samples:=20", "mode_resolution_deg:=7.5", "temporal_filter:=false",
          f"object_frame_id:={OBJECT_FRAME}")


def _sphere() -> tuple[np.ndarray, np.ndarray]:
    """Unit ico-sphere (level 3: 642 vertices) vertices and faces."""
    from pose_core.surface import ico_sphere

    v, f = ico_sphere(3)
    return v.numpy(), f.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from pose_core.data.reconstruction import unit_diagonal
    from pose_core.model import ImageToSphere, save_checkpoint
    from pose_core.models.reconstruction import ReconstructionConfig, ShapeReconstructor

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    i2s = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4)

    def reconstructor(n: int) -> ShapeReconstructor:
        return ShapeReconstructor(ReconstructionConfig(decoder="points", encoder="resnet18", pretrained=False,
                                                       image_size=32, n_points=n, embedding=16, hidden=16))

    recon = reconstructor(N_POINTS)
    unit_sphere = unit_diagonal(_sphere()[0])
    sphere = reconstructor(len(unit_sphere))
    last = sphere.decoder[-1]
    with torch.no_grad():  # every image -> the unit-diagonal sphere
        last.weight.zero_()
        last.bias.copy_(torch.from_numpy(unit_sphere.ravel()).float())
    return {"model": save_checkpoint(i2s, d / "small.pt"), "recon": save_checkpoint(recon, d / "recon.pt"),
            "sphere": save_checkpoint(sphere, d / "sphere.pt")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with node_domain(tmp_path_factory.mktemp("ros_log")) as e:
        yield e


def _node(env: dict[str, str], log: Path, checkpoints: dict[str, Path], *params: str) -> RunningNode:
    proc, ns = _start_node(env, log, f"checkpoint:={checkpoints['model']}", *COMMON, *params)
    return RunningNode(proc, ns, log)


def _cloud_points(m: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(bytes(m["data"]), dtype="<f4").reshape(-1, 3)


def _assert_cloud_layout(m: dict[str, Any], sec: int, n: int | None = None) -> None:
    assert m["header"]["frame_id"] == OBJECT_FRAME and m["header"]["stamp"] == {"sec": sec, "nanosec": 0}
    width = m["width"] if n is None else n
    assert m["height"] == 1 and m["width"] == width and m["point_step"] == 12 and m["row_step"] == 12 * width
    assert m["is_dense"] and not m["is_bigendian"] and len(m["data"]) == 12 * width
    assert [(f["name"], f["offset"], f["datatype"], f["count"]) for f in m["fields"]] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]  # FLOAT32
    assert np.isfinite(_cloud_points(m)).all()


def _first(msg_type: str, topic: str, env: dict[str, str], accept: Any, node: RunningNode,
           timeout_s: float = 60.0) -> dict[str, Any]:
    """The first message on ``topic`` that ``accept`` takes (the first frames may precede camera_info or depth)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in collect_messages(msg_type, topic, env, count=2, timeout_s=max(5.0, deadline - time.monotonic())):
            if accept(m):
                return m
    raise AssertionError(f"no accepted message on {topic} within {timeout_s} s; log:\n{node.text()[-3000:]}")


def test_shapes_published_in_the_object_frame_at_640x480(env, checkpoints, tmp_path) -> None:
    """No depth: the model's answer for the crop, at reconstruction_size_m."""
    from pose_core.model import load_model
    from pose_core.preprocess import model_input

    node = _node(env, tmp_path / "node.log", checkpoints, f"reconstruction_checkpoint:={checkpoints['recon']}",
                 "reconstruction_size_m:=0.5")
    try:
        node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        assert "loaded shape reconstruction" in node.text()
        with start_publisher(IMAGE, node.topic("image"), _image(11), env, rate_hz=30.0, reliability="best_effort"):
            msgs = collect_messages(CLOUD, node.output("shape"), env, count=2, timeout_s=90.0)
        m = msgs[-1]
        _assert_cloud_layout(m, 11, N_POINTS)
        # the model's own answer for the whole image's crop, scaled to the configured 0.5 m: what the node published
        rgb = np.asarray(_image(11)["data"], dtype=np.uint8).reshape(H, W, 3)
        x, _ = model_input(rgb, 32)
        want = 0.5 * load_model(checkpoints["recon"]).reconstruct(x)[0].detach().numpy()
        assert np.allclose(_cloud_points(m), want, atol=1e-4)
    finally:
        _stop(node)


def _sphere_frame(sec: int) -> dict[str, dict[str, Any]]:
    """Image (a grey disc where the sphere is), aligned 32FC1 depth (0: nothing) and CameraInfo of one frame."""
    from pose_core.data.sphere_projection import render_depth

    K = np.array([[FOCAL, 0.0, (W - 1) / 2], [0.0, FOCAL, (H - 1) / 2], [0.0, 0.0, 1.0]])
    v, f = _sphere()
    depth = render_depth(RADIUS * v, f, K, np.eye(3), CENTER, W, H)
    rgb = np.where(depth[..., None] > 0, 160, 0).astype(np.uint8).repeat(3, axis=2)
    header = {"stamp": {"sec": sec, "nanosec": 0}, "frame_id": CAMERA_FRAME}
    return {
        "image": {"header": header, "height": H, "width": W, "encoding": "rgb8", "is_bigendian": 0, "step": W * 3,
                  "data": rgb.ravel().tolist()},
        "depth": {"header": header, "height": H, "width": W, "encoding": "32FC1", "is_bigendian": 0, "step": W * 4,
                  "data": np.frombuffer(depth.astype("<f4").tobytes(), np.uint8).tolist()},
        "camera_info": {"header": header, "width": W, "height": H, "distortion_model": "plumb_bob",
                        "k": K.ravel().tolist()},
    }


def test_with_depth_the_shape_has_the_rendered_objects_size_and_lies_on_it(env, checkpoints, tmp_path) -> None:
    """640x480 image + depth + CameraInfo at 15 Hz: the cloud is sized by the visible depth points (not the
    configured 0.6 m), and moved by the pose the node publishes for that frame it lies on the rendered sphere."""
    import torch

    from pose_core import so3

    node = _node(env, tmp_path / "node.log", checkpoints, f"reconstruction_checkpoint:={checkpoints['sphere']}",
                 f"reconstruction_size_m:={NOMINAL_SIZE}")
    sec = 21
    frame = _sphere_frame(sec)
    n_sphere = len(_sphere()[0])
    try:
        node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        with (
            start_publisher(CAMERA_INFO, node.topic("camera_info"), frame["camera_info"], env, rate_hz=15.0,
                            reliability="best_effort"),
            start_publisher(IMAGE, node.topic("depth"), frame["depth"], env, rate_hz=15.0, reliability="best_effort"),
            start_publisher(IMAGE, node.topic("image"), frame["image"], env, rate_hz=15.0, reliability="best_effort"),
        ):
            # with depth the translation is on the visible surface (z < 0.6 m; nominal: 1 m) and the cloud is fused
            # (more points than the model's 642); every depth frame is the same, so any two of them agree
            pose = _first(POSE, node.output("pose"), env, lambda m: m["pose"]["pose"]["position"]["z"] < 0.7, node)
            cloud = _first(CLOUD, node.output("shape"), env, lambda m: m["width"] > 2 * n_sphere, node)
        assert "no valid depth" not in node.text()
    finally:
        _stop(node)
    _assert_cloud_layout(cloud, sec)
    assert pose["header"]["frame_id"] == CAMERA_FRAME and pose["header"]["stamp"]["sec"] == sec
    points = _cloud_points(cloud).astype(np.float64)
    size = float(np.linalg.norm(points.max(0) - points.min(0)))
    assert size == pytest.approx(SPHERE_SIZE, rel=0.03), size  # not NOMINAL_SIZE
    p, q = pose["pose"]["pose"]["position"], pose["pose"]["pose"]["orientation"]
    R = so3.quat_to_matrix(torch.tensor([q["x"], q["y"], q["z"], q["w"]], dtype=torch.float64)).numpy()
    in_camera = points @ R.T + np.array([p["x"], p["y"], p["z"]])
    off_surface = np.abs(np.linalg.norm(in_camera - CENTER, axis=1) - RADIUS)
    assert np.median(off_surface) < 0.002 and np.percentile(off_surface, 95) < 0.005, np.percentile(off_surface, 95)
    # both halves are there: the measured front and the predicted back, seen along the optical axis
    depth_along = in_camera[:, 2] - CENTER[2]
    assert depth_along.min() < -0.9 * RADIUS and depth_along.max() > 0.9 * RADIUS


_PUBLISHER_COUNTS = textwrap.dedent("""
    import json, sys, time, rclpy
    rclpy.init()
    node = rclpy.create_node("test_publisher_counts")
    topics = sys.argv[1:]
    deadline = time.monotonic() + 30.0
    while node.count_publishers(topics[0]) == 0 and time.monotonic() < deadline:  # discovered
        rclpy.spin_once(node, timeout_sec=0.2)
    time.sleep(1.0)
    print(json.dumps({t: node.count_publishers(t) for t in topics}), flush=True)
    rclpy.try_shutdown()
""")


def _publisher_counts(env: dict[str, str], *topics: str) -> dict[str, int]:
    """Publishers of each of ``topics`` seen from a child process (once the first has one)."""
    import json

    proc = run_python(["-c", _PUBLISHER_COUNTS, *topics], env)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_off_by_default_and_a_checkpoint_of_another_kind_is_refused_with_poses_served(env, checkpoints,
                                                                                         tmp_path) -> None:
    """Two nodes side by side: one with the parameter at its default (empty), one given a pose checkpoint as its
    reconstruction_checkpoint. Both publish poses for the images and have no ~/shape publisher; the second says
    why in an error line."""
    default = _node(env, tmp_path / "default.log", checkpoints)
    wrong = _node(env, tmp_path / "wrong.log", checkpoints, f"reconstruction_checkpoint:={checkpoints['model']}")
    try:
        for node in (default, wrong):
            node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        line = next(ln for ln in wrong.text().splitlines() if "reconstruction_checkpoint" in ln)
        assert "[ERROR]" in line and "not a shape reconstruction" in line and "image_to_sphere" in line, line
        assert "shapes are off" in line and "loaded shape reconstruction" not in wrong.text()
        assert "reconstruction" not in default.text()
        for sec, node in ((31, default), (32, wrong)):
            with start_publisher(IMAGE, node.topic("image"), _image(sec), env, rate_hz=30.0,
                                 reliability="best_effort"):
                (m,) = collect_messages(POSE, node.output("pose"), env, count=1, timeout_s=60.0)
                counts = _publisher_counts(env, node.output("pose"), node.output("shape"))
            assert m["header"]["stamp"]["sec"] == sec
            assert counts == {node.output("pose"): 1, node.output("shape"): 0}, counts
    finally:
        for node in (default, wrong):
            if node.proc.poll() is None:
                _stop(node)
    assert default.proc.returncode == 0 and wrong.proc.returncode == 0
