"""pose_core.camera: pinhole back-projection, translation estimates, crop rotation correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import camera, so3
from pose_core.distribution import SO3Distribution

K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])


def _project(K: np.ndarray, p: np.ndarray) -> np.ndarray:
    uvw = p @ K.T
    return uvw[..., :2] / uvw[..., 2:]


def test_intrinsics_checks() -> None:
    assert camera.intrinsics_matrix(K.ravel().tolist()).shape == (3, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 3\) or \(9,\), got \(2, 2\)"):
        camera.intrinsics_matrix(np.eye(2))
    with pytest.raises(ValueError, match="positive focal"):
        camera.intrinsics_matrix(np.zeros((3, 3)))


def test_backproject_inverts_projection() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform([-1, -1, 0.5], [1, 1, 5], size=(50, 3))
    uv = _project(K, p)
    q = camera.backproject(K, uv[:, 0], uv[:, 1], p[:, 2])
    np.testing.assert_allclose(q, p, atol=1e-12)
    ray = camera.pixel_ray(K, uv[:, 0], uv[:, 1])
    np.testing.assert_allclose(ray, p / np.linalg.norm(p, axis=1, keepdims=True), atol=1e-12)


def test_backproject_principal_point_and_invalid_depth() -> None:
    np.testing.assert_allclose(camera.backproject(K, 320.0, 240.0, 2.0), [0.0, 0.0, 2.0])
    for bad in (0.0, float("nan"), float("inf"), -1.0):
        assert np.isnan(camera.backproject(K, 10.0, 10.0, bad)).all()


def test_median_depth_ignores_invalid() -> None:
    depth = np.full((40, 60), 2.0, dtype=np.float32)
    depth[:, :10] = np.nan
    depth[:5] = 0.0
    depth[10:12, 20:22] = 9.0  # outliers: the median ignores them
    assert camera.median_depth(depth) == pytest.approx(2.0)
    assert camera.median_depth(depth, region=(0, 0, 10, 40)) is None  # only NaN there
    assert camera.median_depth(np.zeros((4, 4))) is None
    with pytest.raises(ValueError, match="non-empty image"):
        camera.median_depth(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="outside"):
        camera.median_depth(depth, region=(100, 100, 120, 120))


def test_translation_from_depth() -> None:
    h, w = 480, 640
    depth = np.full((h, w), np.nan, dtype=np.float32)
    region = (400, 300, 440, 340)  # centre pixel (419.5, 319.5)
    depth[300:340, 400:440] = 3.0
    depth[300:302, 400:440] = 0.0  # holes are ignored
    est = camera.translation_from_depth(K, depth, region)
    assert est is not None and est.source == "depth"
    expected = camera.backproject(K, 419.5, 319.5, 3.0)
    np.testing.assert_allclose(est.translation, expected, atol=1e-12)
    assert est.translation[2] == pytest.approx(3.0)
    np.testing.assert_allclose(est.covariance, est.covariance.T)
    assert np.linalg.eigvalsh(est.covariance).min() > 0
    depth[:] = np.nan
    assert camera.translation_from_depth(K, depth, region) is None


def test_translation_from_nominal_is_vague_along_the_ray() -> None:
    d = 4.0
    est = camera.translation_from_nominal(d, K, (420.0, 100.0))
    ray = camera.pixel_ray(K, 420.0, 100.0)
    np.testing.assert_allclose(est.translation, d * ray, atol=1e-12)
    assert np.linalg.norm(est.translation) == pytest.approx(d)
    assert est.source == "nominal"
    along = ray @ est.covariance @ ray
    perp = np.cross(ray, [1.0, 0.0, 0.0])
    perp /= np.linalg.norm(perp)
    across = perp @ est.covariance @ perp
    assert along == pytest.approx(d**2)  # std = the distance itself: the range is a guess
    assert along > 50 * across
    np.testing.assert_allclose(est.covariance, est.covariance.T)
    assert np.linalg.eigvalsh(est.covariance).min() > 0
    axis = camera.translation_from_nominal(d)  # no camera_info: the optical axis, vague everywhere
    np.testing.assert_allclose(axis.translation, [0.0, 0.0, d])
    np.testing.assert_allclose(axis.covariance, d**2 * np.eye(3))
    with pytest.raises(ValueError, match="distance"):
        camera.translation_from_nominal(0.0)
    with pytest.raises(ValueError, match="both K and center"):
        camera.translation_from_nominal(1.0, K)


def test_ray_rotation_maps_optical_axis_onto_ray() -> None:
    rng = np.random.default_rng(1)
    rays = rng.normal(size=(100, 3))
    rays[:, 2] = np.abs(rays[:, 2]) + 0.05
    R = camera.ray_rotation(rays)
    unit = torch.as_tensor(rays / np.linalg.norm(rays, axis=1, keepdims=True))
    torch.testing.assert_close(R @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), unit, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12, rtol=0
    )
    # Smallest rotation: no roll, axis perpendicular to z, angle = angle between e_z and the ray.
    omega = so3.matrix_to_rotvec(R)
    assert omega[:, 2].abs().max() < 1e-12
    torch.testing.assert_close(omega.norm(dim=-1), torch.arccos(unit[:, 2]), atol=1e-9, rtol=0)
    torch.testing.assert_close(camera.ray_rotation([0.0, 0.0, 2.0]), torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="in front"):
        camera.ray_rotation([0.0, 0.0, -1.0])


def test_crop_correction_agrees_with_projection() -> None:
    """An object seen off-centre: R_crop predicted in the virtual camera, R_ray @ R_crop in the camera.

    Place the object on the ray through pixel c at distance 3 with pose R. In the virtual camera
    (optical axis = that ray) it sits on the optical axis with pose R_ray^T R, which is what a
    crop-trained model predicts; the correction must give back R, and points of the object
    project to the same pixels either way.
    """
    gen = torch.Generator().manual_seed(0)
    R = so3.random_rotations(5, generator=gen, dtype=torch.float64)
    c = (500.0, 80.0)
    R_ray = camera.ray_rotation(camera.pixel_ray(K, *c))
    R_crop = R_ray.T @ R
    torch.testing.assert_close(camera.correct_crop_rotation(R_crop, K, c), R, atol=1e-12, rtol=0)
    # Geometric check: object point x at t = 3 * ray; in the virtual camera at (0, 0, 3).
    x = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    t = torch.as_tensor(3.0 * camera.pixel_ray(K, *c))
    p_cam = R @ x + t  # (5, 3)
    p_virtual = R_crop @ x + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)  # (5, 3)
    torch.testing.assert_close(p_virtual @ R_ray.T, p_cam, atol=1e-12, rtol=0)
    assert _project(K, t.numpy()) == pytest.approx(np.array(c))


def test_covariance_correction_matches_sampled_perturbations() -> None:
    R_ray = camera.ray_rotation([0.4, -0.3, 1.0])
    gen = torch.Generator().manual_seed(2)
    omega = torch.randn(20000, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [0.05, 0.02, 0.01], dtype=torch.float64
    )
    R0 = so3.random_rotations(1, generator=gen, dtype=torch.float64)[0]
    samples_virtual = so3.rotvec_to_matrix(omega) @ R0
    samples_cam = R_ray @ samples_virtual
    omega_cam = so3.matrix_to_rotvec(samples_cam @ (R_ray @ R0).T)
    emp = omega_cam.T @ omega_cam / len(omega_cam)
    cov_virtual = omega.T @ omega / len(omega)
    torch.testing.assert_close(camera.correct_covariance(cov_virtual, R_ray), emp, atol=1e-6, rtol=1e-3)


def _peaked_distribution(R_true: torch.Tensor) -> SO3Distribution:
    from pose_core import grids

    level = 2
    cells = grids.so3_healpix_grid(level, dtype=torch.float64)
    logits = -(so3.geodesic_distance(cells, R_true) ** 2) / (2 * 0.15**2)
    return SO3Distribution.from_grid_logits(logits[None].float(), level)


def test_pose_estimate_packs_and_corrects() -> None:
    gen = torch.Generator().manual_seed(3)
    R_true = so3.random_rotations(1, generator=gen, dtype=torch.float64)[0]
    dist = _peaked_distribution(R_true)
    t = camera.translation_from_nominal(2.0, K, (100.0, 50.0))
    plain = camera.pose_estimate(dist, t, num_samples=64, generator=torch.Generator().manual_seed(0))
    assert plain.rotation.shape == (3, 3) and plain.samples.shape == (64, 3, 3)
    assert plain.sample_weights.sum() == pytest.approx(1.0)
    assert math.degrees(float(so3.geodesic_distance(torch.as_tensor(plain.rotation), R_true))) < 15
    np.testing.assert_allclose(plain.covariance, plain.covariance.T, atol=1e-12)
    assert np.linalg.eigvalsh(plain.covariance).min() > 0
    np.testing.assert_allclose(plain.covariance[:3, :3], t.covariance)
    assert np.all(plain.covariance[:3, 3:] == 0)
    assert plain.modes.shape[0] >= 1 and plain.mode_mass[0] > 0.5
    assert plain.translation_source == "nominal"

    R_ray = camera.ray_rotation(camera.pixel_ray(K, 100.0, 50.0))
    fixed = camera.pose_estimate(dist, t, num_samples=64, generator=torch.Generator().manual_seed(0), correction=R_ray)
    Rn = R_ray.numpy()
    np.testing.assert_allclose(fixed.rotation, Rn @ plain.rotation, atol=1e-6)
    np.testing.assert_allclose(fixed.samples, Rn @ plain.samples, atol=1e-6)
    np.testing.assert_allclose(fixed.covariance[3:, 3:], Rn @ plain.covariance[3:, 3:] @ Rn.T, atol=1e-9)
    assert fixed.entropy == pytest.approx(plain.entropy)
    assert fixed.max_log_density == pytest.approx(plain.max_log_density)


def test_model_input_square_crop_and_resize() -> None:
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:, 10:50] = 255  # exactly the centred 40x40 square
    x, region = camera.model_input(img, 16)
    assert region == (10, 0, 50, 40)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones_like(x))
    y, _ = camera.model_input(img, 0)
    assert y.shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        camera.model_input(np.zeros((0, 4, 3), np.uint8), 16)


@pytest.mark.parametrize(
    ("center", "box", "scale"),
    [((30.0, 20.0), (10.0, 6.0), 1.0), ((12.5, 7.25), (9.0, 13.0), 1.5), ((0.0, 0.0), (1, 1), 3)],
)
def test_detection_region_is_a_square_centred_on_the_box(center, box, scale) -> None:
    u0, v0, u1, v1 = camera.detection_region(center, box, scale)
    assert all(isinstance(x, int) for x in (u0, v0, u1, v1))
    assert u1 - u0 == v1 - v0 == max(1, round(scale * max(box)))
    cu, cv = camera.region_center((u0, v0, u1, v1), 100, 100)
    assert abs(cu - center[0]) <= 0.5 and abs(cv - center[1]) <= 0.5


def test_detection_region_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="size and scale must be > 0"):
        camera.detection_region((5, 5), (0, 4))
    with pytest.raises(ValueError, match="finite"):
        camera.detection_region((math.nan, 5), (3, 4))
    with pytest.raises(ValueError, match="size and scale must be > 0"):
        camera.detection_region((5, 5), (3, 4), scale=-1)


def test_crop_input_pads_outside_the_image_with_black() -> None:
    img = np.full((20, 30, 3), 200, dtype=np.uint8)
    img[:, :, 1] = np.arange(30, dtype=np.uint8)[None, :]  # green = column index
    x = camera.crop_input(img, (-5, 2, 5, 12), 0)  # half outside on the left
    assert x.shape == (1, 3, 10, 10)
    torch.testing.assert_close(x[0, :, :, :5], torch.zeros(3, 10, 5))
    torch.testing.assert_close(x[0, 1, :, 5:], torch.arange(5.0).div(255).expand(10, 5))
    inside = camera.crop_input(img, (3, 4, 13, 14), 0)
    torch.testing.assert_close(inside[0, 1, 0], torch.arange(3.0, 13.0).div(255))
    assert camera.crop_input(img, (-5, 2, 5, 12), 8).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="outside the 30x20 image"):
        camera.crop_input(img, (40, 0, 50, 10), 8)
    with pytest.raises(ValueError, match="u1 > u0"):
        camera.crop_input(img, (5, 0, 5, 10), 8)


def test_crop_rotation_correction_of_an_off_centre_detection() -> None:
    """An object right of the optical axis: the crop's virtual camera turns to look at it, so the
    rotation the model sees (R_crop = R_ray^T R) composes back to the camera-frame R."""
    center = (520.0, 240.0)  # 200 px right of cx
    R_ray = camera.ray_rotation(camera.pixel_ray(K, *center))
    angle = so3.geodesic_distance(torch.eye(3, dtype=torch.float64), R_ray).item()
    assert math.degrees(angle) == pytest.approx(math.degrees(math.atan(200 / 500)), abs=1e-9)
    R = so3.random_rotations(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    R_crop = R_ray.T @ R
    torch.testing.assert_close(camera.correct_crop_rotation(R_crop, K, center), R)
