"""The pose_distribution node, with real rclpy, in separate processes.

The node runs as a child process (``python -m pose_distribution_ros.node`` with
``config/pose_distribution.yaml`` and a small untrained checkpoint written to a temporary
directory); images come from ``test/ros_helpers.py`` publisher processes and outputs are
collected by collector processes, on a random ROS_DOMAIN_ID with discovery limited to this host
and a topic namespace of its own. One node serves the whole module (start-up, mostly importing
torch and e3nn, takes 10 to 30 s on a busy 2-core machine).

``test_mode_within_15_deg_of_truth`` needs a *trained* checkpoint at ``checkpoints/demo.pt`` (or
``$POSE_DISTRIBUTION_CHECKPOINT``); without it, it is skipped (an untrained model's mode is
arbitrary).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import collect_messages, node_domain, require_ros, start_publisher, stop_process  # noqa: E402

require_ros(
    "rclpy", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "diagnostic_msgs.msg", "vision_msgs.msg",
    "visualization_msgs.msg",
)

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "config" / "pose_distribution.yaml"
#: Trained checkpoint for the accuracy test (POSE_DISTRIBUTION_CHECKPOINT overrides the default).
TRAINED = Path(os.environ.get("POSE_DISTRIBUTION_CHECKPOINT", REPO / "checkpoints" / "demo.pt"))
SIZE = 64
FRAME = "test_camera_optical"
OBJECT = "test_object"
START_TIMEOUT_S = 120.0
IMAGE = "sensor_msgs/msg/Image"
POSE_DISTRIBUTION = "pose_distribution/msg/PoseDistribution"
DETECTION3D_ARRAY = "vision_msgs/msg/Detection3DArray"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
#: visualization_msgs/Marker constants.
LINE_LIST, SPHERE, TEXT_VIEW_FACING, ADD, DELETE = 5, 2, 9, 0, 2


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from pose_core.model import ImageToSphere, save_checkpoint

    torch.manual_seed(0)
    model = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with node_domain(tmp_path_factory.mktemp("ros_log")) as e:
        yield e


class RunningNode:
    """The node child process, its namespace and its log (stdout and stderr in one file)."""

    def __init__(self, proc: subprocess.Popen[Any], ns: str, log: Path):
        self.proc, self.ns, self.log = proc, ns, log

    def topic(self, name: str) -> str:
        return f"{self.ns}/{name}"

    def output(self, name: str) -> str:
        return f"{self.ns}/pose_distribution/{name}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = 30.0, start: int = 0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.text()[start:]
            if needle in text:
                return text
            assert self.proc.poll() is None, f"node exited (rc {self.proc.returncode}):\n{self.text()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no log line containing {needle!r} within {timeout_s} s; log:\n{self.text()[-4000:]}")


def _start_node(
    env: dict[str, str], log: Path, *params: str, lifecycle: bool = False
) -> tuple[subprocess.Popen[Any], str]:
    ns = f"/test_{uuid.uuid4().hex[:10]}"
    args = [
        sys.executable,
        "-m",
        "pose_distribution_ros.node",
        *(["--lifecycle"] if lifecycle else []),
        "--ros-args",
        "-r",
        f"__ns:={ns}",
        "--params-file",
        str(PARAMS),
    ]
    for p in params:
        args += ["-p", p]
    with open(log, "w") as f:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    return proc, ns


@pytest.fixture(scope="module")
def node(
    env: dict[str, str], small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNode]:
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc, ns = _start_node(
        env,
        log,
        f"checkpoint:={small_checkpoint}",
        f"image_size:={SIZE}",
        "device:=cpu",
        "max_rate_hz:=0.0",
        f"object_frame_id:={OBJECT}",
        "num_samples:=50",
        "mode_resolution_deg:=7.5",
    )
    running = RunningNode(proc, ns, log)
    try:
        running.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        yield running
    finally:
        rc = stop_process(proc, timeout_s=15.0)
        assert rc == 0, f"node did not shut down cleanly on SIGINT (rc {rc}):\n{running.text()[-4000:]}"


# --------------------------------------------------------------------------- messages as dicts


def _header(sec: int) -> dict[str, Any]:
    return {"stamp": {"sec": sec, "nanosec": 123456}, "frame_id": FRAME}


def _image(sec: int, encoding: str = "rgb8", **override: Any) -> dict[str, Any]:
    rng = np.random.default_rng(sec)
    pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    msg = {
        "header": _header(sec),
        "height": SIZE,
        "width": SIZE,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": SIZE * 3,
        "data": pixels.ravel().tolist(),
    }
    msg.update(override)
    return msg


def _camera_info(sec: int, cx: float = 40.0) -> dict[str, Any]:
    f = 1.75 * SIZE
    return {
        "header": _header(sec),
        "width": SIZE,
        "height": SIZE,
        "distortion_model": "plumb_bob",
        "k": [f, 0.0, cx, 0.0, f, (SIZE - 1) / 2, 0.0, 0.0, 1.0],
    }


def _depth(sec: int, value: float) -> dict[str, Any]:
    d = np.full((SIZE, SIZE), value, dtype=np.float32)
    return {
        "header": _header(sec),
        "height": SIZE,
        "width": SIZE,
        "encoding": "32FC1",
        "is_bigendian": 0,
        "step": SIZE * 4,
        "data": np.frombuffer(d.tobytes(), np.uint8).tolist(),
    }


def _wait_for_output(
    node: RunningNode,
    env: dict[str, str],
    sec: int,
    topic: str = "distribution",
    msg_type: str = POSE_DISTRIBUTION,
    timeout_s: float = 40.0,
    accept: Callable[[dict[str, Any]], bool] = lambda m: True,
) -> dict[str, Any]:
    """The first message on ``~/topic`` whose header stamp has seconds ``sec`` and that ``accept`` takes."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        left = max(1.0, deadline - time.monotonic())
        for m in collect_messages(msg_type, node.output(topic), env, count=3, timeout_s=left):
            if m["header"]["stamp"]["sec"] == sec and accept(m):
                return m
            seen.append(m["header"]["stamp"])
    raise AssertionError(f"no {topic} for stamp {sec} within {timeout_s} s (saw {seen}); log:\n{node.text()[-3000:]}")


def wait_for_markers(node: RunningNode, env: dict[str, str], sec: int, timeout_s: float = 40.0) -> dict[str, Any]:
    """The first ``~/markers`` MarkerArray whose markers are stamped with seconds ``sec`` (it has no header)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        left = max(1.0, deadline - time.monotonic())
        for m in collect_messages(MARKER_ARRAY, node.output("markers"), env, count=3, timeout_s=left):
            stamps = {mk["header"]["stamp"]["sec"] for mk in m["markers"]}
            if stamps == {sec}:
                return m
            seen.append(sorted(stamps))
    raise AssertionError(f"no markers for stamp {sec} within {timeout_s} s (saw {seen}); log:\n{node.text()[-3000:]}")


# --------------------------------------------------------------------------- outputs of a good image


@pytest.fixture(scope="module")
def outputs(node: RunningNode, env: dict[str, str]) -> dict[str, Any]:
    """Every output of the node for one good image with camera_info and no depth."""
    sec = 100
    out: dict[str, Any] = {}
    with (
        start_publisher("sensor_msgs/msg/CameraInfo", node.topic("camera_info"), _camera_info(sec), env),
        start_publisher(IMAGE, node.topic("image"), _image(sec), env),
    ):
        # Results from before the node got camera_info have no ray correction (position x = 0);
        # everything collected after the first one with it uses it too.
        out["distribution"] = _wait_for_output(node, env, sec, accept=lambda m: m["mode"]["position"]["x"] < -1e-3)
        out["distributions"] = _wait_for_output(
            node, env, sec, "distributions", "pose_distribution/msg/PoseDistributionArray"
        )
        out["pose"] = _wait_for_output(node, env, sec, "pose", "geometry_msgs/msg/PoseWithCovarianceStamped")
        out["samples"] = _wait_for_output(node, env, sec, "samples", "geometry_msgs/msg/PoseArray")
        out["detections"] = _wait_for_output(node, env, sec, "detections", DETECTION3D_ARRAY)
        out["markers"] = wait_for_markers(node, env, sec)
        out["tf"] = collect_messages("tf2_msgs/msg/TFMessage", "/tf", env, count=1, timeout_s=30.0, depth=100)[0]
        out["diagnostics"] = collect_messages(
            "diagnostic_msgs/msg/DiagnosticArray", "/diagnostics", env, count=1, timeout_s=30.0
        )[0]
    return out


def _norm(q: dict[str, float]) -> float:
    return math.sqrt(q["x"] ** 2 + q["y"] ** 2 + q["z"] ** 2 + q["w"] ** 2)


def test_headers_echo_stamp_and_frame(outputs: dict[str, Any]) -> None:
    for name in ("distribution", "distributions", "pose", "samples"):
        h = outputs[name]["header"]
        assert h == _header(100), f"{name}: {h}"
    arr = outputs["distributions"]
    assert len(arr["distributions"]) == 1 and arr["distributions"][0]["header"] == _header(100)
    assert outputs["distribution"]["object_frame_id"] == OBJECT


def test_quaternions_unit_and_weights_sum_to_one(outputs: dict[str, Any]) -> None:
    d = outputs["distribution"]
    assert _norm(d["mode"]["orientation"]) == pytest.approx(1.0, abs=1e-6)
    assert len(d["samples"]) == 50 == len(d["sample_weights"])
    for q in d["samples"]:
        assert _norm(q) == pytest.approx(1.0, abs=1e-6)
    assert min(d["sample_weights"]) >= 0 and sum(d["sample_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert d["modes"] and all(_norm(m["orientation"]) == pytest.approx(1.0, abs=1e-6) for m in d["modes"])
    assert sum(m["probability_mass"] for m in d["modes"]) <= 1.0 + 1e-5
    assert d["entropy"] <= math.log(math.pi**2) + 1e-3
    assert d["mode_resolution"] == pytest.approx(math.radians(7.5), rel=1e-5)
    for p in outputs["samples"]["poses"]:
        assert _norm(p["orientation"]) == pytest.approx(1.0, abs=1e-6)
    assert len(outputs["samples"]["poses"]) == 50


def test_covariance_symmetric_psd(outputs: dict[str, Any]) -> None:
    for cov in (outputs["distribution"]["covariance"], outputs["pose"]["pose"]["covariance"]):
        C = np.asarray(cov, dtype=np.float64).reshape(6, 6)
        np.testing.assert_allclose(C, C.T, atol=1e-12)
        assert np.linalg.eigvalsh(C).min() >= -1e-12
        assert np.linalg.eigvalsh(C[3:, 3:]).min() > 0  # rotation block: never exactly certain
    np.testing.assert_allclose(outputs["distribution"]["covariance"], outputs["pose"]["pose"]["covariance"])


def test_translation_is_nominal_distance_along_the_ray(outputs: dict[str, Any]) -> None:
    p = outputs["distribution"]["mode"]["position"]
    t = np.array([p["x"], p["y"], p["z"]])
    assert np.linalg.norm(t) == pytest.approx(1.0, rel=1e-6)  # nominal_distance_m of the params file
    f = 1.75 * SIZE
    assert t[0] / t[2] == pytest.approx(((SIZE - 1) / 2 - 40.0) / f, rel=1e-6)  # ray through the image centre


def test_tf_frames(outputs: dict[str, Any]) -> None:
    (tf,) = outputs["tf"]["transforms"]
    assert tf["header"]["frame_id"] == FRAME and tf["child_frame_id"] == OBJECT
    assert tf["header"]["stamp"]["sec"] == 100
    assert _norm(tf["transform"]["rotation"]) == pytest.approx(1.0, abs=1e-6)
    mode = outputs["distribution"]["mode"]["orientation"]
    q = tf["transform"]["rotation"]
    assert abs(sum(mode[k] * q[k] for k in "xyzw")) == pytest.approx(1.0, abs=1e-6)


def test_detection3d_carries_the_mode_covariance_class_and_score(outputs: dict[str, Any]) -> None:
    arr = outputs["detections"]
    assert arr["header"] == _header(100)
    (det,) = arr["detections"]
    assert det["header"] == _header(100) and det["id"] == "image"  # its track: the whole image
    (result,) = det["results"]
    d = outputs["distribution"]
    assert result["hypothesis"]["class_id"] == "object"  # the class_id parameter's default
    # score: the probability mass of the published mode (the first of the message's modes)
    assert result["hypothesis"]["score"] == pytest.approx(d["modes"][0]["probability_mass"], rel=1e-6)
    assert 0 < result["hypothesis"]["score"] <= 1
    for k in "xyz":
        assert result["pose"]["pose"]["position"][k] == pytest.approx(d["mode"]["position"][k], abs=1e-12)
    q, m = result["pose"]["pose"]["orientation"], d["mode"]["orientation"]
    assert abs(sum(q[k] * m[k] for k in "xyzw")) == pytest.approx(1.0, abs=1e-6)
    # covariance in PoseWithCovariance order, identical to the PoseDistribution's (and not zero)
    np.testing.assert_allclose(result["pose"]["covariance"], d["covariance"], rtol=0, atol=0)
    C = np.asarray(result["pose"]["covariance"]).reshape(6, 6)
    assert C[0, 0] > 0 and C[3, 3] > 0
    assert det["bbox"]["center"] == result["pose"]["pose"]
    assert det["bbox"]["size"] == {"x": 0.0, "y": 0.0, "z": 0.0}  # object_size_m unknown


def test_markers_draw_the_mode_samples_ellipsoid_and_label(outputs: dict[str, Any]) -> None:
    markers = outputs["markers"]["markers"]
    assert {m["ns"] for m in markers} == {OBJECT}
    by_id = {m["id"]: m for m in markers}
    assert sorted(by_id) == [0, 1, 2, 3] and all(m["action"] == ADD for m in markers)
    assert all(m["header"] == _header(100) for m in markers)
    p = outputs["distribution"]["mode"]["position"]
    origin = np.array([p["x"], p["y"], p["z"]])
    mode = by_id[0]
    assert mode["type"] == LINE_LIST and len(mode["points"]) == 6 and len(mode["colors"]) == 6
    pts = np.array([[q["x"], q["y"], q["z"]] for q in mode["points"]])
    np.testing.assert_allclose(pts[0::2], np.tile(origin, (3, 1)), atol=1e-9)
    axes = pts[1::2] - origin  # the mode's axes, 0.1 m long (marker_axis_length_m), orthonormal
    np.testing.assert_allclose(axes @ axes.T, 0.01 * np.eye(3), atol=1e-9)
    assert [c["r"] for c in mode["colors"][0::2]] == [1.0, 0.0, 0.0]  # x red, y green, z blue
    samples = by_id[1]
    assert samples["type"] == LINE_LIST and len(samples["points"]) == 30 * 6  # marker_samples of 50
    assert all(0.1 - 1e-6 <= c["a"] <= 1.0 for c in samples["colors"])
    ellipsoid = by_id[2]
    assert ellipsoid["type"] == SPHERE  # nominal translation: large, elongated along the viewing ray
    diameters = sorted(ellipsoid["scale"][k] for k in "xyz")
    assert diameters[0] > 0 and diameters[2] > 2 * diameters[0]
    for k in "xyz":
        assert ellipsoid["pose"]["position"][k] == pytest.approx(p[k], abs=1e-12)
    assert by_id[3]["type"] == TEXT_VIEW_FACING and by_id[3]["text"].startswith("object ")


def test_diagnostics(outputs: dict[str, Any]) -> None:
    (status,) = outputs["diagnostics"]["status"]
    assert "pose_distribution" in status["name"]
    values = {kv["key"]: kv["value"] for kv in status["values"]}
    assert float(values["latency_ms_p50"]) > 0 and int(values["processed"]) >= 1


# --------------------------------------------------------------------------- bad input


BAD_IMAGES = {
    "unsupported encoding": ({"encoding": "yuv422_yuy2"}, "unsupported image encoding 'yuv422_yuy2'"),
    "zero size": ({"height": 0, "width": 0, "step": 0, "data": []}, "zero-sized image"),
    "short data": ({"data": list(range(100))}, "image data too short: 100 bytes < height * step = 12288"),
}


def test_bad_images_are_logged_and_the_next_good_one_is_served(node: RunningNode, env: dict[str, str]) -> None:
    for i, (kind, (override, expected)) in enumerate(BAD_IMAGES.items()):
        start = len(node.text())
        with start_publisher(IMAGE, node.topic("image"), _image(200 + i, **override), env):
            text = node.wait_for_log(expected, timeout_s=30.0, start=start)
        assert "[ERROR]" in text, f"{kind}: not logged as an error:\n{text[-2000:]}"
        with start_publisher(IMAGE, node.topic("image"), _image(300 + i), env):
            _wait_for_output(node, env, 300 + i)
        assert node.proc.poll() is None


def _uses_depth_and_new_info(m: dict[str, Any]) -> bool:
    """Result computed with the depth image and the camera_info of test_depth (principal point at the centre)."""
    p = m["mode"]["position"]
    return p["z"] > 1.5 and abs(p["x"]) < 1e-3


def test_depth(node: RunningNode, env: dict[str, str]) -> None:
    info = ("sensor_msgs/msg/CameraInfo", node.topic("camera_info"))
    # Valid depth: the translation comes from it (median depth 2 m at the region centre, which is
    # the principal point here). The first results may precede the first depth message or use
    # the previous test's camera_info.
    sec = 400
    with (
        start_publisher(*info, _camera_info(sec, cx=31.5), env),
        start_publisher(IMAGE, node.topic("depth"), _depth(sec, 2.0), env),
        start_publisher(IMAGE, node.topic("image"), _image(sec), env),
    ):
        d = _wait_for_output(node, env, sec, accept=_uses_depth_and_new_info)
    p = d["mode"]["position"]
    assert p["z"] == pytest.approx(2.0, abs=1e-6) and abs(p["x"]) < 1e-9 and abs(p["y"]) < 1e-9
    # All-NaN depth: an error naming the problem, and the node still answers (nominal translation).
    start = len(node.text())
    with (
        start_publisher(*info, _camera_info(sec + 1, cx=31.5), env),
        start_publisher(IMAGE, node.topic("depth"), _depth(sec + 1, float("nan")), env),
        start_publisher(IMAGE, node.topic("image"), _image(sec + 1), env),
    ):
        node.wait_for_log("no valid depth", timeout_s=30.0, start=start)
        nan_case = _wait_for_output(node, env, sec + 1)
    q = nan_case["mode"]["position"]
    assert math.sqrt(q["x"] ** 2 + q["y"] ** 2 + q["z"] ** 2) == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------- start-up failures


def _run_node_with_checkpoint(env: dict[str, str], checkpoint: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run the node with ``checkpoint`` until it exits (it should, at start-up)."""
    command = [sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "--params-file", str(PARAMS),
               "-p", f"checkpoint:={checkpoint}"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_missing_checkpoint_exits_non_zero(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_checkpoint.pt"
    t0 = time.monotonic()
    proc = _run_node_with_checkpoint(env, missing, timeout=60)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "not found" in out and str(missing) in out and "train/train.py" in out, out
    assert time.monotonic() - t0 < 30


def test_unreadable_checkpoint_exits_non_zero(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = _run_node_with_checkpoint(env, bad, timeout=90)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "cannot load checkpoint" in out and str(bad) in out, out


# --------------------------------------------------------------------------- accuracy (trained model only)


@pytest.mark.skipif(
    not TRAINED.is_file(),
    reason=f"needs a trained checkpoint at {TRAINED} (python train/train.py --config config/train/demo.yaml)",
)
def test_mode_within_15_deg_of_truth(env: dict[str, str], tmp_path: Path) -> None:
    """The demo (simulated camera -> node -> listener) with the trained checkpoint: most modes within 15 deg."""
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pose_distribution_ros.demo",
            "--duration",
            "10",
            "--checkpoint",
            str(TRAINED),
            "--summary-json",
            str(summary),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    result = json.loads(summary.read_text())
    assert result["frames"] >= 5, result
    assert result["acc15"] > 0.5, result


def test_demo_without_checkpoint_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "demo.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "pose_distribution_ros.demo", "--checkpoint", str(missing), "--duration", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "train/train.py --config config/train/demo.yaml" in proc.stderr


def test_demo_summary() -> None:
    from pose_distribution_ros.demo import summarize

    s = summarize([1.0, 20.0, 3.0, 14.0], [0.1, 0.2, 0.3, 0.4], elapsed_s=1.5)
    assert s["frames"] == 4 and s["median_error_deg"] == pytest.approx(8.5) and s["acc15"] == pytest.approx(0.75)
    assert s["rate_hz"] == pytest.approx(2.0) and s["latency_ms_p50"] == pytest.approx(250.0)
    assert math.isnan(summarize([], [], 0.0)["acc15"])
