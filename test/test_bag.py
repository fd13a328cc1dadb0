"""``python -m pose_distribution_ros.bag``: the estimator over a rosbag2 (MCAP and SQLite3), outputs to a new bag.

Small bags are written here with ``rosbags`` (messages serialized by rclpy), the command runs as a
subprocess with the shipped checkpoint, and its output bag is read back with ``rosbags``:

* MCAP, whole image: 96 px renders of a cube (one 640x480), camera_info, truth poses, a frame with an
  unsupported encoding in the middle (skipped and counted, the rest processed);
* SQLite3, detections: boxes paired by stamp whether the array is logged before or after its image
  (even after the next image), an image without detections (skipped), an empty array (no objects),
  an aligned depth image logged after its colour image (the translation comes from it);
* Ctrl-C part way through a longer bag: exit status 130 and a readable, closed output bag;
* user errors: exit status 1 with a one-line message, no traceback, before any model is loaded.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import get_message_type, require_ros  # noqa: E402

require_ros("rclpy", "rosbags", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "vision_msgs.msg",
            "visualization_msgs.msg")  # fmt: skip

REPO = Path(__file__).resolve().parent.parent
TRAINED = Path(os.environ.get("POSE_DISTRIBUTION_CHECKPOINT", REPO / "checkpoints" / "demo.pt"))
FRAME = "bag_camera_optical"
IMAGE_TOPIC, INFO_TOPIC, TRUTH_TOPIC = "/camera/image_raw", "/camera/camera_info", "/truth"
DEPTH_TOPIC, DETECTIONS_TOPIC = "/camera/aligned_depth", "/detector/detections"
NS = "/pose_distribution"
OUTPUT_TYPES = {
    f"{NS}/distribution": "pose_distribution/msg/PoseDistribution",
    f"{NS}/distributions": "pose_distribution/msg/PoseDistributionArray",
    f"{NS}/pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    f"{NS}/samples": "geometry_msgs/msg/PoseArray",
    f"{NS}/detections": "vision_msgs/msg/Detection3DArray",
    f"{NS}/markers": "visualization_msgs/msg/MarkerArray",
    "/tf": "tf2_msgs/msg/TFMessage",
}
SMALL = 96
T0 = 1_700_000_000 * 10**9  # ns; log times and stamps
PERIOD = 100_000_000  # 10 Hz
RUN_TIMEOUT_S = 240

needs_checkpoint = pytest.mark.skipif(not TRAINED.is_file(), reason=f"needs the trained checkpoint {TRAINED}")


# --------------------------------------------------------------------------- bags


def _stamp(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def _image(array: np.ndarray, stamp: int, encoding: str = "rgb8") -> Any:
    from pose_distribution_ros.image_conversion import numpy_to_image

    msg = numpy_to_image(array, encoding)
    msg.header.stamp, msg.header.frame_id = _stamp(stamp), FRAME
    return msg


def _camera_info(width: int, height: int, K: np.ndarray, stamp: int) -> Any:
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5)
    msg.header.stamp, msg.header.frame_id = _stamp(stamp), FRAME
    msg.k = K.ravel().tolist()
    return msg


def _truth(R: np.ndarray, stamp: int) -> Any:
    import torch
    from geometry_msgs.msg import PoseStamped

    from pose_core import so3

    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = _stamp(stamp), FRAME
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = so3.matrix_to_quat(torch.as_tensor(R)).tolist()
    msg.pose.position.z = 4.0
    return msg


def _detections(stamp: int, boxes: list[tuple[str, str, float, tuple[float, float], float]]) -> Any:
    """A Detection2DArray of ``(id, class, score, centre, side)`` boxes."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header.stamp, msg.header.frame_id = _stamp(stamp), FRAME
    for det_id, cls, score, (u, v), side in boxes:
        det = Detection2D(id=det_id)
        det.bbox.center.position.x, det.bbox.center.position.y = u, v
        det.bbox.size_x = det.bbox.size_y = side
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = cls, score
        det.results = [hyp]
        msg.detections.append(det)
    return msg


def _write_bag(path: Path, storage: str, messages: list[tuple[str, str, int, Any]]) -> None:
    """A rosbag2 of ``(topic, type, log time, rclpy message)`` (written in the order given)."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from pose_distribution_ros import bag

    store = bag.typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}
        for topic, msgtype, log_time, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], log_time, serialize_message(msg))


def _read_bag(path: Path) -> tuple[dict[str, Any], dict[str, list[tuple[int, Any]]]]:
    """The bag's connections by topic and its messages by topic: ``(log time, rclpy message)`` in log-time order."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    messages: dict[str, list[tuple[int, Any]]] = {}
    with Reader(path) as reader:
        connections = {c.topic: c for c in reader.connections}
        for conn, log_time, raw in reader.messages():
            messages.setdefault(conn.topic, []).append(
                (log_time, deserialize_message(bytes(raw), get_message_type(conn.msgtype)))
            )
    return connections, messages


def _run(*args: str | Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pose_distribution_ros.bag", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


def _summary_line(stdout: str, prefix: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"no single {prefix!r} line in:\n{stdout}"
    return lines[0]


@pytest.fixture(scope="module")
def renders() -> dict[str, Any]:
    """Cube renders: ``SMALL`` px at 5 rotations, one 640x480; their rotations and intrinsics."""
    import torch

    from pose_core import so3
    from pose_core.data import Camera, Renderer, get_shape

    cube = get_shape("cube")
    rotations = so3.random_rotations(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    small = Camera(width=SMALL, height=SMALL)
    renderer = Renderer(camera=small)
    images = [renderer.render(cube.mesh, R) for R in rotations[:5]]
    large = Camera(width=640, height=480)
    large_image = Renderer(camera=large).render(cube.mesh, rotations[5])
    return {"small": images, "small_K": small.K, "large": large_image, "large_K": large.K, "rotations": rotations}


# --------------------------------------------------------------------------- MCAP, whole image


@pytest.fixture(scope="module")
def mcap_run(renders: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The MCAP bag (frames 0-1 and 3-5 good, 2 of an unsupported encoding, 5 is 640x480), run with -p class_id."""
    root = tmp_path_factory.mktemp("mcap")
    msgs, good = [], []
    for i in range(6):
        stamp = T0 + i * PERIOD + 1234  # nanoseconds must survive the round trip
        if i == 5:
            image, K, (w, h) = renders["large"], renders["large_K"], (640, 480)
        else:
            image, K, (w, h) = renders["small"][i], renders["small_K"], (SMALL, SMALL)
        if i == 2:
            yuv = np.zeros((SMALL, SMALL, 2), np.uint8)
            msg = _image(yuv[:, :, 0], stamp, "mono8")
            msg.encoding, msg.step, msg.data = "yuv422", 2 * SMALL, yuv.tobytes()  # a wrong encoding
        else:
            msg = _image(image, stamp)
            good.append((stamp, i))
        log = stamp + 7_000_000  # log time = receive time: 7 ms after the stamp
        msgs.append((TRUTH_TOPIC, "geometry_msgs/msg/PoseStamped", log - 2, _truth(renders["rotations"][i], stamp)))
        msgs.append((INFO_TOPIC, "sensor_msgs/msg/CameraInfo", log + 1, _camera_info(w, h, K, stamp)))
        msgs.append((IMAGE_TOPIC, "sensor_msgs/msg/Image", log, msg))
    msgs.sort(key=lambda m: m[2])
    bag_path = root / "in_bag"
    _write_bag(bag_path, "mcap", msgs)
    out = root / "out_bag"
    result = _run(bag_path, out, "--truth-topic", TRUTH_TOPIC, "-p", "class_id:=widget", "-p", "num_samples:=20")
    return {"in": bag_path, "out": out, "result": result, "good": good, "root": root}


@needs_checkpoint
def test_mcap_run_succeeds_and_writes_mcap(mcap_run: dict[str, Any]) -> None:
    result = mcap_run["result"]
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert list(mcap_run["out"].glob("*.mcap")), "the output of an MCAP bag must be MCAP by default"
    assert (mcap_run["out"] / "metadata.yaml").is_file()


@needs_checkpoint
def test_outputs_topics_types_and_type_hashes(mcap_run: dict[str, Any]) -> None:
    from pose_distribution_ros import bag

    connections, _ = _read_bag(mcap_run["out"])
    store = bag.typestore()
    for topic, msgtype in OUTPUT_TYPES.items():
        assert topic in connections, f"{topic} missing: {sorted(connections)}"
        conn = connections[topic]
        assert conn.msgtype == msgtype
        assert conn.digest == store.hash_rihs01(msgtype), topic
        assert conn.msgdef.data, f"{topic}: no message definition in the MCAP schema"
    for topic in (IMAGE_TOPIC, INFO_TOPIC, TRUTH_TOPIC):  # the input copies
        assert topic in connections, f"input {topic} not copied"


@needs_checkpoint
def test_one_output_per_good_image_at_its_stamp_and_log_time(mcap_run: dict[str, Any]) -> None:
    _, msgs = _read_bag(mcap_run["out"])
    images = {_ns(m.header.stamp): t for t, m in msgs[IMAGE_TOPIC]}
    assert len(images) == 6, "every input image (the bad one too) must be copied"
    good = [stamp for stamp, _ in mcap_run["good"]]
    for topic in OUTPUT_TYPES:
        if topic == "/tf":
            stamps = [_ns(m.transforms[0].header.stamp) for _, m in msgs[topic]]
        elif topic.endswith("/markers"):
            stamps = [_ns(m.markers[0].header.stamp) for _, m in msgs[topic]]
        else:
            stamps = [_ns(m.header.stamp) for _, m in msgs[topic]]
        assert stamps == good, f"{topic}: stamps {stamps} != the good images' {good}"
        for (log_time, _), stamp in zip(msgs[topic], stamps, strict=True):
            assert log_time == images[stamp], f"{topic}: log time is not the image's"


@needs_checkpoint
def test_frame_ids_covariances_and_detections(mcap_run: dict[str, Any]) -> None:
    _, msgs = _read_bag(mcap_run["out"])
    for _, d in msgs[f"{NS}/distribution"]:
        assert d.header.frame_id == FRAME and d.object_frame_id == "object"
        assert len(d.covariance) == 36 and all(math.isfinite(v) for v in d.covariance)
        assert len(d.samples) == 20, "-p num_samples:=20 must reach the estimator"
    for _, p in msgs[f"{NS}/pose"]:
        assert p.header.frame_id == FRAME
        assert len(p.pose.covariance) == 36 and all(math.isfinite(v) for v in p.pose.covariance)
    for _, tf in msgs["/tf"]:
        assert [(t.header.frame_id, t.child_frame_id) for t in tf.transforms] == [(FRAME, "object")]
    for _, a in msgs[f"{NS}/detections"]:
        assert len(a.detections) == 1
        assert a.detections[0].results[0].hypothesis.class_id == "widget", "-p class_id:=widget not applied"
    for _, m in msgs[f"{NS}/markers"]:
        assert {marker.ns for marker in m.markers} == {"object"}


@needs_checkpoint
def test_bad_frame_skipped_counted_and_reported(mcap_run: dict[str, Any]) -> None:
    result = mcap_run["result"]
    line = _summary_line(result.stdout, "images:")
    assert line == "images: 6 read, 5 processed, 1 skipped (bad image (encoding): 1)", line
    assert "yuv422" in result.stderr, "the skipped frame must be reported with its reason"
    assert "Traceback" not in result.stderr
    outputs = _summary_line(result.stdout, "outputs:")
    assert f"{NS}/distribution 5" in outputs and "/tf 5" in outputs, outputs


@needs_checkpoint
def test_truth_error_matches_the_published_modes(mcap_run: dict[str, Any]) -> None:
    from pose_distribution_ros.bag import rotation_error

    _, msgs = _read_bag(mcap_run["out"])
    truth = {_ns(m.header.stamp): m.pose.orientation for _, m in msgs[TRUTH_TOPIC]}
    errors = []
    for _, d in msgs[f"{NS}/distribution"]:
        o, t = d.mode.orientation, truth[_ns(d.header.stamp)]
        errors.append(math.degrees(rotation_error((o.x, o.y, o.z, o.w), (t.x, t.y, t.z, t.w))))
    line = _summary_line(mcap_run["result"].stdout, "truth")
    expected = (f"truth {TRUTH_TOPIC}: 5 frames matched by stamp, median rotation error {np.median(errors):.1f} deg, "
                f"Acc@15 {100 * np.mean(np.array(errors) <= 15):.1f} % (geodesic)")  # fmt: skip
    assert line == expected


def test_rotation_error_with_symmetry() -> None:
    import torch

    from pose_core import so3
    from pose_core.data.shapes import symmetry_rotations
    from pose_distribution_ros.bag import rotation_error

    R = so3.random_rotations(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[0]
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # 90 deg about z
    q_true = so3.matrix_to_quat(R).tolist()
    q_turned = so3.matrix_to_quat(R @ quarter).tolist()
    assert math.degrees(rotation_error(q_turned, q_true)) == pytest.approx(90.0, abs=1e-6)
    about_z, about_x = symmetry_rotations("cyclic:4"), symmetry_rotations("cyclic:4:x")
    assert math.degrees(rotation_error(q_turned, q_true, about_z)) == pytest.approx(0.0, abs=1e-6)
    assert math.degrees(rotation_error(q_turned, q_true, about_x)) == pytest.approx(90.0, abs=1e-6)


def test_typestore_hashes_equal_rosidl(tmp_path: Path) -> None:
    """The RIHS01 hashes written to the bag are those ROS 2's rosidl generated for the installed messages
    (``share/<pkg>/msg/<Type>.json``), so that ``ros2 bag play`` and Foxglove match the types."""
    import json

    from pose_distribution_ros import bag

    store = bag.typestore()
    checked = 0
    for msgtype in {*OUTPUT_TYPES.values(), "vision_msgs/msg/Detection2DArray", "sensor_msgs/msg/Image"}:
        package, _, name = msgtype.split("/")
        msg_dir = bag._installed_msg_dir(package)
        description = None if msg_dir is None else msg_dir / f"{name}.json"
        if description is None or not description.is_file():
            continue
        hashes = json.loads(description.read_text())["type_hashes"]
        want = next(h["hash_string"] for h in hashes if h["type_name"] == msgtype)
        assert store.hash_rihs01(msgtype) == want, msgtype
        checked += 1
    if checked == 0:
        pytest.skip("no rosidl type descriptions (share/<pkg>/msg/*.json) installed")


# --------------------------------------------------------------------------- SQLite3, detections and depth


@pytest.fixture(scope="module")
def sqlite_run(renders: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Frames A (detections logged before it), B (after the next image), C (no detections), D (empty array);
    an aligned 16UC1 depth of 2 m logged 10 ms after each image."""
    root = tmp_path_factory.mktemp("sqlite")
    size = 2 * SMALL
    image = np.zeros((SMALL, size, 3), np.uint8)
    image[:, :SMALL] = renders["small"][0]
    image[:, SMALL:] = renders["small"][1]
    K = np.array([[168.0, 0.0, (size - 1) / 2], [0.0, 168.0, (SMALL - 1) / 2], [0.0, 0.0, 1.0]])
    depth = np.full((SMALL, size), 2000, np.uint16)
    two = [("a", "thing", 0.9, (47.5, 47.5), 80.0), ("", "other", 0.5, (143.5, 47.5), 80.0)]
    stamps = {name: T0 + i * PERIOD for i, name in enumerate("ABCD")}
    msgs = []
    for stamp in stamps.values():
        log = stamp + 5_000_000
        msgs.append((IMAGE_TOPIC, "sensor_msgs/msg/Image", log, _image(image, stamp)))
        msgs.append((INFO_TOPIC, "sensor_msgs/msg/CameraInfo", log + 1, _camera_info(size, SMALL, K, stamp)))
        msgs.append((DEPTH_TOPIC, "sensor_msgs/msg/Image", log + 10_000_000, _image(depth, stamp, "16UC1")))
    dets = "vision_msgs/msg/Detection2DArray"
    msgs.append((DETECTIONS_TOPIC, dets, stamps["A"] - 1_000_000, _detections(stamps["A"], two)))
    msgs.append((DETECTIONS_TOPIC, dets, stamps["C"] + 50_000_000, _detections(stamps["B"], two[:1])))
    msgs.append((DETECTIONS_TOPIC, dets, stamps["D"] + 1_000_000, _detections(stamps["D"], [])))
    msgs.sort(key=lambda m: m[2])
    bag_path = root / "in_bag"
    _write_bag(bag_path, "sqlite3", msgs)
    out = root / "out_bag"
    result = _run(bag_path, out, "--depth-topic", DEPTH_TOPIC, "-p", "num_samples:=10")
    return {"out": out, "result": result, "stamps": stamps}


@needs_checkpoint
def test_sqlite_run_pairs_detections_by_stamp(sqlite_run: dict[str, Any]) -> None:
    result = sqlite_run["result"]
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert list(sqlite_run["out"].glob("*.db3")), "the output of an SQLite3 bag must be SQLite3 by default"
    assert f"detections {DETECTIONS_TOPIC}" in result.stdout, "the only Detection2DArray topic must be auto-detected"
    line = _summary_line(result.stdout, "images:")
    assert line == "images: 4 read, 3 processed, 1 skipped (no detections of its stamp: 1)", line

    _, msgs = _read_bag(sqlite_run["out"])
    s = sqlite_run["stamps"]
    arrays = {_ns(m.header.stamp): m for _, m in msgs[f"{NS}/detections"]}
    assert sorted(arrays) == [s["A"], s["B"], s["D"]]
    assert [_ns(m.header.stamp) for _, m in msgs[f"{NS}/distribution"]] == [s["A"], s["B"]]
    assert [len(m.distributions) for _, m in msgs[f"{NS}/distributions"]] == [2, 1, 0]

    a = arrays[s["A"]].detections
    assert [d.results[0].hypothesis.class_id for d in a] == ["thing", "other"], "classes follow their boxes"
    assert a[0].id == "a"
    assert [d.id for d in arrays[s["B"]].detections] == ["a"]
    assert arrays[s["D"]].detections == []
    for _, m in msgs[f"{NS}/distributions"]:
        for d in m.distributions:
            assert len(d.covariance) == 36 and all(math.isfinite(v) for v in d.covariance)
            assert d.header.frame_id == FRAME


@needs_checkpoint
def test_sqlite_markers_tf_and_depth(sqlite_run: dict[str, Any]) -> None:
    _, msgs = _read_bag(sqlite_run["out"])
    s = sqlite_run["stamps"]
    markers = {_ns(m.markers[0].header.stamp): m.markers for _, m in msgs[f"{NS}/markers"] if m.markers}
    drawn = {marker.ns for marker in markers[s["A"]] if marker.action == marker.ADD}
    assert drawn == {"object_a", "object_1"}
    deleted_at_b = {marker.ns for marker in markers[s["B"]] if marker.action == marker.DELETE}
    assert deleted_at_b == {"object_1"}, "the object that disappeared must have its markers deleted"
    tf = {_ns(m.transforms[0].header.stamp): sorted(t.child_frame_id for t in m.transforms) for _, m in msgs["/tf"]}
    assert tf == {s["A"]: ["object_1", "object_a"], s["B"]: ["object_a"]}
    for _, d in msgs[f"{NS}/distribution"]:
        assert d.mode.position.z == pytest.approx(2.0, abs=0.05), "translation must come from the depth image"


# --------------------------------------------------------------------------- interrupted


@needs_checkpoint
def test_interrupt_closes_the_output(renders: dict[str, Any], tmp_path: Path) -> None:
    """SIGINT part way: exit status 130, the output (SQLite3 from MCAP, --no-inputs, replacing an old bag with
    --overwrite) closed and readable."""
    frames = 400
    image = renders["small"][0][::2, ::2].copy()  # 48 px
    msgs = [(IMAGE_TOPIC, "sensor_msgs/msg/Image", T0 + i * PERIOD, _image(image, T0 + i * PERIOD))
            for i in range(frames)]  # fmt: skip
    bag_path, out = tmp_path / "long.mcap", tmp_path / "out_bag"
    _write_bag(tmp_path / "long", "mcap", msgs)
    (tmp_path / "long" / "long.mcap").rename(bag_path)  # a bare .mcap file is an input too
    out.mkdir()
    (out / "metadata.yaml").write_text("old")
    (out / "out_bag_0.db3").write_text("old")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pose_distribution_ros.bag", str(bag_path), str(out), "--storage", "sqlite3",
         "--no-inputs", "-p", "num_samples:=5", "--overwrite"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        stderr = ""
        while "writing " not in stderr:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"exited early (rc {proc.poll()}):\n{stderr}"
            stderr += line
            assert time.monotonic() < deadline, stderr
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"rc {proc.returncode}\n{stdout}\n{stderr}{rest}"
    assert "Traceback" not in rest
    assert stdout.startswith("interrupted:"), stdout
    assert not (out / "out_bag_0.db3").exists(), "--overwrite must replace the old bag"
    connections, msgs = _read_bag(out)
    assert IMAGE_TOPIC not in connections, "--no-inputs must not copy the inputs"
    done = len(msgs.get(f"{NS}/distributions", []))
    assert 0 < done < frames, f"{done} frames written before the interrupt"
    line = _summary_line(stdout, "images:")
    assert line.startswith("images: ") and f"{done} processed" in line, line


# --------------------------------------------------------------------------- user errors


def _assert_user_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and words in lines[-1], result.stderr


def test_missing_bag(tmp_path: Path) -> None:
    result = _run(tmp_path / "nope", tmp_path / "out", timeout=120)
    _assert_user_error(result, "does not exist")
    assert not (tmp_path / "out").exists()


def test_existing_output_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run(tmp_path / "nope", out, timeout=120)
    _assert_user_error(result, "exists")
    assert "--overwrite" in result.stderr
    result = _run(tmp_path / "nope", out, "--overwrite", timeout=120)
    _assert_user_error(result, "does not look like a rosbag2 directory")
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_bags_and_topics(renders: dict[str, Any], tmp_path: Path) -> None:
    """Corrupt bag, no image topic, unknown topic, wrong type: exit 1, one line, no output left behind."""
    corrupt = tmp_path / "corrupt.mcap"
    corrupt.write_bytes(b"\x89MCAP0\r\n" + os.urandom(200))
    _assert_user_error(_run(corrupt, tmp_path / "o1", timeout=120), "cannot read input bag")

    only_info = tmp_path / "only_info"
    _write_bag(only_info, "mcap", [(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", T0,
                                    _camera_info(SMALL, SMALL, renders["small_K"], T0))])  # fmt: skip
    _assert_user_error(_run(only_info, tmp_path / "o2", timeout=120), "no sensor_msgs/msg/Image topic")

    small = tmp_path / "small"
    _write_bag(small, "sqlite3", [(IMAGE_TOPIC, "sensor_msgs/msg/Image", T0, _image(renders["small"][0], T0)),
                                  (INFO_TOPIC, "sensor_msgs/msg/CameraInfo", T0, _camera_info(
                                      SMALL, SMALL, renders["small_K"], T0))])  # fmt: skip
    _assert_user_error(_run(small, tmp_path / "o3", "--image-topic", "/nope", timeout=120), "no such topic")
    _assert_user_error(_run(small, tmp_path / "o4", "--depth-topic", INFO_TOPIC, timeout=120), "not sensor_msgs")
    _assert_user_error(_run(small, tmp_path / "o5", "-p", "num_samples:=many", timeout=120), "num_samples")
    _assert_user_error(_run(small, tmp_path / "o6", "-p", "no_such:=1", timeout=120), "unknown parameter")
    _assert_user_error(_run(small, tmp_path / "o7", "--params-file", tmp_path / "no.yaml", timeout=120),
                       "params file")  # fmt: skip
    for i in range(1, 8):
        assert not (tmp_path / f"o{i}").exists()
