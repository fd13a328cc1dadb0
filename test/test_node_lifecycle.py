"""The managed (lifecycle) node over real rclpy between processes: nothing is served before
``activate`` or after ``deactivate``; ``configure`` loads the model, and a failed ``configure``
(missing checkpoint) leaves the node unconfigured and running. See ``test_node.py`` for the set-up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import collect_messages, lifecycle, require_ros, start_publisher, stop_process  # noqa: E402
from test_node import (  # noqa: E402
    IMAGE,
    POSE_DISTRIBUTION,
    SIZE,
    RunningNode,
    _image,
    _start_node,
    _wait_for_output,
    env,  # noqa: F401 - fixture
    small_checkpoint,  # noqa: F401 - fixture
)

require_ros("rclpy", "lifecycle_msgs.srv", "pose_distribution.msg", "vision_msgs.msg", "visualization_msgs.msg")

#: How long a topic must stay silent to count as "nothing published" (s).
SILENCE_S = 4.0


@pytest.fixture(scope="module")
def managed(env: dict[str, str], small_checkpoint: Path, tmp_path_factory) -> Iterator[RunningNode]:  # noqa: F811
    log = tmp_path_factory.mktemp("lifecycle") / "node.log"
    proc, ns = _start_node(env, log, f"checkpoint:={small_checkpoint}", f"image_size:={SIZE}", "device:=cpu",
                           "mode_resolution_deg:=7.5", "num_samples:=10", lifecycle=True)  # fmt: skip
    running = RunningNode(proc, ns, log)
    try:
        running.wait_for_log("waiting for the configure transition", timeout_s=60.0)
        yield running
    finally:
        rc = stop_process(proc, timeout_s=15.0)
        assert rc == 0, f"lifecycle node did not shut down cleanly on SIGINT (rc {rc}):\n{running.text()[-4000:]}"


def _silent(node: RunningNode, env: dict[str, str]) -> bool:  # noqa: F811
    try:
        collect_messages(POSE_DISTRIBUTION, node.output("distribution"), env, count=1, timeout_s=SILENCE_S)
    except TimeoutError:
        return True
    return False


def test_transitions_gate_the_outputs(managed: RunningNode, env: dict[str, str]) -> None:  # noqa: F811
    name = f"{managed.ns}/pose_distribution"
    assert lifecycle(name, None, env)["state"] == "unconfigured"
    assert "warm-up frame" not in managed.text()  # the model is loaded by configure, not before
    with start_publisher(IMAGE, managed.topic("image"), _image(700), env):
        assert _silent(managed, env), "published while unconfigured"
        assert lifecycle(name, "configure", env) == {"success": True, "state": "inactive"}
        assert "warm-up frame" in managed.text()
        assert _silent(managed, env), "published while inactive"
        assert lifecycle(name, "activate", env) == {"success": True, "state": "active"}
        _wait_for_output(managed, env, 700)
        assert lifecycle(name, "deactivate", env) == {"success": True, "state": "inactive"}
        assert _silent(managed, env), "published after deactivate"
        assert lifecycle(name, "activate", env) == {"success": True, "state": "active"}  # and again
        _wait_for_output(managed, env, 700)
    assert lifecycle(name, "deactivate", env)["state"] == "inactive"
    assert lifecycle(name, "cleanup", env) == {"success": True, "state": "unconfigured"}
    assert managed.proc.poll() is None


def test_failed_configure_keeps_the_node_unconfigured(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    missing = tmp_path / "no_such.pt"
    proc, ns = _start_node(env, tmp_path / "node.log", f"checkpoint:={missing}", lifecycle=True)
    node = RunningNode(proc, ns, tmp_path / "node.log")
    try:
        node.wait_for_log("waiting for the configure transition", timeout_s=60.0)
        result = lifecycle(f"{ns}/pose_distribution", "configure", env)
        assert result == {"success": False, "state": "unconfigured"}, result
        text = node.wait_for_log("configure failed", timeout_s=10.0)
        assert "not found" in text and str(missing) in text
        assert proc.poll() is None
    finally:
        assert stop_process(proc, timeout_s=15.0) == 0, node.text()[-3000:]
