"""pose_core.pinhole: intrinsics, back-projection, regions, translation estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pose_core import pinhole

K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])


def _project(K: np.ndarray, p: np.ndarray) -> np.ndarray:
    uvw = p @ K.T
    return uvw[..., :2] / uvw[..., 2:]


def test_intrinsics_checks() -> None:
    assert pinhole.intrinsics_matrix(K.ravel().tolist()).shape == (3, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 3\) or \(9,\), got \(2, 2\)"):
        pinhole.intrinsics_matrix(np.eye(2))
    with pytest.raises(ValueError, match="positive focal"):
        pinhole.intrinsics_matrix(np.zeros((3, 3)))


def test_backproject_inverts_projection() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform([-1, -1, 0.5], [1, 1, 5], size=(50, 3))
    uv = _project(K, p)
    q = pinhole.backproject(K, uv[:, 0], uv[:, 1], p[:, 2])
    np.testing.assert_allclose(q, p, atol=1e-12)
    ray = pinhole.pixel_ray(K, uv[:, 0], uv[:, 1])
    np.testing.assert_allclose(ray, p / np.linalg.norm(p, axis=1, keepdims=True), atol=1e-12)


def test_backproject_principal_point_and_invalid_depth() -> None:
    np.testing.assert_allclose(pinhole.backproject(K, 320.0, 240.0, 2.0), [0.0, 0.0, 2.0])
    for bad in (0.0, float("nan"), float("inf"), -1.0):
        assert np.isnan(pinhole.backproject(K, 10.0, 10.0, bad)).all()


def test_median_depth_ignores_invalid() -> None:
    depth = np.full((40, 60), 2.0, dtype=np.float32)
    depth[:, :10] = np.nan
    depth[:5] = 0.0
    depth[10:12, 20:22] = 9.0  # outliers: the median ignores them
    assert pinhole.median_depth(depth) == pytest.approx(2.0)
    assert pinhole.median_depth(depth, region=(0, 0, 10, 40)) is None  # only NaN there
    assert pinhole.median_depth(np.zeros((4, 4))) is None
    with pytest.raises(ValueError, match="non-empty image"):
        pinhole.median_depth(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="outside"):
        pinhole.median_depth(depth, region=(100, 100, 120, 120))


def test_translation_from_depth() -> None:
    h, w = 480, 640
    depth = np.full((h, w), np.nan, dtype=np.float32)
    region = (400, 300, 440, 340)  # centre pixel (419.5, 319.5)
    depth[300:340, 400:440] = 3.0
    depth[300:302, 400:440] = 0.0  # holes are ignored
    est = pinhole.translation_from_depth(K, depth, region)
    assert est is not None and est.source == "depth"
    expected = pinhole.backproject(K, 419.5, 319.5, 3.0)
    np.testing.assert_allclose(est.translation, expected, atol=1e-12)
    assert est.translation[2] == pytest.approx(3.0)
    np.testing.assert_allclose(est.covariance, est.covariance.T)
    assert np.linalg.eigvalsh(est.covariance).min() > 0
    depth[:] = np.nan
    assert pinhole.translation_from_depth(K, depth, region) is None


def test_translation_from_nominal_is_vague_along_the_ray() -> None:
    d = 4.0
    est = pinhole.translation_from_nominal(d, K, (420.0, 100.0))
    ray = pinhole.pixel_ray(K, 420.0, 100.0)
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
    axis = pinhole.translation_from_nominal(d)  # no camera_info: the optical axis, vague everywhere
    np.testing.assert_allclose(axis.translation, [0.0, 0.0, d])
    np.testing.assert_allclose(axis.covariance, d**2 * np.eye(3))
    with pytest.raises(ValueError, match="distance"):
        pinhole.translation_from_nominal(0.0)
    with pytest.raises(ValueError, match="both K and center"):
        pinhole.translation_from_nominal(1.0, K)


@pytest.mark.parametrize(
    ("center", "box", "scale"),
    [((30.0, 20.0), (10.0, 6.0), 1.0), ((12.5, 7.25), (9.0, 13.0), 1.5), ((0.0, 0.0), (1, 1), 3)],
)
def test_detection_region_is_a_square_centred_on_the_box(center, box, scale) -> None:
    u0, v0, u1, v1 = pinhole.detection_region(center, box, scale)
    assert all(isinstance(x, int) for x in (u0, v0, u1, v1))
    assert u1 - u0 == v1 - v0 == max(1, round(scale * max(box)))
    cu, cv = pinhole.region_center((u0, v0, u1, v1), 100, 100)
    assert abs(cu - center[0]) <= 0.5 and abs(cv - center[1]) <= 0.5


def test_detection_region_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="size and scale must be > 0"):
        pinhole.detection_region((5, 5), (0, 4))
    with pytest.raises(ValueError, match="finite"):
        pinhole.detection_region((math.nan, 5), (3, 4))
    with pytest.raises(ValueError, match="size and scale must be > 0"):
        pinhole.detection_region((5, 5), (3, 4), scale=-1)
