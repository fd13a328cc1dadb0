"""The node's ROS-free parts: the parameter table, stamp pairing, the gap monitor, camera_info checks."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import require_ros  # noqa: E402

require_ros("rclpy", "sensor_msgs.msg", "pose_distribution.msg")

REPO = Path(__file__).resolve().parent.parent


def _stamp(ns: int) -> SimpleNamespace:
    return SimpleNamespace(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _msg(ns: int) -> SimpleNamespace:
    return SimpleNamespace(header=SimpleNamespace(stamp=_stamp(ns)))


def test_config_file_matches_the_parameter_table() -> None:
    from pose_distribution_ros.parameters import PARAMETERS

    config = yaml.safe_load((REPO / "config" / "pose_distribution.yaml").read_text())["/**"]["ros__parameters"]
    table = {p.name: p.default for p in PARAMETERS}
    assert set(config) == set(table), set(config) ^ set(table)
    for name, value in config.items():
        assert value == table[name] and type(value) is type(table[name]), name


def test_settings_from_parameters() -> None:
    from pose_distribution_ros.parameters import settings_from

    node, est = settings_from({"mode_resolution_deg": 7.5, "num_samples": 5, "max_crop_factor": 2.0})
    assert est.target_level == 3 and est.num_samples == 5 and est.max_crop_factor == 2.0
    assert node.object_frame_id == "object" and node.publish_tf
    with pytest.raises(ValueError, match="object_frame_id"):
        settings_from({"object_frame_id": ""})
    with pytest.raises(ValueError, match="unknown"):
        settings_from({"no_such_parameter": 1})


def test_stamp_pairer_pairs_either_order_and_counts_the_lost() -> None:
    from pose_distribution_ros.pairing import StampPairer

    p = StampPairer(capacity=2)
    assert p.add_image(_msg(10), 1.0) is None
    pair, older = p.add_detections(_msg(10))
    assert pair is not None and pair[1] == 1.0 and not older
    det = _msg(20)
    assert p.add_detections(det) == (None, False)  # its image comes later
    assert p.add_image(_msg(20), 2.0) is det
    p.add_image(_msg(30), 3.0)
    assert p.add_detections(_msg(5)) == (None, True)  # older than every buffered image
    for ns in (40, 50, 60):
        p.add_detections(_msg(ns))
    assert p.unmatched >= 1


def test_depth_buffer_nearest_stamp() -> None:
    from pose_distribution_ros.pairing import DepthBuffer

    b = DepthBuffer(capacity=3)
    assert b.closest(_stamp(0)) == (None, float("inf"))
    for ns in (0, 100_000_000, 200_000_000):
        b.add(_msg(ns))
    depth, skew = b.closest(_stamp(130_000_000))
    assert depth.header.stamp.nanosec == 100_000_000 and skew == pytest.approx(0.03)


def test_gap_monitor_warns_only_when_frames_are_lost() -> None:
    import numpy as np

    from pose_distribution_ros.transport import GapMonitor

    period = 33_333_333
    whole = GapMonitor()
    rng = np.random.default_rng(0)
    for i in range(120):  # every frame, with 10 % timing jitter
        assert whole.add(int(i * period + rng.uniform(-0.1, 0.1) * period), float(i)) is None
    assert whole.summary()["received_fraction"] > 0.85
    lossy = GapMonitor()
    warnings = [lossy.add(i * period, float(i)) for i in range(0, 600) if rng.random() < 0.3]  # 30 % arrive
    text = next(w for w in warnings if w)
    assert "lost in transport" in text and "FASTDDS_DEFAULT_PROFILES_FILE" in text
    assert lossy.summary()["received_fraction"] < 0.5
    paused = GapMonitor()
    for i in range(60):  # a pause (a new recording) is not a loss
        assert paused.add(i * period + (0 if i < 30 else 5_000_000_000), float(i)) is None
    same = GapMonitor()
    for i in range(60):  # a republished message (the same stamp) is ignored
        assert same.add(1_000, float(i)) is None


def test_camera_info_problems_are_named() -> None:
    from sensor_msgs.msg import CameraInfo

    from pose_distribution_ros.node import camera_info_problem

    good = CameraInfo(width=640, height=480, k=[500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0])
    assert camera_info_problem(good) is None
    cases = {
        "non-finite": [float("nan"), 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0],
        "focal lengths": [500.0, 0.0, 319.5, 0.0, 0.0, 239.5, 0.0, 0.0, 1.0],
        "last row": [500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 0.0],
    }
    for word, k in cases.items():
        assert word in camera_info_problem(CameraInfo(width=640, height=480, k=k))
    inf = CameraInfo(width=640, height=480, k=[float("inf"), 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0])
    assert "non-finite" in camera_info_problem(inf)
    assert "size" in camera_info_problem(CameraInfo(width=0, height=480, k=good.k))


def test_resolve_checkpoint_without_any_ros_environment(monkeypatch, tmp_path) -> None:
    """The README's relative path from the repository root with no AMENT_PREFIX_PATH (it raised OSError)."""
    from pose_distribution_ros.node import StartupError, resolve_checkpoint

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.chdir(REPO)
    assert resolve_checkpoint("checkpoints/demo.pt") == REPO / "checkpoints" / "demo.pt"
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("checkpoints/demo.pt") == REPO / "checkpoints" / "demo.pt"  # the repository's
    with pytest.raises(StartupError, match="not found"):
        resolve_checkpoint("no/such.pt")
    (tmp_path / "adir").mkdir()
    with pytest.raises(StartupError, match="is a directory"):
        resolve_checkpoint("adir")
