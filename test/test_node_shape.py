"""The node's ``reconstruction_checkpoint`` option, with real rclpy in separate processes: 640x480 camera images
at 30 Hz in, each object's reconstructed shape out on ``~/shape`` (``sensor_msgs/PointCloud2`` in the object's
TF frame, the image's stamp, metres at the configured size without depth); a checkpoint of another kind stops
the start-up with what it holds.

A small untrained reconstruction checkpoint: this checks the plumbing; the shapes' quality is
``bench/reconstruction.py``'s and the depth sizing ``test/test_shape_fusion.py``'s.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import collect_messages, node_domain, require_ros, start_publisher  # noqa: E402
from test_node import PARAMS, REPO, START_TIMEOUT_S, RunningNode, _start_node  # noqa: E402
from test_node_refine import _image, _stop  # noqa: E402

require_ros("rclpy", "pose_distribution.msg", "sensor_msgs.msg")

IMAGE = "sensor_msgs/msg/Image"
CLOUD = "sensor_msgs/msg/PointCloud2"
N_POINTS = 120


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from pose_core.model import ImageToSphere, save_checkpoint
    from pose_core.models.reconstruction import ReconstructionConfig, ShapeReconstructor

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    i2s = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4)
    recon = ShapeReconstructor(ReconstructionConfig(decoder="points", encoder="resnet18", pretrained=False,
                                                    image_size=32, n_points=N_POINTS, embedding=16, hidden=16))
    return {"model": save_checkpoint(i2s, d / "small.pt"), "recon": save_checkpoint(recon, d / "recon.pt")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with node_domain(tmp_path_factory.mktemp("ros_log")) as e:
        yield e


def test_shapes_published_in_the_object_frame_at_640x480(env, checkpoints, tmp_path) -> None:
    from pose_core.model import load_model

    log = tmp_path / "node.log"
    proc, ns = _start_node(env, log, f"checkpoint:={checkpoints['model']}", "image_size:=64", "device:=cpu",
                           "num_samples:=20", "mode_resolution_deg:=7.5", "temporal_filter:=false",
                           f"reconstruction_checkpoint:={checkpoints['recon']}", "reconstruction_size_m:=0.5",
                           "object_frame_id:=mug")
    node = RunningNode(proc, ns, log)
    try:
        node.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        assert "loaded shape reconstruction" in node.text()
        with start_publisher(IMAGE, node.topic("image"), _image(11), env, rate_hz=30.0, reliability="best_effort"):
            msgs = collect_messages(CLOUD, node.output("shape"), env, count=2, timeout_s=90.0)
        m = msgs[-1]
        assert m["header"]["frame_id"] == "mug" and m["header"]["stamp"]["sec"] == 11
        assert m["height"] == 1 and m["width"] == N_POINTS and m["point_step"] == 12
        assert m["row_step"] == 12 * N_POINTS and m["is_dense"] and not m["is_bigendian"]
        assert [(f["name"], f["offset"], f["datatype"], f["count"]) for f in m["fields"]] == [
            ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
        points = np.frombuffer(bytes(m["data"]), dtype="<f4").reshape(-1, 3)
        # the model's own answer for that crop, scaled to the configured 0.5 m (no depth): what the node published
        from pose_core.preprocess import model_input

        rgb = np.asarray(_image(11)["data"], dtype=np.uint8).reshape(480, 640, 3)
        x, _ = model_input(rgb, 32)
        want = 0.5 * load_model(checkpoints["recon"]).reconstruct(x)[0].numpy()
        assert np.allclose(points, want, atol=1e-4)
    finally:
        _stop(node)


def test_a_reconstruction_checkpoint_of_another_kind_stops_the_start_up(env, checkpoints) -> None:
    command = [sys.executable, "-m", "pose_distribution_ros.node", "--ros-args", "--params-file", str(PARAMS),
               "-p", f"checkpoint:={checkpoints['model']}", "-p", f"reconstruction_checkpoint:={checkpoints['model']}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "not a shape reconstruction" in out and "image_to_sphere" in out, out
