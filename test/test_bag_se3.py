"""``python -m pose_distribution_ros.bag`` with an SE(3) checkpoint (SpyroPose): joint samples in the output bag.

The bag helpers of ``test_bag.py`` and the checkpoint, camera and translation-box geometry of
``test_node_se3.py`` are reused: a small MCAP of three 640x480 frames (noise; images, camera_info,
Detection2DArray of the same stamps), the command run on it with the tiny untrained SpyroPose,
and the output read back with ``rosbags``:

* every PoseDistribution (``~/distribution`` and each of ``~/distributions``) has one
  ``sample_positions`` entry per sample, spread inside its box's translation box, and so has
  ``~/samples`` (the poses at those positions);
* a frame with two boxes gives two distributions, each in its own box; a zero-size box is skipped
  and reported, the rest of the frame served;
* a reader that knows PoseDistribution only as it was before ``sample_positions`` (its message
  definition without that line) reads the same rotation fields from the new messages' bytes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import require_ros  # noqa: E402

require_ros("rclpy", "rosbags", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "vision_msgs.msg",
            "visualization_msgs.msg")  # fmt: skip

from test_bag import (  # noqa: E402
    DETECTIONS_TOPIC,
    FRAME,
    IMAGE_TOPIC,
    INFO_TOPIC,
    NS,
    PERIOD,
    T0,
    _camera_info,
    _detections,
    _image,
    _ns,
    _read_bag,
    _run,
    _summary_line,
    _write_bag,
)
from test_node_se3 import (  # noqa: E402
    BOX_A,
    BOX_B,
    CX,
    CY,
    FOCAL,
    HEIGHT,
    JUNK,
    WIDTH,
    _in_box,
    se3_checkpoint,  # noqa: F401 - fixture
)

REPO = Path(__file__).resolve().parent.parent
NUM_SAMPLES = 10
DISTRIBUTION = "pose_distribution/msg/PoseDistribution"


def _xyz(points: Any) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in points]).reshape(-1, 3)


@pytest.fixture(scope="module")
def se3_run(se3_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """Frames 0 (box A), 1 (boxes A and B), 2 (a zero-size box first, then A), run with the SE(3) checkpoint."""
    root = tmp_path_factory.mktemp("se3_bag")
    image = np.random.default_rng(7).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    K = np.array([[FOCAL, 0.0, CX], [0.0, FOCAL, CY], [0.0, 0.0, 1.0]])
    a = ("a", "thing", 0.9, *BOX_A)
    b = ("b", "thing", 0.5, *BOX_B)
    junk = ("junk", "thing", 0.99, *JUNK)
    boxes = [[a], [a, b], [junk, a]]
    msgs, stamps = [], []
    for i, frame_boxes in enumerate(boxes):
        stamp = T0 + i * PERIOD
        stamps.append(stamp)
        log = stamp + 5_000_000
        msgs.append((DETECTIONS_TOPIC, "vision_msgs/msg/Detection2DArray", log - 1, _detections(stamp, frame_boxes)))
        msgs.append((IMAGE_TOPIC, "sensor_msgs/msg/Image", log, _image(image, stamp)))
        msgs.append((INFO_TOPIC, "sensor_msgs/msg/CameraInfo", log + 1, _camera_info(WIDTH, HEIGHT, K, stamp)))
    bag_path, out = root / "in_bag", root / "out_bag"
    _write_bag(bag_path, "mcap", msgs)
    result = _run(bag_path, out, "-p", f"checkpoint:={se3_checkpoint}", "-p", "device:=cpu",
                  "-p", f"num_samples:={NUM_SAMPLES}")  # fmt: skip
    return {"out": out, "result": result, "stamps": stamps}


@pytest.fixture(scope="module")
def output(se3_run: dict[str, Any]) -> dict[str, Any]:
    result = se3_run["result"]
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    connections, msgs = _read_bag(se3_run["out"])
    return {"connections": connections, "msgs": msgs}


def test_run_succeeds_and_says_what_the_model_is(se3_run: dict[str, Any], output: dict[str, Any]) -> None:
    result = se3_run["result"]
    assert _summary_line(result.stdout, "images:") == "images: 3 read, 3 processed, 0 skipped", result.stdout
    assert "SpyroPose, SE(3)" in result.stderr and "lmax" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "inference failed" not in result.stderr
    assert "junk" in result.stderr and "positive size" in result.stderr, "the zero-size box must be reported"


def test_distributions_carry_sample_positions_in_their_boxes(se3_run: dict[str, Any], output: dict[str, Any]) -> None:
    msgs = output["msgs"]
    arrays = msgs[f"{NS}/distributions"]
    assert [_ns(m.header.stamp) for _, m in arrays] == se3_run["stamps"]
    assert [[d.object_frame_id for d in m.distributions] for _, m in arrays] == [
        ["object_a"], ["object_a", "object_b"], ["object_a"]]  # fmt: skip
    for _, m in arrays:
        for d in m.distributions:
            box = BOX_B if d.object_frame_id == "object_b" else BOX_A
            assert len(d.samples) == len(d.sample_positions) == len(d.sample_weights) == NUM_SAMPLES
            P = _xyz(d.sample_positions)
            assert _in_box(P, *box, FOCAL) and _in_box(_xyz([d.mode.position]), *box, FOCAL)
            assert np.all(P.std(axis=0) > 1e-4), P
            C = np.asarray(d.covariance).reshape(6, 6)
            assert np.abs(C[:3, 3:]).max() > 0, "no rotation-translation cross terms"
    singles = msgs[f"{NS}/distribution"]
    assert len(singles) == 3
    for (_, d), (_, m) in zip(singles, arrays, strict=True):
        assert d == m.distributions[0]


def test_samples_and_tf_at_the_sampled_positions_and_mode(output: dict[str, Any]) -> None:
    msgs = output["msgs"]
    dists = {_ns(d.header.stamp): d for _, d in msgs[f"{NS}/distribution"]}
    for _, a in msgs[f"{NS}/samples"]:
        d = dists[_ns(a.header.stamp)]
        np.testing.assert_array_equal(_xyz([p.position for p in a.poses]), _xyz(d.sample_positions))
        assert [p.orientation for p in a.poses] == list(d.samples)
    for _, tf in msgs["/tf"]:
        t = tf.transforms[0]
        d = dists[_ns(t.header.stamp)]
        assert t.header.frame_id == FRAME and t.child_frame_id == "object_a"
        tr = t.transform.translation
        np.testing.assert_array_equal([tr.x, tr.y, tr.z], _xyz([d.mode.position])[0])


def test_a_reader_of_the_old_definition_reads_the_rotation_fields(se3_run: dict[str, Any],
                                                                  output: dict[str, Any]) -> None:  # fmt: skip
    """The bytes of a new PoseDistribution, parsed with the definition before ``sample_positions`` (the
    appended field left unread, as a CDR reader of the old type does), give the same rotation fields."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    msg_dir = REPO / "msg"
    old_text = (msg_dir / "PoseDistribution.msg").read_text()
    old_text, removed = re.subn(r"^geometry_msgs/Point\[\] sample_positions\s*$", "", old_text, flags=re.M)
    assert removed == 1
    old = get_typestore(Stores.LATEST)
    types = get_types_from_msg(old_text, DISTRIBUTION)
    types.update(get_types_from_msg((msg_dir / "RotationMode.msg").read_text(), "pose_distribution/msg/RotationMode"))
    old.register(types)
    assert "sample_positions" not in [name for name, _ in old.fielddefs[DISTRIBUTION][1]]
    msgdef = old.get_msgdef(DISTRIBUTION)
    new = {_ns(d.header.stamp): d for _, d in output["msgs"][f"{NS}/distribution"]}
    read = 0
    with Reader(se3_run["out"]) as reader:
        conns = [c for c in reader.connections if c.topic == f"{NS}/distribution"]
        for _, _, raw in reader.messages(connections=conns):
            assert bytes(raw[:2]) == b"\x00\x01"  # little-endian CDR
            m, _ = msgdef.deserialize_cdr_le(bytes(raw)[4:], 0, msgdef.cls, old)
            d = new[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec]
            assert m.object_frame_id == d.object_frame_id
            o, p = m.mode.orientation, d.mode.orientation
            assert (o.x, o.y, o.z, o.w) == (p.x, p.y, p.z, p.w)
            assert list(m.covariance) == list(d.covariance)
            assert [(q.x, q.y, q.z, q.w) for q in m.samples] == [(q.x, q.y, q.z, q.w) for q in d.samples]
            assert list(m.sample_weights) == list(d.sample_weights)
            assert (m.entropy, m.mode_resolution, m.max_log_density) == pytest.approx(
                (d.entropy, d.mode_resolution, d.max_log_density), rel=1e-7)  # fmt: skip
            assert [r.probability_mass for r in m.modes] == pytest.approx([r.probability_mass for r in d.modes])
            read += 1
    assert read == 3
