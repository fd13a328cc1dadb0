"""Marker geometry (pose_core.markers): axes, sample triads, the translation ellipsoid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import markers, so3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_axes_segments_are_the_rotation_columns(dtype: torch.dtype) -> None:
    R = so3.random_rotations(1, generator=torch.Generator().manual_seed(0), dtype=dtype)[0].numpy()
    o = np.array([0.1, -0.2, 1.5])
    seg = markers.axes_segments(R, o, 0.2)
    assert seg.shape == (3, 2, 3)
    np.testing.assert_allclose(seg[:, 0], np.tile(o, (3, 1)))
    np.testing.assert_allclose(seg[:, 1] - o, 0.2 * R.T, atol=1e-6)  # row i: axis i = column i of R
    # negative control: the rows of R are not its axes (unless R is symmetric)
    assert not np.allclose(seg[:, 1] - o, 0.2 * R, atol=1e-3)


def test_sample_axes_opacity_follows_the_weight() -> None:
    q = so3.matrix_to_quat(so3.random_rotations(3, generator=torch.Generator().manual_seed(1))).numpy()
    points, colors = markers.sample_axes(q, np.array([2.0, 1.0, 0.01]), np.zeros(3), 0.05)
    assert points.shape == (18, 3) and colors.shape == (18, 4)
    alpha = colors[:, 3].reshape(3, 6)
    np.testing.assert_allclose(alpha[:, 0], [1.0, 0.5, 0.1])  # the last clipped to min_alpha
    assert (alpha == alpha[:, :1]).all()
    np.testing.assert_allclose(np.linalg.norm(points[1::2], axis=1), 0.05, rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        markers.sample_axes(q, np.ones(2), np.zeros(3), 0.05)
    assert markers.sample_axes(np.zeros((0, 4)), np.zeros(0), np.zeros(3), 0.05)[0].shape == (0, 3)


def test_chi_square_quantile() -> None:
    assert markers.chi_square_3_quantile(0.95) == pytest.approx(7.814728, rel=1e-6)  # tables
    assert markers.chi_square_3_quantile(0.5) == pytest.approx(2.365974, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ellipsoid_holds_the_stated_probability(dtype: type) -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    C = (A @ A.T * 0.01 + 0.001 * np.eye(3)).astype(dtype)
    mean = np.array([0.2, 0.0, 1.0], dtype=dtype)
    e = markers.translation_ellipsoid(mean, C)
    assert e is not None
    R = so3.quat_to_matrix(torch.from_numpy(e.orientation)).numpy()
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    # points drawn from N(mean, C): the share inside the ellipsoid is the stated 95 %
    x = rng.multivariate_normal(mean.astype(np.float64), C.astype(np.float64), size=20000)
    local = (x - e.center) @ R  # coordinates along the principal axes
    inside = ((local / (e.diameters / 2)) ** 2).sum(axis=1) <= 1
    assert inside.mean() == pytest.approx(0.95, abs=0.01)
    # negative control: with the axes taken in the wrong order the share is not 95 %
    wrong = ((local / (e.diameters[::-1] / 2)) ** 2).sum(axis=1) <= 1
    assert abs(wrong.mean() - 0.95) > 0.05


def test_no_ellipsoid_without_translation_uncertainty() -> None:
    assert markers.translation_ellipsoid(np.zeros(3), np.zeros((3, 3))) is None
    assert markers.translation_ellipsoid(np.zeros(3), np.full((3, 3), math.nan)) is None
