"""An object's shape in metres in its own frame: depth points into the object frame, the size fitted to them,
prediction and measurement fused; the estimator's per-object shapes (pose_core.shape_fusion, pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose_core.data.procedural import make_procedural_shape
from pose_core.data.reconstruction import unit_diagonal, view_rotation
from pose_core.data.sphere_projection import render_depth
from pose_core.shape_fusion import ShapeEstimator, fit_scale, fuse, observed_points_object
from pose_core.surface import sample_surface

K = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])


def _scene(size_m: float = 0.3, name: str = "mug"):
    shape = make_procedural_shape(name, 2)
    unit = unit_diagonal(shape.vertices)
    R = view_rotation(0.7, 0.4)
    t = np.array([0.05, -0.02, 1.2])
    depth = render_depth(size_m * unit, shape.faces, K, R, t, 640, 480)
    points = sample_surface(torch.from_numpy(unit), torch.from_numpy(np.array(shape.faces)), 3000,
                            generator=torch.Generator().manual_seed(0)).numpy()
    return unit, shape.faces, points, R, t, depth


def test_observed_points_lie_on_the_object_in_its_frame():
    unit, faces, points, R, t, depth = _scene(0.3)
    obs = observed_points_object(depth, K, (0, 0, 640, 480), R, t)
    assert len(obs) > 500
    from scipy.spatial import cKDTree

    d = cKDTree(0.3 * points).query(obs)[0]
    assert np.median(d) < 0.004  # on the surface (point spacing ~ a few mm)
    # negative control: the pose off by 5 cm puts the points off the surface
    wrong = observed_points_object(depth, K, (0, 0, 640, 480), R, t + [0.05, 0, 0])
    assert np.median(cKDTree(0.3 * points).query(wrong)[0]) > 2.5 * np.median(d) + 0.005
    # invalid depth (NaN, 0) is skipped; background beyond max_radius_m is dropped
    depth2 = depth.copy()
    depth2[:, :320] = np.nan
    depth2[0, 639] = 5.0  # a far background pixel
    half = observed_points_object(depth2, K, (0, 0, 640, 480), R, t, max_radius_m=0.3)
    assert 0 < len(half) < len(obs) and np.isfinite(half).all() and np.linalg.norm(half, axis=1).max() <= 0.3


@pytest.mark.parametrize("size_m", [0.12, 0.3, 0.6])
def test_fit_scale_recovers_the_size_from_visible_depth(size_m):
    unit, faces, points, R, t, depth = _scene(size_m)
    obs = observed_points_object(depth, K, (0, 0, 640, 480), R, t)
    est = fit_scale(points, obs, initial_m=0.2)
    assert est == pytest.approx(size_m, rel=0.03)


def test_fit_scale_is_wrong_for_the_wrong_shape_and_refuses_too_few_points():
    unit, faces, points, R, t, depth = _scene(0.3, "mug")
    obs = observed_points_object(depth, K, (0, 0, 640, 480), R, t)
    other = make_procedural_shape("table", 5)  # negative control: another shape does not explain the points
    q = sample_surface(torch.from_numpy(unit_diagonal(other.vertices)), torch.from_numpy(np.array(other.faces)),
                       3000, generator=torch.Generator().manual_seed(0)).numpy()
    from scipy.spatial import cKDTree

    good = np.median(cKDTree(fit_scale(points, obs, 0.2) * points).query(obs)[0])
    bad = np.median(cKDTree(fit_scale(q, obs, 0.2) * q).query(obs)[0])
    assert bad > 3 * good
    with pytest.raises(ValueError, match="at least"):
        fit_scale(points, obs[:5], 0.2)
    with pytest.raises(ValueError, match="initial_m"):
        fit_scale(points, obs, 0.0)


def test_fuse_keeps_the_measurement_where_seen_and_the_prediction_elsewhere():
    pred = np.array([[0.0, 0, 0], [0.001, 0, 0], [1.0, 0, 0], [1.0, 1.0, 0]])
    obs = np.array([[0.0005, 0, 0], [0.0, 0.5, 0]])
    out = fuse(pred, obs, voxel_m=0.01)
    rows = {tuple(np.round(r, 4)) for r in out}
    assert (0.0005, 0, 0) in rows and (0.0, 0.5, 0) in rows  # measured points kept
    assert (0.0, 0, 0) not in rows and (0.001, 0, 0) not in rows  # predictions next to a measurement replaced
    assert (1.0, 0, 0) in rows and (1.0, 1.0, 0) in rows  # the unseen part predicted
    thinned = fuse(np.zeros((50, 3)) + [2.0, 2.0, 2.0], np.zeros((0, 3)), voxel_m=0.01)
    assert len(thinned) == 1
    with pytest.raises(ValueError):
        fuse(pred, obs, voxel_m=0)
    with pytest.raises(ValueError, match="finite"):
        fuse(pred * np.nan, obs, voxel_m=0.01)


def _object(region, R, t):
    from pose_core.pipeline import ObjectEstimate
    from pose_core.so3 import matrix_to_quat

    q = matrix_to_quat(torch.from_numpy(R)).numpy()
    z = np.zeros((0, 4))
    return ObjectEstimate(index=0, box=None, region=region, orientation=q, translation=t, translation_source="depth",
                          covariance=np.eye(6), samples=z, sample_weights=np.zeros(0), entropy=0.0,
                          max_log_density=0.0, mode_resolution=0.03, modes=z, mode_mass=np.zeros(0),
                          mode_log_density=np.zeros(0))


def test_shape_estimator_sizes_by_depth_and_by_the_nominal_size():
    """A reconstructor that answers the true unit shape: with depth, the size comes out of the visible points
    (the nominal size is off by 2x) and the cloud is fused; without depth, the nominal size is used."""
    from pose_core.models.reconstruction import ReconstructionConfig, ShapeReconstructor

    unit, faces, points, R, t, depth = _scene(0.3)
    model = ShapeReconstructor(ReconstructionConfig(decoder="points", encoder="resnet18", pretrained=False,
                                                    image_size=32, n_points=100, embedding=8, hidden=8)).eval()
    truth = torch.from_numpy(points).float()
    model.reconstruct = lambda images, n_points=None: truth[None].expand(images.shape[0], -1, -1)
    est = ShapeEstimator(model, size_m=0.6)
    rgb = np.zeros((480, 640, 3), np.uint8)
    obj = _object((0, 0, 640, 480), R, t)
    (with_depth,) = est.estimate(rgb, K, depth, [obj])
    assert with_depth.source == "depth" and with_depth.size_m == pytest.approx(0.3, rel=0.03)
    assert with_depth.points.dtype == np.float32 and with_depth.observed > 500
    (nominal,) = est.estimate(rgb, K, None, [obj])
    assert nominal.source == "nominal" and nominal.size_m == 0.6
    assert np.allclose(nominal.points, 0.6 * points, atol=1e-6)
    with pytest.raises(ValueError, match="reconstruction model"):
        ShapeEstimator(torch.nn.Linear(1, 1))


def test_pose_estimator_attaches_shapes_to_every_object():
    from pose_core.model import load_model
    from pose_core.models.reconstruction import ReconstructionConfig, ShapeReconstructor
    from pose_core.pipeline import Box, PoseEstimator

    pose = load_model("checkpoints/demo.pt")
    model = ShapeReconstructor(ReconstructionConfig(decoder="points", encoder="resnet18", pretrained=False,
                                                    image_size=32, n_points=50, embedding=8, hidden=8)).eval()
    est = PoseEstimator(pose, shaper=ShapeEstimator(model, size_m=0.25))
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    frame = est.estimate(rgb, K, None, [Box((200, 200), (200, 200), id="a"), Box((425, 210), (150, 180), id="b")])
    assert len(frame.objects) == 2 and all(o.shape is not None and o.shape.points.shape == (50, 3)
                                           for o in frame.objects)
    assert "shape" in frame.timings_ms
    assert PoseEstimator(pose).estimate(rgb, K).objects[0].shape is None  # off by default
