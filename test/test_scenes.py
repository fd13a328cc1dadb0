"""SE(3) scenes: object-centred crops and their intrinsics, box-based translations, the scene dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import pinhole, preprocess
from pose_core.data.render import Camera, Renderer
from pose_core.data.scenes import SceneConfig, SE3RenderDataset, scaled_mesh, se3_collate, tight_box
from pose_core.data.shapes import get_shape


def _K(f: float = 600.0, w: int = 640, h: int = 480) -> np.ndarray:
    return np.array([[f, 0.0, (w - 1) / 2 + 3.0], [0.0, f, (h - 1) / 2 - 2.0], [0.0, 0.0, 1.0]])


def test_crop_intrinsics_map_points_into_the_resized_crop():
    """A point's pixel in a full frame, cropped and resized by preprocess.crop_input, is K_crop @ p."""
    K = _K()
    t_hat = np.array([0.12, -0.05, 0.8])
    region, K_crop = pinhole.object_crop(K, t_hat, 0.075, 64)
    side = region[2] - region[0]
    assert side == round(2 * 1.1 * 0.075 * 600 / 0.8) and region[3] - region[1] == side
    # the crop is centred on the guess's projection (pixel centres at integers)
    uvw = K @ t_hat
    assert abs(pinhole.region_center(region, 640, 480)[0] - uvw[0] / uvw[2]) <= 0.5
    # a one-pixel bright spot at a known point lands where K_crop says, after crop_input's resize
    p = t_hat + np.array([0.02, 0.01, 0.0])
    u, v = (K @ p)[:2] / p[2]
    img = np.zeros((480, 640, 3), np.uint8)
    img[int(round(v)) - 1 : int(round(v)) + 2, int(round(u)) - 1 : int(round(u)) + 2] = 255
    region, K_crop = pinhole.object_crop(K, t_hat, 0.075, 256)  # upscaled x4: the half-pixel terms matter
    crop = preprocess.crop_input(img, region, 256)[0, 0].numpy()
    ys, xs = np.nonzero(crop > 0.05)
    w = crop[ys, xs]
    centre = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    pc = K_crop @ p
    expected = pc[:2] / pc[2] + (np.array([round(u), round(v)]) - np.array([u, v])) * 256 / side
    np.testing.assert_allclose(centre, expected, atol=0.35)
    # negative control: ignoring the half-pixel convention is off by more than that
    s = 256 / side
    naive = np.array([s * (u - region[0]), s * (v - region[1])])
    assert np.abs(naive - expected).max() > 0.35
    with pytest.raises(ValueError, match="z > 0"):
        pinhole.object_crop(K, -t_hat, 0.075, 64)


def test_translation_from_box_inverts_the_apparent_size():
    K = _K()
    t = pinhole.translation_from_box(K, (400.0, 200.0), (60.0, 90.0), 0.12)
    assert math.isclose(t[2], 600 * 0.12 / 90)
    uvw = K @ t
    np.testing.assert_allclose(uvw[:2] / uvw[2], [400.0, 200.0])
    with pytest.raises(ValueError, match="positive size"):
        pinhole.translation_from_box(K, (400.0, 200.0), (0.0, 90.0), 0.12)


def test_apparent_size_of_a_cube_and_a_sphere_like_cloud():
    cube = get_shape("cube").mesh.positions.astype(np.float64)  # unit bounding sphere: side 2/sqrt(3)
    a = pinhole.apparent_size(cube)
    side = 2 / math.sqrt(3)
    assert side <= a <= side * math.sqrt(3)  # between a face and the widest silhouette
    assert pinhole.apparent_size(cube, seed=0) == a  # deterministic
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(3000, 3))
    ball /= np.linalg.norm(ball, axis=1, keepdims=True)
    assert abs(pinhole.apparent_size(ball) - 2.0) < 0.05  # a sphere looks the same from everywhere


def test_render_translation_places_the_object_where_K_says():
    cam = Camera(160, 120, focal=150.0, near=0.05, distance=1.0, far=10.0)
    r = Renderer(cam)
    mesh = scaled_mesh(get_shape("icosa").mesh, 0.05)
    t = np.array([0.1, -0.05, 0.9])
    img = r.render(mesh, np.eye(3), translation=t).astype(np.float64).sum(-1)
    ys, xs = np.nonzero(img > 10)
    uvw = cam.K @ t
    assert abs(xs.mean() - uvw[0] / uvw[2]) < 1.0 and abs(ys.mean() - uvw[1] / uvw[2]) < 1.0
    with pytest.raises(ValueError, match="not both"):
        r.render(mesh, np.eye(3), translation=t, distance=1.0)
    with pytest.raises(ValueError, match="near"):
        r.render(mesh, np.eye(3), translation=[0.0, 0.0, 50.0])


def test_scene_dataset_items():
    cfg = SceneConfig(crop_size=48)
    ds = SE3RenderDataset(["cube"], size=4, seed=1, config=cfg)
    a, b = ds[2], ds[2]
    torch.testing.assert_close(a["image"], b["image"])  # deterministic
    assert a["image"].shape == (3, 48, 48) and float(a["image"].max()) > 0.2
    for key, shape in (("K", (3, 3)), ("rotation", (3, 3)), ("translation", (3,)), ("t_hat", (3,)), ("box", (4,))):
        assert a[key].shape == shape and a[key].dtype == torch.float32
    # the object is scaled to its diameter: the mesh's bounding sphere
    assert math.isclose(float(np.linalg.norm(ds.mesh(0).positions, axis=1).max()), cfg.diameter_m / 2, rel_tol=1e-5)
    # the truth projects near the crop's centre; t_hat from the detector box is close to it
    t = a["translation"].double().numpy()
    pc = a["K"].double().numpy() @ t
    assert np.abs(pc[:2] / pc[2] - 23.5).max() < 0.35 * 48
    assert abs(math.log(float(a["t_hat"][2]) / t[2])) < 0.4
    # the same scene's full frame, cropped, is the crop (up to resampling)
    f = ds.full_frame(2)
    crop = preprocess.crop_input(f["rgb"], tuple(int(x) for x in f["region"]), 48)[0]
    assert float((crop - a["image"]).abs().mean()) < 0.02
    other = preprocess.crop_input(ds.full_frame(1)["rgb"], tuple(int(x) for x in f["region"]), 48)[0]
    assert float((other - a["image"]).abs().mean()) > 0.02  # negative control: another scene
    batch = se3_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 48, 48) and len(batch["equivalents"]) == 2 and batch["shape"] == ["cube"] * 2
    assert batch["equivalents"][0].shape == (24, 3, 3)


def test_scene_statistics_without_rendering():
    """Depths in range, the object's sphere in view, the detector's box error as configured."""
    cfg = SceneConfig()
    ds = SE3RenderDataset(["cube"], size=300, seed=0, config=cfg)
    shift, log_size, depth, log_zerr = [], [], [], []
    for i in range(len(ds)):
        s = ds.scene(i)
        z = s["translation"][2]
        depth.append(z)
        uv = (s["K_full"] @ s["translation"])[:2] / z
        r_px = s["K_full"][0, 0] * cfg.diameter_m / 2 / z
        assert r_px - 1e-6 <= uv[0] <= cfg.width - 1 - r_px + 1e-6 or r_px > (cfg.width - 1) / 2
        tb, b = s["true_box"], s["box"]
        edge = np.array([cfg.width - 1, cfg.height - 1])
        unclipped = [(x[:2] - x[2:] / 2 > 0).all() and (x[:2] + x[2:] / 2 < edge).all() for x in (tb, b)]
        if all(unclipped):
            shift.append((b[:2] - tb[:2]) / tb[2:])
            log_size.append(np.log(b[2:] / tb[2:]))
        log_zerr.append(math.log(s["t_hat"][2] / z))
    depth, shift, log_size = np.array(depth), np.array(shift), np.array(log_size)
    assert depth.min() >= 0.3 and depth.max() <= 1.5 and depth.std() > 0.25
    assert len(shift) > 200
    assert abs(shift.std() - cfg.box_center_std) < 0.01 and np.abs(shift).max() <= 3 * cfg.box_center_std + 1e-9
    assert abs(log_size.std() - cfg.box_size_log_std) < 0.015
    assert np.abs(log_zerr).max() < 0.4  # the guesses' depth errors stay inside the model's box (logz_half 0.4)
    with pytest.raises(ValueError, match="depth"):
        SceneConfig(depth=[1.5, 0.3])


def test_tight_box_of_a_point_set():
    K = _K()
    v = np.array([[-0.1, 0.0, 0.0], [0.1, 0.05, 0.0]])
    box = tight_box(v, np.eye(3), np.array([0.0, 0.0, 1.0]), K)
    np.testing.assert_allclose(box[2:], [120.0 + 1.0, 30.0 + 1.0])
    with pytest.raises(ValueError, match="behind"):
        tight_box(v, np.eye(3), np.array([0.0, 0.0, -1.0]), K)
