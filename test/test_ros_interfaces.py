"""The ROS 2 interfaces (msg/*.msg and the locally built tf2_msgs) work across processes.

Needs rclpy and the generated packages ``pose_distribution.msg`` and ``tf2_msgs.msg``: on a
bare machine run ``scripts/setup_ros.sh .venv`` first. Without them the module is skipped,
unless POSE_DISTRIBUTION_REQUIRE_ROS=1 (set it in CI), which turns the skip into a failure.

Publisher and subscriber run in separate processes (test/ros_helpers.py), on a random
ROS_DOMAIN_ID per test run with discovery limited to this host.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import (  # noqa: E402
    assert_message_dicts_close,
    collect_messages,
    dict_to_message,
    get_message_type,
    message_to_dict,
    random_domain_id,
    require_ros,
    ros_domain,
    start_publisher,
)

require_ros("rclpy", "pose_distribution.msg", "tf2_msgs.msg")

TIMEOUT_S = 30.0
POSE_DISTRIBUTION = "pose_distribution/msg/PoseDistribution"
POSE_DISTRIBUTION_ARRAY = "pose_distribution/msg/PoseDistributionArray"
ROTATION_MODE = "pose_distribution/msg/RotationMode"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    """One random ROS_DOMAIN_ID for the whole test run."""
    return random_domain_id()


@pytest.fixture
def ros_env(ros_domain_id: int, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for ROS child processes: this run's domain, localhost, logs in tmp_path."""
    with ros_domain(ros_domain_id, log_dir=tmp_path / "ros_log") as env:
        yield env


@pytest.fixture
def topic_prefix() -> str:
    """A topic namespace of its own, so even a domain-id collision cannot mix tests."""
    return f"/test_{uuid.uuid4().hex[:12]}"


def _quaternion(angle: float, axis: tuple[float, float, float]) -> dict[str, float]:
    """Unit quaternion (x, y, z, w) for a rotation of ``angle`` rad about unit ``axis``."""
    s = math.sin(angle / 2)
    return {"x": axis[0] * s, "y": axis[1] * s, "z": axis[2] * s, "w": math.cos(angle / 2)}


def _full_pose_distribution(n_samples: int = 1000, frame: str = "camera_optical") -> dict[str, Any]:
    """A PoseDistribution with every field set to a distinct, non-default value.

    Two modes 180 deg apart about z (a symmetric object); ``n_samples`` weighted samples.
    """
    samples = [_quaternion(0.001 * i, (0.0, 0.6, 0.8)) for i in range(n_samples)]
    raw = [1.0 + (i % 7) for i in range(n_samples)]
    weights = [w / sum(raw) for w in raw]
    return {
        "header": {"stamp": {"sec": 1_700_000_123, "nanosec": 456_789_012}, "frame_id": frame},
        "object_frame_id": "mug_1",
        "mode": {
            "position": {"x": 0.125, "y": -0.25, "z": 1.5},
            "orientation": _quaternion(0.3, (0.0, 0.0, 1.0)),
        },
        "covariance": [0.001 * (i + 1) * (-1) ** i for i in range(36)],
        "samples": samples,
        "sample_weights": weights,
        "entropy": -1.75,
        "mode_resolution": 0.0625,
        "max_log_density": 4.5,
        "modes": [
            {"orientation": _quaternion(0.3, (0.0, 0.0, 1.0)), "probability_mass": 0.55,
             "log_density": 4.5},
            {"orientation": _quaternion(0.3 + math.pi, (0.0, 0.0, 1.0)),
             "probability_mass": 0.4, "log_density": 4.25},
        ],
    }


def _transform(parent: str, child: str, x: float, angle: float) -> dict[str, Any]:
    return {
        "header": {"stamp": {"sec": 42, "nanosec": 7}, "frame_id": parent},
        "child_frame_id": child,
        "transform": {
            "translation": {"x": x, "y": 2.0, "z": -3.0},
            "rotation": _quaternion(angle, (1.0, 0.0, 0.0)),
        },
    }


def _expected(msg_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` completed with defaults, as the receiver reports it."""
    return message_to_dict(dict_to_message(get_message_type(msg_type), data))


def test_pose_distribution_fields() -> None:
    from pose_distribution.msg import PoseDistribution, PoseDistributionArray, RotationMode

    assert PoseDistribution.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "object_frame_id": "string",
        "mode": "geometry_msgs/Pose",
        "covariance": "double[36]",
        "samples": "sequence<geometry_msgs/Quaternion>",
        "sample_weights": "sequence<float>",
        "entropy": "float",
        "mode_resolution": "float",
        "max_log_density": "float",
        "modes": "sequence<pose_distribution/RotationMode>",
        "sample_positions": "sequence<geometry_msgs/Point>",
    }
    assert RotationMode.get_fields_and_field_types() == {
        "orientation": "geometry_msgs/Quaternion",
        "probability_mass": "float",
        "log_density": "float",
    }
    assert PoseDistributionArray.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "distributions": "sequence<pose_distribution/PoseDistribution>",
    }


def test_serialization_round_trip_in_process() -> None:
    """The C type support loads and (de)serializes every field (no DDS involved)."""
    from pose_distribution.msg import PoseDistribution
    from rclpy.serialization import deserialize_message, serialize_message

    data = _full_pose_distribution(n_samples=50)
    msg = dict_to_message(PoseDistribution, data)
    back = deserialize_message(serialize_message(msg), PoseDistribution)
    assert_message_dicts_close(message_to_dict(back), _expected(POSE_DISTRIBUTION, data))


def test_pose_distribution_between_processes(ros_env: dict[str, str], topic_prefix: str) -> None:
    data = _full_pose_distribution()
    topic = f"{topic_prefix}/pose_distribution"
    with start_publisher(POSE_DISTRIBUTION, topic, data, ros_env):
        (received,) = collect_messages(POSE_DISTRIBUTION, topic, ros_env, timeout_s=TIMEOUT_S)
    assert_message_dicts_close(received, _expected(POSE_DISTRIBUTION, data))
    assert math.isclose(sum(received["sample_weights"]), 1.0, rel_tol=1e-4)
    assert len(received["modes"]) == 2


def test_pose_distribution_array_between_processes(
    ros_env: dict[str, str], topic_prefix: str
) -> None:
    header = {"stamp": {"sec": 5, "nanosec": 6}, "frame_id": "camera_optical"}
    empty = {"header": header, "object_frame_id": "box_2"}  # defaults elsewhere, no samples
    data = {"header": header, "distributions": [_full_pose_distribution(20), empty]}
    topic = f"{topic_prefix}/pose_distributions"
    with start_publisher(POSE_DISTRIBUTION_ARRAY, topic, data, ros_env):
        (received,) = collect_messages(
            POSE_DISTRIBUTION_ARRAY, topic, ros_env, timeout_s=TIMEOUT_S)
    assert_message_dicts_close(received, _expected(POSE_DISTRIBUTION_ARRAY, data))
    assert received["distributions"][1]["samples"] == []


@pytest.mark.parametrize(
    "durability", ["volatile", "transient_local"], ids=["tf", "tf_static"])
def test_tf_message_between_processes(
    ros_env: dict[str, str], topic_prefix: str, durability: str
) -> None:
    """tf2_msgs/TFMessage built by setup_ros.sh, with /tf and /tf_static QoS."""
    data = {"transforms": [_transform("camera_optical", "mug_1", 1.0, 0.5),
                           _transform("base_link", "camera_optical", -0.5, -1.25)]}
    topic = f"{topic_prefix}/tf"
    depth = 1 if durability == "transient_local" else 10
    with start_publisher(TF_MESSAGE, topic, data, ros_env, durability=durability, depth=depth):
        (received,) = collect_messages(
            TF_MESSAGE, topic, ros_env, timeout_s=TIMEOUT_S, durability=durability, depth=depth)
    assert_message_dicts_close(received, _expected(TF_MESSAGE, data))


# Type hashes of upstream tf2_msgs as reported by real ROS 2 Jazzy systems (`ros2 topic info
# --verbose /tf`, rosbag2 metadata). Only an identical hash lets DDS match our /tf publisher
# with real ROS 2 subscribers, so the locally generated tf2_msgs must reproduce them.
UPSTREAM_TF2_MSGS_HASHES = {
    "TFMessage": "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087",
    "TF2Error": "RIHS01_db2485e7d6a0ec75bf087e058ee45df682acc3a621ca7780503d10aac141809a",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_TF2_MSGS_HASHES))
def test_tf2_msgs_type_hash_matches_upstream(name: str) -> None:
    import json

    import tf2_msgs

    # <prefix>/lib/pythonX.Y/site-packages/tf2_msgs -> <prefix>/share/tf2_msgs/msg/<name>.json
    prefix = Path(tf2_msgs.__file__).resolve().parents[4]
    description = prefix / "share" / "tf2_msgs" / "msg" / f"{name}.json"
    if not description.exists():
        pytest.skip(f"no type description at {description}")
    hashes = {h["type_name"]: h["hash_string"]
              for h in json.loads(description.read_text())["type_hashes"]}
    assert hashes[f"tf2_msgs/msg/{name}"] == UPSTREAM_TF2_MSGS_HASHES[name]
