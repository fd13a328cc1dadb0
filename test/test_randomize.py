"""Domain randomisation (pose_core.data.randomize, backgrounds): determinism, each knob does what it
says and nothing else, the occluded fraction is what was asked, configs reach the datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose_core import so3
from pose_core.data import backgrounds
from pose_core.data.meshes import ShapesDataset
from pose_core.data.randomize import Randomization, compose
from pose_core.data.render import Camera, Renderer
from pose_core.data.shapes import get_shape

SIZE = 64


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    r = Renderer(Camera(SIZE, SIZE))
    yield r
    r.close()


@pytest.fixture(scope="module")
def scene() -> tuple:
    R = so3.random_rotations(1, torch.Generator().manual_seed(7), dtype=torch.float64)[0].numpy()
    return get_shape("cube").mesh, R


def _compose(renderer, scene, cfg, entropy=(1, 2, 3)):
    mesh, R = scene
    return compose(renderer, mesh, R, cfg, list(entropy))


def _masks(renderer, scene):
    """(object fully covers the pixel, object absent) masks of the plain render."""
    alpha = renderer.render_layer(*scene)[..., 3]
    return alpha >= 0.999, alpha <= 0.001


def test_off_is_the_plain_render(renderer, scene):
    img, info = _compose(renderer, scene, Randomization.off())
    np.testing.assert_array_equal(img, renderer.render(*scene))
    assert info["occluded"] == 0.0 and info["scale"] == 1.0 and info["shift"] == 0.0


def test_same_seed_same_image_other_seed_other_image(renderer, scene):
    cfg = Randomization()
    a, _ = _compose(renderer, scene, cfg, (0, 5, 9))
    b, _ = _compose(renderer, scene, cfg, (0, 5, 9))
    c, _ = _compose(renderer, scene, cfg, (0, 5, 10))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5  # negative control: another item is another image


@pytest.mark.parametrize("kind", backgrounds.PROCEDURAL[1:])
def test_background_changes_only_the_background(renderer, scene, kind):
    plain = renderer.render(*scene)
    full, empty = _masks(renderer, scene)
    img, _ = _compose(renderer, scene, Randomization.off(backgrounds=[kind]))
    np.testing.assert_array_equal(img[full], plain[full])
    assert np.abs(img[empty].astype(int) - plain[empty]).mean() > 5


def test_photo_backgrounds_train_and_heldout_are_disjoint_and_used(renderer, scene):
    train, held = backgrounds.shipped_photo_paths("train"), backgrounds.shipped_photo_paths("heldout")
    assert len(train) >= 5 and len(held) >= 2
    assert not set(train) & set(held)
    plain = renderer.render(*scene)
    _, empty = _masks(renderer, scene)
    for split in ("train", "heldout"):
        img, _ = _compose(renderer, scene, Randomization.off(backgrounds=["photo"], photo_split=split))
        assert np.abs(img[empty].astype(int) - plain[empty]).mean() > 5


def test_photo_folder(tmp_path, renderer, scene):
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), (10, 200, 30), np.uint8)).save(tmp_path / "green.png")
    img, _ = _compose(renderer, scene, Randomization.off(backgrounds=["photo"], background_dir=str(tmp_path)))
    _, empty = _masks(renderer, scene)
    np.testing.assert_allclose(img[empty].mean(0), (10, 200, 30), atol=1)
    with pytest.raises(ValueError, match="holds no images"):
        backgrounds.PhotoLibrary(_empty_dir(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        backgrounds.PhotoLibrary(tmp_path / "missing")


def _empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


@pytest.mark.parametrize("knob", [
    {"lighting_p": 1.0},
    {"tint_p": 1.0},
])
def test_lighting_and_tint_change_only_the_object(renderer, scene, knob):
    plain = renderer.render(*scene)
    _, empty = _masks(renderer, scene)
    img, _ = _compose(renderer, scene, Randomization.off(**knob))
    np.testing.assert_array_equal(img[empty], plain[empty])
    full, _ = _masks(renderer, scene)
    assert np.abs(img[full].astype(int) - plain[full]).mean() > 3


def test_distractors_stay_behind_the_object(renderer, scene):
    plain = renderer.render(*scene)
    full, _ = _masks(renderer, scene)
    changed = 0
    for k in range(6):
        img, _ = _compose(renderer, scene, Randomization.off(distractors=[2, 2]), (4, k))
        np.testing.assert_array_equal(img[full], plain[full])
        changed += int((img != plain).any())
    assert changed >= 5


def _centroid(alpha: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(alpha > 0.5)
    return np.array([xs.mean(), ys.mean()])


def test_shift_and_scale_move_and_size_the_object_as_asked(renderer, scene):
    mesh, R = scene
    small, _ = _compose(renderer, scene, Randomization.off(scale=[0.5, 0.5]))  # stays inside when shifted
    base = _centroid((small.max(-1) > 0).astype(float))
    for shift in (0.1, 0.25):
        img, info = _compose(renderer, scene, Randomization.off(shift=[shift, shift], scale=[0.5, 0.5]))
        obj = img.max(-1) > 0  # black background
        moved = np.linalg.norm(_centroid(obj.astype(float)) - base)
        assert abs(moved - shift * SIZE) < 1.5, (shift, moved)
    area = (renderer.render_layer(mesh, R)[..., 3] > 0.5).sum()
    for scale in (0.7, 1.4):
        img, _ = _compose(renderer, scene, Randomization.off(scale=[scale, scale]))
        ratio = (img.max(-1) > 0).sum() / area
        assert abs(ratio - scale**2) < 0.08 * scale**2, (scale, ratio)


def test_distance_changes_perspective_not_size(renderer, scene):
    mesh, R = scene
    area = (renderer.render_layer(mesh, R)[..., 3] > 0.5).sum()
    img, info = _compose(renderer, scene, Randomization.off(distance=[8.0, 8.0]))
    assert info["distance"] == 8.0
    assert abs((img.max(-1) > 0).sum() / area - 1.0) < 0.1


@pytest.mark.parametrize("mesh_p", [0.0, 1.0], ids=["patch", "mesh"])
def test_occluded_fraction_is_what_was_asked(renderer, scene, mesh_p):
    cfg = Randomization.off(occlusion_p=1.0, occlusion=[0.1, 0.8], occluder_mesh_p=mesh_p)
    errors = []
    for k in range(25):
        _, info = _compose(renderer, scene, cfg, (9, k))
        assert 0.1 <= info["occlusion"] <= 0.8
        errors.append(abs(info["occluded"] - info["occlusion"]))
    assert max(errors) <= 0.05, errors


def test_occlusion_covers_the_object_it_reports(renderer, scene):
    """The reported fraction is what the pixels show: the object's pixels that changed."""
    plain = renderer.render(*scene)
    full, _ = _masks(renderer, scene)
    for k in range(5):
        img, info = _compose(renderer, scene, Randomization.off(occlusion_p=1.0, occlusion=[0.3, 0.3],
                                                                occluder_mesh_p=0.0), (3, k))
        hidden = (img[full] != plain[full]).any(-1).mean()
        assert abs(hidden - info["occluded"]) < 0.08, (hidden, info)


def test_sensor_effects(renderer, scene):
    plain = renderer.render(*scene).astype(np.float64)
    bright, _ = _compose(renderer, scene, Randomization.off(
        color_p=1.0, white_balance=0.0, brightness=[1.5, 1.5], contrast=[1, 1], saturation=[1, 1], gamma=[1, 1]))
    np.testing.assert_allclose(bright, np.clip(plain * 1.5, 0, 255), atol=1.01)
    noisy, _ = _compose(renderer, scene, Randomization.off(noise_p=1.0, noise=[0.05, 0.05]))
    full, _ = _masks(renderer, scene)
    assert abs((noisy.astype(float) - plain)[full].std() / 255 - 0.05) < 0.01
    blurred, _ = _compose(renderer, scene, Randomization.off(blur_p=1.0, blur=[3.0, 3.0]))
    edges = lambda im: (np.diff(im.astype(float), axis=1) ** 2).sum()  # noqa: E731  (energy of the edges)
    assert edges(blurred) < 0.3 * edges(plain)
    jpeg, _ = _compose(renderer, scene, Randomization.off(jpeg_p=1.0, jpeg_quality=[20, 20]))
    assert 0 < np.abs(jpeg.astype(float) - plain).mean() < 10


def test_knobs_draw_independently(renderer, scene):
    """Background + lighting together = the background of one and the object of the other."""
    full, empty = _masks(renderer, scene)
    bg, _ = _compose(renderer, scene, Randomization.off(backgrounds=["fractal"]))
    lit, _ = _compose(renderer, scene, Randomization.off(lighting_p=1.0))
    both, _ = _compose(renderer, scene, Randomization.off(backgrounds=["fractal"], lighting_p=1.0))
    np.testing.assert_array_equal(both[empty], bg[empty])
    np.testing.assert_array_equal(both[full], lit[full])


@pytest.mark.parametrize("bad,match", [
    ({"backgrounds": ["sky"]}, "unknown kind"),
    ({"shift": [0.3, 0.1]}, "randomize.shift"),
    ({"occlusion": [0.2, 1.5]}, "randomize.occlusion"),
    ({"noise_p": 2.0}, "randomize.noise_p"),
    ({"lights": [0, 5]}, "randomize.lights"),
    ({"photo_split": "test"}, "photo_split"),
])
def test_bad_knobs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Randomization(**bad)


def test_procedural_backgrounds_are_deterministic():
    for kind in backgrounds.PROCEDURAL:
        a = backgrounds.procedural(kind, np.random.default_rng(3), 30, 40)
        b = backgrounds.procedural(kind, np.random.default_rng(3), 30, 40)
        assert a.shape == (30, 40, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown procedural"):
        backgrounds.procedural("sky", np.random.default_rng(0), 4, 4)


def test_dataset_and_config_carry_the_randomisation():
    from train.config import config_from_dict
    from train.datasets import build_dataset

    cfg = config_from_dict({"data": {"name": "symsol", "shapes": ["cube"], "size": 3, "image_size": SIZE,
                                     "randomize": {"occlusion_p": 1.0}}})
    assert cfg.data.randomize is not None and cfg.data.randomize.occlusion_p == 1.0
    data = build_dataset(cfg.data)
    item = data[1]
    assert item["image"].shape == (3, SIZE, SIZE) and item["occluded"] > 0
    again = build_dataset(cfg.data)[1]
    assert torch.equal(item["image"], again["image"])
    assert torch.equal(item["rotation"], again["rotation"])
    plain = ShapesDataset(["cube"], size=3, image_size=SIZE)[1]
    assert torch.equal(plain["rotation"], item["rotation"])  # the label is the same rotation
    assert not torch.equal(plain["image"], item["image"])
    with pytest.raises(ValueError, match="do not combine"):
        config_from_dict({"data": {"name": "symsol", "occluders": 2, "randomize": {}}})
    with pytest.raises(ValueError, match="rendered data"):
        config_from_dict({"data": {"name": "modelnet10", "root": "/x", "randomize": {}}})


def test_workers_render_the_same_items_as_the_main_process():
    """What training sees (spawned DataLoader workers) is what the seed says: the same images."""
    from torch.utils.data import DataLoader

    from train.datasets import collate

    data = ShapesDataset(["cube", "cone"], size=3, image_size=SIZE, seed=4,
                         randomization=Randomization())
    loader = DataLoader(data, batch_size=6, num_workers=1, collate_fn=collate, multiprocessing_context="spawn")
    batch = next(iter(loader))
    direct = collate([data[i] for i in range(6)])
    assert torch.equal(batch["image"], direct["image"])
    assert torch.equal(batch["rotation"], direct["rotation"])


def test_bars_occluder_covers_what_was_asked(renderer, scene):
    cfg = Randomization.off(occlusion_p=1.0, occlusion=[0.1, 0.8], occluder_bars_p=1.0)
    errors = []
    for k in range(20):
        _, info = _compose(renderer, scene, cfg, (11, k))
        assert info["occluder"] == "bars" and 0.1 <= info["occlusion"] <= 0.8
        errors.append(abs(info["occluded"] - info["occlusion"]))
    assert max(errors) <= 0.05, errors


def test_bars_off_draws_what_it_drew_before(renderer, scene):
    """occluder_bars_p = 0 (the default) adds no draw: the images of every config are unchanged.
    Pinned against the same config with the field absent, and against the mesh / patch kinds."""
    import dataclasses

    for cfg in (Randomization(), Randomization.off(occlusion_p=1.0, occluder_mesh_p=0.5)):
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "occluder_bars_p"}
        absent = Randomization(**fields)  # the field left at its default, as in every existing config
        for k in range(6):
            a, ia = _compose(renderer, scene, cfg, (2, k))
            b, ib = _compose(renderer, scene, absent, (2, k))
            c, ic = _compose(renderer, scene, dataclasses.replace(cfg, occluder_bars_p=0.0), (2, k))
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
            assert ia == ib == ic and ia["occluder"] != "bars"
    # and bars on do change the occluded images (negative control)
    cfg = Randomization.off(occlusion_p=1.0, occlusion=[0.4, 0.4])
    plain, _ = _compose(renderer, scene, cfg, (2, 0))
    bars, info = _compose(renderer, scene, dataclasses.replace(cfg, occluder_bars_p=1.0), (2, 0))
    assert info["occluder"] == "bars" and not np.array_equal(plain, bars)


@pytest.mark.parametrize("kind", ["patch", "mesh", "bars", "none"])
def test_masks_agree_with_the_reported_fraction(renderer, scene, kind):
    cfg = Randomization.off(occlusion_p=0.0 if kind == "none" else 1.0, occlusion=[0.2, 0.7],
                            occluder_mesh_p=1.0 if kind == "mesh" else 0.0,
                            occluder_bars_p=1.0 if kind == "bars" else 0.0, backgrounds=["fractal"])
    for k in range(3):
        img, info = _compose_masks(renderer, scene, cfg, (8, k))
        obj, occ = info["object_mask"], info["occluder_mask"]
        assert obj.shape == occ.shape == (SIZE, SIZE) and obj.dtype == occ.dtype == np.float32
        assert info["occluder"] == kind
        assert 0 <= occ.min() and occ.max() <= 1 and 0 <= obj.min() and obj.max() <= 1
        np.testing.assert_allclose((occ * obj).sum() / obj.sum(), info["occluded"], atol=1e-6)
        np.testing.assert_array_equal(obj, renderer.render_layer(*scene)[..., 3])
        if kind == "none":
            assert info["occluded"] == 0.0 and not occ.any()
        else:
            assert info["occluded"] > 0.1
        plain, plain_info = _compose(renderer, scene, cfg, (8, k))  # asking for masks changes nothing
        np.testing.assert_array_equal(img, plain)
        assert "object_mask" not in plain_info and plain_info["occluded"] == info["occluded"]


def _compose_masks(renderer, scene, cfg, entropy):
    mesh, R = scene
    return compose(renderer, mesh, R, cfg, list(entropy), return_masks=True)


def test_bars_probability_is_checked():
    with pytest.raises(ValueError, match="randomize.occluder_bars_p"):
        Randomization(occluder_bars_p=1.5)
