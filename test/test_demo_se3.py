"""The SE(3) demo (``python -m pose_distribution_ros.demo --se3``): simulated scene -> node on its
detection boxes -> listener scoring rotation and translation, through real processes.

The checkpoint is a tiny *untrained* SpyroPose (the SMALL config of ``test_spyropose.py``) saved with
the training config of ``config/train/spyropose_tiny.yaml`` (the SYMSOL cube at the default scene's
0.15 m), so its estimates are arbitrary: the end-to-end test checks the plumbing (results arrive,
each matched to a truth by stamp, with translation errors and the ellipsoid check in the summary),
and the pure parts (trajectory, detector box, the checkpoint's object, the summary) are checked
against what they promise, with negative controls. The rotation-only demo is tested in
``test_node.py`` (unchanged by ``--se3``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import require_ros  # noqa: E402

require_ros("rclpy", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "vision_msgs.msg",
            "visualization_msgs.msg")  # fmt: skip

from test_node import REPO, env  # noqa: E402,F401 - env: fixture

DURATION_S = 4.0


@pytest.fixture(scope="module")
def tiny_se3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained SpyroPose checkpoint that knows its training data (the cube, 0.15 m)."""
    from test_spyropose import _model

    from pose_core.model import save_checkpoint
    from train.config import config_to_dict, load_config

    cfg = load_config(REPO / "config" / "train" / "spyropose_tiny.yaml")
    return save_checkpoint(_model(seed=0), tmp_path_factory.mktemp("se3_demo") / "tiny_se3.pt",
                           meta={"train_config": config_to_dict(cfg)})  # fmt: skip


# --------------------------------------------------------------------------- pure parts


def test_trajectory_moves_in_3d_and_stays_in_view() -> None:
    from pose_core.data.scenes import SceneConfig, scaled_mesh, tight_box
    from pose_core.data.shapes import get_shape
    from pose_distribution_ros.sim_scene import DEPTH_RANGE_M, scene_camera, scene_pose_at

    scene = SceneConfig()
    K = scene_camera(scene)
    assert K[0, 0] == K[1, 1] == 600.0 and (K[0, 2], K[1, 2]) == (319.5, 239.5)
    vertices = np.unique(scaled_mesh(get_shape("cube").mesh, scene.diameter_m / 2).positions.astype(np.float64), axis=0)
    poses = [scene_pose_at(t, K, scene.width, scene.height, scene.diameter_m / 2) for t in np.arange(0.0, 60.0, 0.1)]
    t = np.stack([p[1] for p in poses])
    assert t[:, 2].min() == pytest.approx(DEPTH_RANGE_M[0], abs=0.01) and t[:, 2].max() == pytest.approx(
        DEPTH_RANGE_M[1], abs=0.01)
    boxes = np.stack([tight_box(vertices, R, tt, K) for R, tt in poses])
    lo, hi = boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2
    assert (lo >= 0).all() and (hi[:, 0] <= scene.width).all() and (hi[:, 1] <= scene.height).all()  # in view
    assert np.ptp(boxes[:, 0]) > 300 and np.ptp(boxes[:, 1]) > 200  # and across it
    steps = np.linalg.norm(np.diff(t, axis=0), axis=1)
    assert steps.max() < 0.05  # smooth: < 5 cm per 0.1 s
    for R, _ in poses[:: 50]:
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    from pose_core.trajectory import rotation_at

    np.testing.assert_allclose(poses[37][0], rotation_at(3.7), atol=1e-12)  # the rotation demo's rotation
    with pytest.raises(ValueError, match="depth"):
        scene_pose_at(0.0, K, 640, 480, 0.075, depth=(0.0, 1.0))


def test_detector_box_has_the_training_scenes_error() -> None:
    from pose_core.data.scenes import SceneConfig, detector_box

    scene = SceneConfig()
    true_box = np.array([320.0, 240.0, 80.0, 60.0])
    boxes = np.stack([detector_box(true_box, scene, np.random.default_rng([0, i])) for i in range(2000)])
    rel = (boxes[:, :2] - true_box[:2]) / true_box[2:]
    log_sides = np.log(boxes[:, 2:] / true_box[2:])
    assert np.abs(rel.std(0) - scene.box_center_std).max() < 0.006 and np.abs(rel).max() <= 3 * scene.box_center_std
    assert np.abs(log_sides.std(0) - scene.box_size_log_std).max() < 0.008
    assert np.abs(log_sides).max() <= 3 * scene.box_size_log_std + 1e-12
    np.testing.assert_array_equal(detector_box(true_box, scene, np.random.default_rng([0, 7])), boxes[7])  # seeded
    # Negative control: without the error the box is the tight one; at the edge it is clipped to the image.
    exact = SceneConfig(box_center_std=0.0, box_size_log_std=0.0)
    np.testing.assert_allclose(detector_box(true_box, exact, np.random.default_rng(0)), true_box)
    edge = detector_box(np.array([10.0, 240.0, 40.0, 40.0]), exact, np.random.default_rng(0))
    np.testing.assert_allclose(edge, [(-0.5 + 30.0) / 2, 240.0, 30.5, 40.0])


def test_checkpoint_object_from_training_config(tiny_se3: Path, tmp_path: Path) -> None:
    from test_spyropose import _model

    from pose_core.model import save_checkpoint
    from pose_distribution_ros.sim_scene import checkpoint_object

    obj = checkpoint_object(tiny_se3)
    assert obj.name == "cube" and obj.source == "training config" and obj.radius_m == pytest.approx(0.075)
    assert obj.scene.width == 640 and obj.scene.height == 480 and obj.scene.randomization is None
    assert np.linalg.norm(obj.vertices, axis=1).max() == pytest.approx(0.075, rel=1e-5)  # scaled to 15 cm
    assert len(obj.shape.symmetries) == 24
    bare = save_checkpoint(_model(seed=0), tmp_path / "bare.pt")  # no training config: the fallback shape
    obj = checkpoint_object(bare, fallback_shape="tet")
    assert obj.name == "tet" and "no training config" in obj.source and obj.radius_m == pytest.approx(0.075)


def test_summary_with_translation() -> None:
    from pose_distribution_ros.demo import summarize

    s = summarize([1.0, 20.0, 3.0, 14.0], [0.1, 0.2, 0.3, 0.4], 1.5, 0, [0.01, 0.03, 0.02, 0.5],
                  [1.0, 1.0, 0.5, 1.0], [True, False, True, True])  # fmt: skip
    assert s["median_translation_error_mm"] == pytest.approx(25.0)
    assert s["median_translation_error_pct"] == pytest.approx(3.5)  # of 1, 3, 4, 50 %
    assert s["inside95"] == pytest.approx(0.75) and s["acc15"] == pytest.approx(0.75)
    rotation_only = summarize([1.0, 20.0], [0.1, 0.2], 1.0)
    assert not any("translation" in k or "inside" in k for k in rotation_only)  # the rotation demo's summary
    assert math.isnan(summarize([], [], 0.0, 0, [], [], [])["inside95"])
    with pytest.raises(ValueError, match="one entry per frame"):
        summarize([1.0], [0.1], 1.0, 0, [0.01], [], [True])


# --------------------------------------------------------------------------- the demo, real processes


def _demo(env: dict[str, str], *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:  # noqa: F811
    return subprocess.run([sys.executable, "-m", "pose_distribution_ros.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_se3_demo_scores_translation(env: dict[str, str], tiny_se3: Path, tmp_path: Path) -> None:  # noqa: F811
    summary, plot = tmp_path / "summary.json", tmp_path / "plot.png"
    proc = _demo(env, "--se3", "--checkpoint", str(tiny_se3), "--duration", str(DURATION_S), "--device", "cpu",
                 "--summary-json", str(summary), "--plot", str(plot))  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    s = json.loads(summary.read_text())
    assert s["frames"] >= 5 and s["unmatched"] <= 2, s
    assert 0 <= s["median_error_deg"] <= 180 and 0 <= s["inside95"] <= 1, s
    # The untrained mode lies in the translation box around the box's guess (in-plane one object radius,
    # depth x exp(+-0.4)), which follows the moving object: errors are real and bounded.
    assert 0 < s["median_translation_error_mm"] <= s["translation_error_mm_p90"] < 1000, s
    assert 0 < s["median_translation_error_pct"] < 80, s
    assert "demo (SE(3)): cube (0.15 m) at 640x480" in out and "on the boxes of /sim/detections" in out, out[-4000:]
    assert "% of the distance" in out and "95 % ellipsoid" in out and " mm (" in out, out[-4000:]
    assert plot.is_file()


def test_se3_demo_refuses_other_checkpoints(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    missing = tmp_path / "se3.pt"
    proc = _demo(env, "--se3", "--checkpoint", str(missing), "--duration", "1", timeout=60)
    assert proc.returncode == 2 and str(missing) in proc.stderr
    assert "config/train/spyropose_duck_cpu.yaml" in proc.stderr, proc.stderr
    import torch

    from pose_core.model import ImageToSphere, save_checkpoint

    torch.manual_seed(0)
    rotation = save_checkpoint(ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4),
                               tmp_path / "rotation.pt")  # fmt: skip
    proc = _demo(env, "--se3", "--checkpoint", str(rotation), "--duration", "1", timeout=90)
    assert proc.returncode == 2 and "not an SE(3) checkpoint" in proc.stderr, proc.stderr
