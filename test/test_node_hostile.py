"""Hostile input over real rclpy between processes: nothing poisons the stream, every rejection is logged.

The node runs as a child process (a small untrained checkpoint: what is tested is the plumbing,
not the poses); ``test/hostile_prober.py`` children publish one scenario each and report what came
back. Memory and latency bounds are generous limits (the tight figures are in the benchmark).
Also here: the README's node command exactly as written, in an environment without ROS variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import node_domain, require_ros, stop_process  # noqa: E402
from test_node import START_TIMEOUT_S, RunningNode, _start_node  # noqa: E402

require_ros("rclpy", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "vision_msgs.msg")

REPO = Path(__file__).resolve().parent.parent
PROBER = Path(__file__).resolve().parent / "hostile_prober.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with node_domain(tmp_path_factory.mktemp("ros_log")) as e:
        yield e


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from pose_core.model import ImageToSphere, save_checkpoint

    torch.manual_seed(0)
    model = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4)
    model.input_size = 64
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "small.pt")


def _node(env: dict[str, str], log: Path, checkpoint: Path, *params: str) -> RunningNode:
    proc, ns = _start_node(env, log, f"checkpoint:={checkpoint}", "device:=cpu", "num_samples:=10",
                           "mode_resolution_deg:=7.5", "log_throttle_s:=0.0", *params)
    node = RunningNode(proc, ns, log)
    node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
    return node


@pytest.fixture(scope="module")
def plain(env, checkpoint, tmp_path_factory) -> Iterator[RunningNode]:
    node = _node(env, tmp_path_factory.mktemp("plain") / "node.log", checkpoint)
    yield node
    assert stop_process(node.proc, timeout_s=15.0) == 0, node.text()[-3000:]


@pytest.fixture(scope="module")
def boxes(env, checkpoint, tmp_path_factory) -> Iterator[RunningNode]:
    node = _node(env, tmp_path_factory.mktemp("boxes") / "node.log", checkpoint, "use_detections:=true")
    yield node
    assert stop_process(node.proc, timeout_s=15.0) == 0, node.text()[-3000:]


def probe(node: RunningNode, env: dict[str, str], scenario: str, timeout_s: float = 120.0, **opts: Any) -> dict:
    proc = subprocess.run([sys.executable, str(PROBER), node.ns, scenario, "--json", json.dumps(opts)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.parametrize("bad", ["nan", "inf", "zero_fy", "zero_size"])
def test_a_bad_camera_info_never_stops_the_frames(plain: RunningNode, env, bad: str) -> None:
    start = len(plain.text())
    out = probe(plain, env, "after_camera_info", bad=bad, count=4)
    assert out["answered"] == 4, out  # every frame after it is answered
    assert out["last_x"] is not None and out["last_x"] > 0.1, out  # with the last good K's ray
    text = plain.text()[start:]
    assert "camera_info rejected" in text and "keeping the last good one" in text, text[-2000:]
    assert plain.proc.poll() is None


def test_enormous_boxes_neither_stall_nor_lose_the_frame(boxes: RunningNode, env) -> None:
    rss0 = _rss_mb(boxes.proc.pid)
    start = len(boxes.text())
    huge = [[48, 48, 10_000, 10_000, f"huge{i}"] for i in range(6)]  # with the two below: max_detections (8)
    out = probe(boxes, env, "boxes", boxes=[*huge, [1e9, 48, 1e9, 1e9, "giant"], [48, 48, 60, 60, "ok"]])
    assert out["ids"] == ["object_ok"], out  # the valid box is served, the others rejected
    assert out["next_good_s"] is not None and out["next_good_s"] < 2.0, out  # the next frame is not delayed
    assert _rss_mb(boxes.proc.pid) - rss0 < 300, (rss0, _rss_mb(boxes.proc.pid))
    text = boxes.text()[start:]
    assert "max_crop_factor" in text and "bad detection" in text, text[-2000:]


def test_nan_and_outside_boxes_are_logged_and_the_rest_served(boxes: RunningNode, env) -> None:
    start = len(boxes.text())
    out = probe(boxes, env, "boxes", boxes=[[float("nan"), 10, 20, 20, "nan"], [-500, -500, 10, 10, "out"],
                                            [48, 48, 0, 30, "flat"], [40, 50, 50, 50, "ok"]])
    assert out["ids"] == ["object_ok"], out
    text = boxes.text()[start:]
    for word in ("finite", "outside", "> 0"):
        assert word in text, (word, text[-2000:])


@pytest.mark.parametrize(("fill", "shape", "words"), [
    (float("inf"), [96, 96], "all infinite"),
    (-2.0, [96, 96], "all negative"),
    (float("nan"), [96, 96], "all NaN"),
    (2.0, [48, 64], "does not match"),
])
def test_unusable_depth_is_logged_and_frames_answered(plain: RunningNode, env, fill, shape, words) -> None:
    start = len(plain.text())
    out = probe(plain, env, "depth", fill=fill, shape=shape)
    assert out["answered"] == 3, out
    plain.wait_for_log(words, timeout_s=10.0, start=start)


def test_checkpoint_that_is_a_directory_says_so(env, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "-p",
                           f"checkpoint:={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "is a directory" in proc.stdout + proc.stderr


def test_code_executing_checkpoint_is_refused(env, tmp_path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps(Evil()))
    proc = subprocess.run([sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "-p",
                           f"checkpoint:={bad}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 1 and "cannot load checkpoint" in proc.stdout + proc.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1280, 720)])
def test_camera_sizes_at_30_hz_are_answered_or_counted(plain: RunningNode, env, width, height) -> None:
    """Robot camera sizes over the default set-up (the shipped Fast DDS profile): every frame is
    either answered or counted as dropped by the node itself (the newest frame wins); none are
    lost in transport without a word."""
    out = probe(plain, env, "stream", width=width, height=height, rate=30, count=90, timeout_s=180)
    assert out["answered"] > 0, out
    assert out["received_fraction"] >= 0.95, out  # the stamps the node saw: nothing lost in transport


def test_readme_node_command_in_a_fresh_shell(env, tmp_path) -> None:
    """`.venv/bin/pose_distribution_node --ros-args --params-file config/pose_distribution.yaml` from the
    repository root with no ROS variables (no AMENT_PREFIX_PATH...): it starts and answers an image."""
    clean = {k: v for k, v in env.items()
             if not k.startswith(("AMENT_", "COLCON_", "CMAKE_PREFIX", "ROS_DISTRO", "ROS_VERSION", "ROS_PYTHON"))
             and k != "PYTHONPATH"}
    exe = Path(sys.executable).parent / "pose_distribution_node"
    assert exe.is_file(), f"{exe}: the set-up installs it"
    log = tmp_path / "node.log"
    ns = "/readme"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(exe), "--ros-args", "--params-file", "config/pose_distribution.yaml",
                                 "-r", f"__ns:={ns}"], cwd=REPO, env=clean, stdout=f, stderr=subprocess.STDOUT)
    node = RunningNode(proc, ns, log)
    try:
        node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        out = probe(node, env, "depth", fill=float("nan"), shape=[96, 96])
        assert out["answered"] >= 1, (out, node.text()[-3000:])
    finally:
        assert stop_process(proc, timeout_s=15.0) == 0, node.text()[-3000:]


def test_node_still_serves_after_everything(plain: RunningNode, env) -> None:
    t = time.monotonic()
    out = probe(plain, env, "depth", fill=1.5, shape=[96, 96])
    assert out["answered"] == 3 and time.monotonic() - t < 60
    assert plain.proc.poll() is None
