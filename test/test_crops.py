"""pose_core.crops: the viewing-ray rotation correction of off-centre crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import crops, pinhole, so3

K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])


def _project(K: np.ndarray, p: np.ndarray) -> np.ndarray:
    uvw = p @ K.T
    return uvw[..., :2] / uvw[..., 2:]


def test_ray_rotation_maps_optical_axis_onto_ray() -> None:
    rng = np.random.default_rng(1)
    rays = rng.normal(size=(100, 3))
    rays[:, 2] = np.abs(rays[:, 2]) + 0.05
    R = crops.ray_rotation(rays)
    unit = torch.as_tensor(rays / np.linalg.norm(rays, axis=1, keepdims=True))
    torch.testing.assert_close(R @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), unit, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12, rtol=0
    )
    # Smallest rotation: no roll, axis perpendicular to z, angle = angle between e_z and the ray.
    omega = so3.matrix_to_rotvec(R)
    assert omega[:, 2].abs().max() < 1e-12
    torch.testing.assert_close(omega.norm(dim=-1), torch.arccos(unit[:, 2]), atol=1e-9, rtol=0)
    torch.testing.assert_close(crops.ray_rotation([0.0, 0.0, 2.0]), torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="in front"):
        crops.ray_rotation([0.0, 0.0, -1.0])


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
    R_ray = crops.ray_rotation(pinhole.pixel_ray(K, *c))
    R_crop = R_ray.T @ R
    torch.testing.assert_close(crops.correct_crop_rotation(R_crop, K, c), R, atol=1e-12, rtol=0)
    # Geometric check: object point x at t = 3 * ray; in the virtual camera at (0, 0, 3).
    x = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    t = torch.as_tensor(3.0 * pinhole.pixel_ray(K, *c))
    p_cam = R @ x + t  # (5, 3)
    p_virtual = R_crop @ x + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)  # (5, 3)
    torch.testing.assert_close(p_virtual @ R_ray.T, p_cam, atol=1e-12, rtol=0)
    assert _project(K, t.numpy()) == pytest.approx(np.array(c))


def test_covariance_correction_matches_sampled_perturbations() -> None:
    R_ray = crops.ray_rotation([0.4, -0.3, 1.0])
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
    torch.testing.assert_close(crops.correct_covariance(cov_virtual, R_ray), emp, atol=1e-6, rtol=1e-3)


def test_crop_rotation_correction_of_an_off_centre_detection() -> None:
    """An object right of the optical axis: the crop's virtual camera turns to look at it, so the
    rotation the model sees (R_crop = R_ray^T R) composes back to the camera-frame R."""
    center = (520.0, 240.0)  # 200 px right of cx
    R_ray = crops.ray_rotation(pinhole.pixel_ray(K, *center))
    angle = so3.geodesic_distance(torch.eye(3, dtype=torch.float64), R_ray).item()
    assert math.degrees(angle) == pytest.approx(math.degrees(math.atan(200 / 500)), abs=1e-9)
    R = so3.random_rotations(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    R_crop = R_ray.T @ R
    torch.testing.assert_close(crops.correct_crop_rotation(R_crop, K, center), R)
