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


# ----------------------------------------------------------------------------- object-centred crops (SE(3) models)


def _Kc(f: float = 600.0, w: int = 640, h: int = 480) -> np.ndarray:
    return np.array([[f, 0.0, (w - 1) / 2 + 3.0], [0.0, f, (h - 1) / 2 - 2.0], [0.0, 0.0, 1.0]])


def test_object_crop_intrinsics_map_points_into_the_resized_crop() -> None:
    """A point's pixel in a full frame, cropped and resized by preprocess.crop_input, is K_crop @ p."""
    from pose_core import preprocess

    K = _Kc()
    t_hat = np.array([0.12, -0.05, 0.8])
    region, K_crop = pinhole.object_crop(K, t_hat, 0.075, 64)
    side = region[2] - region[0]
    assert side == round(2 * 1.1 * 0.075 * 600 / 0.8) and region[3] - region[1] == side
    assert all(isinstance(x, int) for x in region) and K_crop.dtype == np.float64
    # the crop is centred on the guess's projection (pixel centres at integers)
    uvw = K @ t_hat
    cu, cv = pinhole.region_center(region, 640, 480)
    assert abs(cu - uvw[0] / uvw[2]) <= 0.5 and abs(cv - uvw[1] / uvw[2]) <= 0.5
    # the guess itself projects to the crop's centre, up to the half-pixel rounding of the region
    pc = K_crop @ t_hat
    assert np.abs(pc[:2] / pc[2] - 31.5).max() <= 0.5 * 64 / side + 1e-9
    # a 3x3 bright spot at a known point lands where K_crop says, after crop_input's resize
    p = t_hat + np.array([0.02, 0.01, 0.0])
    u, v = (K @ p)[:2] / p[2]
    img = np.zeros((480, 640, 3), np.uint8)
    img[int(round(v)) - 1 : int(round(v)) + 2, int(round(u)) - 1 : int(round(u)) + 2] = 255
    for size in (256, 40):  # upscaled x4 (the half-pixel terms matter) and downscaled
        region, K_crop = pinhole.object_crop(K, t_hat, 0.075, size)
        crop = preprocess.crop_input(img, region, size)[0, 0].numpy()
        ys, xs = np.nonzero(crop > 0.02)
        w = crop[ys, xs]
        centre = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
        pc = K_crop @ p
        # the spot is centred on the rounded pixel, not on (u, v) itself
        expected = pc[:2] / pc[2] + (np.array([round(u), round(v)]) - np.array([u, v])) * size / side
        np.testing.assert_allclose(centre, expected, atol=0.35 if size > side else 0.1)
        if size == 256:  # negative control: ignoring the half-pixel convention is off by more than that
            s = size / side
            naive = np.array([s * (u - region[0]), s * (v - region[1])])
            assert np.abs(naive - expected).max() > 0.35
    with pytest.raises(ValueError, match="z > 0"):
        pinhole.object_crop(K, -t_hat, 0.075, 64)
    with pytest.raises(ValueError, match="radius_m and padding"):
        pinhole.object_crop(K, t_hat, 0.0, 64)
    with pytest.raises(ValueError, match="square"):
        pinhole.crop_intrinsics(K, (0, 0, 10, 12), 64)


def test_object_crop_rendered_directly_is_the_cropped_full_frame() -> None:
    """Rendering the crop with intrinsics K_crop at size_px is what crop_input makes of a full-frame render,
    and a rendered marker (a small sphere) lands at K_crop @ p to a fraction of a pixel."""
    from pose_core import preprocess
    from pose_core.data import get_shape
    from pose_core.data.render import Camera, Lighting, Mesh, Renderer

    K = _Kc(550.0)
    base = get_shape("cube").mesh
    obj = Mesh(base.positions * np.float32(0.075), base.normals, (0.9, 0.6, 0.3))
    R = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])
    t = np.array([-0.15, 0.08, 0.7])
    full = Renderer(Camera(640, 480, near=0.05, distance=1.0, far=10.0)).render(obj, R, intrinsics=K, translation=t)
    for size in (64, 192):  # down- and upscaled
        region, K_crop = pinhole.object_crop(K, t + np.array([0.01, -0.005, 0.03]), 0.075, size)
        direct = Renderer(Camera(size, size, near=0.05, distance=1.0, far=10.0)).render(
            obj, R, intrinsics=K_crop, translation=t)
        cropped = preprocess.crop_input(full, region, size)[0].permute(1, 2, 0).numpy()
        diff = np.abs(direct / 255.0 - cropped)
        assert diff.mean() < 0.01, diff.mean()
        # negative control: the crop intrinsics of a region shifted by 2 px do not match
        shifted = pinhole.crop_intrinsics(K, (region[0] + 2, region[1], region[2] + 2, region[3]), size)
        off = Renderer(Camera(size, size, near=0.05, distance=1.0, far=10.0)).render(
            obj, R, intrinsics=shifted, translation=t)
        assert np.abs(off / 255.0 - cropped).mean() > 2 * diff.mean()
    # a small white sphere at p on a black frame: its crop centroid is K_crop @ p
    ball = get_shape("sphereX").mesh
    ball = Mesh(ball.positions * np.float32(0.004), ball.normals, (1.0, 1.0, 1.0))
    p = np.array([0.03, -0.02, 0.65])
    flat = Lighting((), ambient=1.0)  # unshaded: the brightness-weighted centroid is the silhouette's
    marker = Renderer(Camera(640, 480, near=0.05, distance=1.0, far=10.0)).render(ball, np.eye(3), intrinsics=K,
                                                                                  translation=p, lighting=flat)
    region, K_crop = pinhole.object_crop(K, np.array([0.0, 0.0, 0.7]), 0.075, 192)
    crop = preprocess.crop_input(marker, region, 192)[0].mean(0).numpy()
    ys, xs = np.nonzero(crop > 0.01)
    w = crop[ys, xs]
    pc = K_crop @ p
    np.testing.assert_allclose([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()], pc[:2] / pc[2], atol=0.1)


def test_translation_from_box_inverts_the_apparent_size() -> None:
    K = _Kc()
    t = pinhole.translation_from_box(K, (400.0, 200.0), (60.0, 90.0), 0.12)
    assert t.shape == (3,) and t.dtype == np.float64
    assert math.isclose(t[2], 600 * 0.12 / 90)  # the longer side
    np.testing.assert_allclose(_project(K, t), [400.0, 200.0])
    Ka = K.copy()
    Ka[1, 1] = 500.0  # fx != fy: the mean focal
    assert math.isclose(pinhole.translation_from_box(Ka, (400.0, 200.0), (60.0, 90.0), 0.12)[2], 550 * 0.12 / 90)
    with pytest.raises(ValueError, match="positive size"):
        pinhole.translation_from_box(K, (400.0, 200.0), (0.0, 90.0), 0.12)
    with pytest.raises(ValueError, match="apparent_size_m"):
        pinhole.translation_from_box(K, (400.0, 200.0), (60.0, 90.0), -1.0)


def test_apparent_size_of_a_cube_and_a_sphere_like_cloud() -> None:
    from pose_core.data import get_shape

    cube = get_shape("cube").mesh.positions.astype(np.float64)  # unit bounding sphere: side 2/sqrt(3)
    a = pinhole.apparent_size(cube)
    side = 2 / math.sqrt(3)
    assert side <= a <= side * math.sqrt(3)  # between a face and the widest silhouette
    assert pinhole.apparent_size(cube, seed=0) == a  # deterministic
    assert math.isclose(pinhole.apparent_size(0.1 * cube), 0.1 * a, rel_tol=1e-12)  # a length
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(3000, 3))
    ball /= np.linalg.norm(ball, axis=1, keepdims=True)
    assert abs(pinhole.apparent_size(ball) - 2.0) < 0.05  # a sphere looks the same from everywhere
    # a tight box of the cube at a random pose and depth z is about f * apparent_size / z long
    R = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])
    uv = _project(K, cube @ R.T + np.array([0.0, 0.0, 5.0]))
    longer = (uv.max(0) - uv.min(0)).max()
    assert 0.7 < longer * 5.0 / (500.0 * a) < 1.3
    with pytest.raises(ValueError, match="vertices"):
        pinhole.apparent_size(np.zeros((1, 3)))
