"""pose_core.data.scenes: SE(3) scenes, their detector boxes and translation guesses, and the crops an SE(3)
model eats (the crop geometry itself: test_pinhole.py; the renderer's translation: test_render.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import pinhole, preprocess
from pose_core.data.randomize import Randomization
from pose_core.data.render import Mesh
from pose_core.data.scenes import (
    SceneConfig,
    SE3RenderDataset,
    depth_image,
    detector_box,
    scaled_mesh,
    se3_collate,
    tight_box,
)
from pose_core.data.shapes import get_shape


def _K(f: float = 600.0, w: int = 640, h: int = 480) -> np.ndarray:
    return np.array([[f, 0.0, (w - 1) / 2 + 3.0], [0.0, f, (h - 1) / 2 - 2.0], [0.0, 0.0, 1.0]])


def test_scene_dataset_items():
    cfg = SceneConfig(crop_size=48)
    ds = SE3RenderDataset(["cube"], size=4, seed=1, config=cfg)
    a, b = ds[2], ds[2]
    torch.testing.assert_close(a["image"], b["image"])  # deterministic
    torch.testing.assert_close(SE3RenderDataset(["cube"], size=4, seed=1, config=cfg)[2]["image"], a["image"])
    assert not torch.equal(SE3RenderDataset(["cube"], size=4, seed=2, config=cfg)[2]["image"], a["image"])
    assert a["image"].shape == (3, 48, 48) and a["image"].dtype == torch.float32 and float(a["image"].max()) > 0.2
    for key, shape in (("K", (3, 3)), ("K_full", (3, 3)), ("rotation", (3, 3)), ("translation", (3,)),
                       ("t_hat", (3,)), ("box", (4,)), ("true_box", (4,))):
        assert a[key].shape == shape and a[key].dtype == torch.float32, key
    assert a["image_size_full"].tolist() == [640, 480] and a["shape"] == "cube" and a["region"].shape == (4,)
    R = a["rotation"].double()
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    # the object is scaled to its diameter: the mesh's bounding sphere
    assert math.isclose(float(np.linalg.norm(ds.mesh(0).positions, axis=1).max()), cfg.diameter_m / 2, rel_tol=1e-5)
    assert math.isclose(ds.scale, cfg.diameter_m / 2)
    # the truth projects near the crop's centre; t_hat from the detector box is close to it
    t = a["translation"].double().numpy()
    pc = a["K"].double().numpy() @ t
    assert np.abs(pc[:2] / pc[2] - 23.5).max() < 0.35 * 48
    assert abs(math.log(float(a["t_hat"][2]) / t[2])) < 0.4
    # the same scene's full frame, cropped, is the crop (up to resampling)
    f = ds.full_frame(2)
    assert f["rgb"].shape == (480, 640, 3) and f["rgb"].dtype == np.uint8
    crop = preprocess.crop_input(f["rgb"], tuple(int(x) for x in f["region"]), 48)[0]
    assert float((crop - a["image"]).abs().mean()) < 0.02
    other = preprocess.crop_input(ds.full_frame(1)["rgb"], tuple(int(x) for x in f["region"]), 48)[0]
    assert float((other - a["image"]).abs().mean()) > 0.02  # negative control: another scene
    batch = se3_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 48, 48) and batch["t_hat"].shape == (2, 3) and batch["K"].shape == (2, 3, 3)
    assert len(batch["equivalents"]) == 2 and batch["shape"] == ["cube"] * 2
    assert batch["equivalents"][0].shape == (24, 3, 3)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="unknown shape"):
        SE3RenderDataset(["nope"], size=2)


def test_truth_projects_inside_the_crop_near_its_centre():
    """Over many scenes (no rendering): the true origin projects into the crop, within the box error of its
    centre; the tight box lies inside the crop up to the detector's size error."""
    cfg = SceneConfig(crop_size=64)
    ds = SE3RenderDataset(["cone", "cube"], size=100, seed=3, config=cfg)
    offsets, inside = [], []
    for i in range(len(ds)):
        s = ds.scene(i)
        pc = s["K"] @ s["translation"]
        offsets.append(pc[:2] / pc[2] - (cfg.crop_size - 1) / 2)
        u0, v0, u1, v1 = s["region"]
        u, v, w, h = s["true_box"]
        inside.append(u0 - 0.5 <= u - w / 2 and u + w / 2 <= u1 - 0.5
                      and v0 - 0.5 <= v - h / 2 and v + h / 2 <= v1 - 0.5)
    off = np.abs(np.array(offsets)) / cfg.crop_size
    assert off.max() < 0.3 and np.median(off) < 0.08
    assert np.mean(inside) > 0.85


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
        for x, n in zip(uv, (cfg.width, cfg.height)):
            assert r_px - 1e-6 <= x <= n - 1 - r_px + 1e-6 or r_px > (n - 1) / 2
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
    assert abs(shift.mean()) < 0.01 and abs(log_size.mean()) < 0.015
    assert abs(shift.std() - cfg.box_center_std) < 0.01 and np.abs(shift).max() <= 3 * cfg.box_center_std + 1e-9
    assert abs(log_size.std() - cfg.box_size_log_std) < 0.015
    assert np.abs(log_size).max() <= 3 * cfg.box_size_log_std + 1e-9
    # the guesses' depth errors: biased a little near (the apparent size is a median over views), spread by
    # the box's size error and the view, inside the model's box (logz_half 0.4)
    log_zerr = np.array(log_zerr)
    assert -0.1 < log_zerr.mean() < 0.03 and 0.06 < log_zerr.std() < 0.15 and np.abs(log_zerr).max() < 0.4
    # negative control: an exact detector leaves only the view's spread
    exact = SE3RenderDataset(["cube"], size=300, seed=0, config=SceneConfig(box_center_std=0, box_size_log_std=0))
    exact_err = np.array([math.log(s["t_hat"][2] / s["translation"][2]) for s in map(exact.scene, range(300))])
    assert exact_err.std() < log_zerr.std() - 0.02
    with pytest.raises(ValueError, match="depth"):
        SceneConfig(depth=[1.5, 0.3])
    with pytest.raises(ValueError, match="max_outside"):
        SceneConfig(max_outside=0.7)


def test_objects_may_be_partly_outside_the_image():
    """max_outside: up to that fraction of the sphere's projected diameter past the border, and no more; the
    crop is black where it leaves the image, as crop_input makes it of the full frame."""
    cfg = SceneConfig(max_outside=0.3, crop_size=48)
    ds = SE3RenderDataset(["cube"], size=300, seed=0, config=cfg)
    outside, past = [], None
    for i in range(len(ds)):
        s = ds.scene(i)
        z = s["translation"][2]
        u, v = (s["K_full"] @ s["translation"])[:2] / z
        r = s["K_full"][0, 0] * cfg.diameter_m / 2 / z
        frac = max(r - u, u - (cfg.width - 1 - r), r - v, v - (cfg.height - 1 - r), 0.0) / (2 * r)
        outside.append(frac)
        if past is None and s["region"][0] < -4:
            past = i
    outside = np.array(outside)
    assert outside.max() <= 0.3 + 1e-9 and np.mean(outside > 0.1) > 0.05
    # a crop that leaves the image on the left, on a grey background: black there, like crop_input of the frame
    grey = SE3RenderDataset(["cube"], size=300, seed=0, config=SceneConfig(
        max_outside=0.3, crop_size=48, randomization=Randomization.off(backgrounds=["grey"])))
    assert past is not None
    img, s = grey.crop(past)
    u0 = int(s["region"][0])
    cols = int(math.floor(-u0 * 48 / (s["region"][2] - u0)))  # crop columns wholly left of the image
    assert cols >= 1 and (img[:, :cols] == 0).all() and (img[:, cols + 1:] > 0).any(-1).all()
    frame = grey.full_frame(past)["rgb"]
    ref = preprocess.crop_input(frame, tuple(int(x) for x in s["region"]), 48)[0].permute(1, 2, 0).numpy()
    assert np.abs(img / 255.0 - ref).mean() < 0.02
    # negative control: without the black border the crop would differ from the frame's
    assert np.abs(grey.crop_renderer.render(grey.mesh(0), s["rotation"], background=(0.5, 0.5, 0.5),
                                            intrinsics=s["K"], translation=s["translation"]) / 255.0 - ref).mean() > \
        2 * np.abs(img / 255.0 - ref).mean()


def test_randomized_crops_keep_their_background_and_object_sized_distractors():
    """Distractor meshes are framed as in the SO(3) recipe (about the object's size in the crop): on a black
    background they leave much of it visible, and randomised crops are not blank or uniform."""
    cfg = SceneConfig(crop_size=48, randomization=Randomization.off(distractors=[2, 2]))
    ds = SE3RenderDataset(["tet"], size=6, seed=0, config=cfg)
    plain = SE3RenderDataset(["tet"], size=6, seed=0, config=SceneConfig(crop_size=48))
    free = []
    for i in range(len(ds)):
        img, _ = ds.crop(i)
        obj = plain.crop(i)[0].max(-1) > 0
        free.append(float(((img.max(-1) == 0) & ~obj).sum() / max(1, (~obj).sum())))
    assert np.mean(free) > 0.2, free  # a distractor framed at the object's depth would fill the whole crop
    rand = SE3RenderDataset(["cube"], size=4, seed=0, config=SceneConfig(crop_size=48, randomization=Randomization()))
    for i in range(len(rand)):
        x = rand[i]["image"]
        assert x.shape == (3, 48, 48) and float(x.std()) > 0.02
    torch.testing.assert_close(rand[1]["image"], rand[1]["image"])


def test_full_frame_depth_is_the_object_surface():
    ds = SE3RenderDataset(["cyl"], size=3, seed=4, config=SceneConfig())
    f = ds.full_frame(1, depth=True)
    d, rgb = f["depth"], f["rgb"]
    assert d.shape == (480, 640) and d.dtype == np.float32
    mask = d > 0
    solid = rgb.max(-1) > 0
    # the depth covers the silhouette, up to its anti-aliased edge pixels
    assert (mask & ~solid).sum() == 0 and (solid & ~mask).sum() < 0.1 * solid.sum()
    z, r = f["translation"][2], ds.config.diameter_m / 2
    assert z - r - 1e-4 <= d[mask].min() and d[mask].max() <= z + r + 1e-4
    est = pinhole.translation_from_depth(f["K_full"], d, tuple(int(x) for x in f["region"]))
    assert est is not None and np.linalg.norm(est.translation - f["translation"]) < 2 * r
    assert "depth" not in ds.full_frame(1)


def test_depth_image_of_a_plane_is_exact():
    """A square facing the camera at z = 2 and one tilted: depth is the plane's z at each pixel centre."""
    K = _K(300.0, 64, 48)
    quad = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    mesh = Mesh(quad, np.tile([0, 0, -1], (6, 1)), (1.0, 1.0, 1.0))
    d = depth_image(mesh, np.eye(3), np.array([0.0, 0.0, 2.0]), K, 64, 48)
    assert (d == 2.0).all()  # it covers the whole image
    c, s = math.cos(0.5), math.sin(0.5)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # tilted about y: z = 2 - tan(0.5) x along the ray
    d = depth_image(scaled_mesh(mesh, 0.1), R, np.array([0.0, 0.0, 2.0]), K, 64, 48)
    vs, us = np.nonzero(d > 0)
    rays = np.linalg.solve(K, np.stack([us, vs, np.ones_like(us)]).astype(np.float64))  # (3, N), z = 1
    n = R @ np.array([0.0, 0.0, 1.0])
    expected = (n @ np.array([0.0, 0.0, 2.0])) / (n @ rays)
    np.testing.assert_allclose(d[vs, us], expected, rtol=1e-6)
    assert 100 < len(us) < 64 * 48
    with pytest.raises(ValueError, match="behind"):
        depth_image(mesh, np.eye(3), np.array([0.0, 0.0, -2.0]), K, 64, 48)


def test_tight_box_and_detector_box():
    K = _K()
    v = np.array([[-0.1, 0.0, 0.0], [0.1, 0.05, 0.0]])
    box = tight_box(v, np.eye(3), np.array([0.0, 0.0, 1.0]), K)
    np.testing.assert_allclose(box[2:], [120.0 + 1.0, 30.0 + 1.0])
    with pytest.raises(ValueError, match="behind"):
        tight_box(v, np.eye(3), np.array([0.0, 0.0, -1.0]), K)
    exact = SceneConfig(box_center_std=0.0, box_size_log_std=0.0)
    np.testing.assert_allclose(detector_box(box, exact, np.random.default_rng(0)), box)
    noisy = detector_box(box, SceneConfig(), np.random.default_rng(0))
    assert not np.allclose(noisy, box)
    edge = detector_box(np.array([10.0, 240.0, 40.0, 40.0]), exact, np.random.default_rng(0))
    np.testing.assert_allclose(edge, [14.75, 240.0, 30.5, 40.0])  # clipped at the left border (-0.5)


def test_scaled_mesh_is_a_scaled_copy():
    mesh = get_shape("cone").mesh
    half = scaled_mesh(mesh, 0.5)
    np.testing.assert_allclose(half.positions, 0.5 * mesh.positions, rtol=1e-6)
    assert half is not mesh and half.positions is not mesh.positions
    np.testing.assert_array_equal(half.normals, mesh.normals)
    with pytest.raises(ValueError, match="> 0"):
        scaled_mesh(mesh, 0.0)
