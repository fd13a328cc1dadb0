"""The node's ``refine`` option (render-and-compare refinement, :mod:`pose_core.refine`), with real rclpy
in separate processes: 640x480 camera images in, refined distributions and the refinement's latency in
``/diagnostics`` out; a missing neural mesh stops the start-up with its name, and turning ``refine`` on at
run time without one is refused with the reason while the node keeps serving.

Small untrained checkpoints (written to a temporary directory): this checks the plumbing, not accuracy
(that is ``bench/refine.py``'s).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import collect_messages, node_domain, require_ros, run_python, start_publisher  # noqa: E402
from test_node import PARAMS, REPO, START_TIMEOUT_S, RunningNode, _start_node  # noqa: E402

require_ros("rclpy", "pose_distribution.msg", "sensor_msgs.msg", "diagnostic_msgs.msg", "rcl_interfaces.srv")

W, H = 640, 480
IMAGE = "sensor_msgs/msg/Image"
POSE_DISTRIBUTION = "pose_distribution/msg/PoseDistribution"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from pose_core.model import ImageToSphere, save_checkpoint
    from pose_core.refine import NeuralMesh

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    i2s = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4)
    g = torch.Generator().manual_seed(1)
    vertices = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=1) * 0.8
    mesh = NeuralMesh({"num_vertices": 64, "input_size": 64, "clutter": 4, "feature_dim": 16, "decoder_dim": 16},
                      {"name": "blob"}, vertices)
    return {"model": save_checkpoint(i2s, d / "small.pt"), "refiner": save_checkpoint(mesh, d / "mesh.pt")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with node_domain(tmp_path_factory.mktemp("ros_log")) as e:
        yield e


def _image(sec: int) -> dict[str, Any]:
    pixels = np.random.default_rng(sec).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    return {"header": {"stamp": {"sec": sec, "nanosec": 0}, "frame_id": "cam"}, "height": H, "width": W,
            "encoding": "rgb8", "is_bigendian": 0, "step": W * 3, "data": pixels.ravel().tolist()}


def _node(env: dict[str, str], tmp_path: Path, checkpoints: dict[str, Path], *params: str) -> RunningNode:
    log = tmp_path / "node.log"
    proc, ns = _start_node(env, log, f"checkpoint:={checkpoints['model']}", "image_size:=64", "device:=cpu",
                           "num_samples:=20", "mode_resolution_deg:=7.5", "temporal_filter:=false", *params)
    node = RunningNode(proc, ns, log)
    node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
    return node


def _stop(node: RunningNode) -> None:
    from ros_helpers import stop_process

    rc = stop_process(node.proc, timeout_s=15.0)
    assert rc == 0, f"node did not shut down cleanly (rc {rc}):\n{node.text()[-3000:]}"


def _diagnostics(node: RunningNode, env: dict[str, str], key: str, timeout_s: float = 40.0) -> dict[str, str]:
    """The first /diagnostics status of ``node`` whose ``key`` holds a number."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in collect_messages("diagnostic_msgs/msg/DiagnosticArray", "/diagnostics", env, count=2, timeout_s=10.0):
            for st in m["status"]:
                values = {kv["key"]: kv["value"] for kv in st["values"]}
                if "pose_distribution" in st["name"] and math.isfinite(float(values.get(key, "nan"))):
                    return values
    raise AssertionError(f"no /diagnostics with a number in {key!r} within {timeout_s} s; log:\n{node.text()[-3000:]}")


def _set_parameter(env: dict[str, str], node_name: str, name: str, value: bool) -> dict[str, Any]:
    """``ros2 param set`` from a child process: ``{"successful": bool, "reason": str}``."""
    script = textwrap.dedent(f"""
        import json, rclpy
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        rclpy.init()
        node = rclpy.create_node("test_param_setter")
        client = node.create_client(SetParameters, "{node_name}/set_parameters")
        assert client.wait_for_service(timeout_sec=30.0), "no set_parameters service"
        req = SetParameters.Request()
        req.parameters = [Parameter(name="{name}", value=ParameterValue(type=ParameterType.PARAMETER_BOOL,
                                                                         bool_value={value!r}))]
        future = client.call_async(req)
        rclpy.spin_until_future_complete(node, future, timeout_sec=60.0)
        r = future.result().results[0]
        print(json.dumps({{"successful": bool(r.successful), "reason": r.reason}}), flush=True)
        rclpy.try_shutdown()
    """)
    proc = run_python(["-c", script], env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_refined_distributions_and_latency_at_640x480(env, checkpoints, tmp_path) -> None:
    node = _node(env, tmp_path, checkpoints, "refine:=true", f"refine_checkpoint:={checkpoints['refiner']}",
                 "refine_modes:=3", "refine_steps:=2")
    try:
        assert "loaded refiner" in node.text()
        with start_publisher(IMAGE, node.topic("image"), _image(7), env, rate_hz=5.0,
                             reliability="best_effort"):
            msgs = collect_messages(POSE_DISTRIBUTION, node.output("distribution"), env, count=2, timeout_s=90.0)
            values = _diagnostics(node, env, "refine_ms_p50")
        m = msgs[-1]
        assert len(m["modes"]) == 3  # the refined hypotheses, by posterior weight
        w = np.asarray(m["sample_weights"])
        assert len(w) == 20 and abs(w.sum() - 1) < 1e-4 and np.all(w >= 0)
        q = m["mode"]["orientation"]
        assert abs(math.sqrt(sum(q[k] ** 2 for k in "xyzw")) - 1) < 1e-6
        assert float(values["refine_ms_p50"]) > 0 and float(values["refine_ms_p90"]) >= float(values["refine_ms_p50"])
    finally:
        _stop(node)


def test_refine_on_at_run_time_without_a_mesh_is_refused(env, checkpoints, tmp_path) -> None:
    missing = tmp_path / "no_mesh.pt"
    node = _node(env, tmp_path, checkpoints, f"refine_checkpoint:={missing}")
    try:
        result = _set_parameter(env, f"{node.ns}/pose_distribution", "refine", True)
        assert not result["successful"] and "not found" in result["reason"] and str(missing) in result["reason"]
        with start_publisher(IMAGE, node.topic("image"), _image(8), env, rate_hz=5.0, reliability="best_effort"):
            (m,) = collect_messages(POSE_DISTRIBUTION, node.output("distribution"), env, count=1, timeout_s=60.0)
        assert m["header"]["stamp"]["sec"] == 8 and len(m["modes"]) >= 1  # still serving, unrefined
        values = _diagnostics(node, env, "latency_ms_p50")
        assert values["refine_ms_p50"] == "nan"
    finally:
        _stop(node)


def test_refine_with_a_missing_mesh_stops_the_start_up(env, checkpoints, tmp_path) -> None:
    missing = tmp_path / "no_mesh.pt"
    command = [sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "--params-file", str(PARAMS),
               "-p", f"checkpoint:={checkpoints['model']}", "-p", "refine:=true", "-p",
               f"refine_checkpoint:={missing}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "not found" in out and str(missing) in out, out


def test_a_checkpoint_that_is_no_pose_model_stops_the_start_up(env, checkpoints) -> None:
    """checkpoint:= a refiner's (or a shape classifier's) checkpoint: the node says what it holds and exits."""
    command = [sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "--params-file", str(PARAMS),
               "-p", f"checkpoint:={checkpoints['refiner']}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "not a pose model" in out and "neural_mesh" in out, out
