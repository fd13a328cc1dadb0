"""Tests of pose_core.data.shapes: symmetry groups, equivalent renders, SYMSOL II marks, mesh files."""

import numpy as np
import pytest
import torch
from PIL import Image

from pose_core import so3
from pose_core.data.render import Camera, Renderer
from pose_core.data.shapes import SYMSOL_I, get_shape, load_obj, mesh_shape, symmetry_group_of_points

SIZE = 96
EXPECTED = {"tet": 12, "cube": 24, "icosa": 60, "cone": 360, "cyl": 720}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(Camera(SIZE, SIZE))


def _rotations(n: int, seed: int) -> np.ndarray:
    return so3.random_rotations(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


@pytest.mark.parametrize("name", SYMSOL_I)
def test_group_size_identity_orthogonal(name):
    S = get_shape(name).symmetries
    assert S.shape == (EXPECTED[name], 3, 3) and S.dtype == np.float64
    np.testing.assert_allclose(S[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(S @ S.transpose(0, 2, 1), np.broadcast_to(np.eye(3), S.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(S), 1.0, atol=1e-9)
    # all distinct
    d = so3.geodesic_distance(torch.from_numpy(S)[:, None], torch.from_numpy(S)[None])
    assert (d + torch.eye(len(S), dtype=d.dtype) * 10).min() > 1e-3


@pytest.mark.parametrize("name", ["tet", "cube", "icosa"])
def test_finite_groups_closed(name):
    S = get_shape(name).symmetries
    prod = (S[:, None] @ S[None]).reshape(-1, 1, 9)
    dist = np.abs(prod - S.reshape(1, -1, 9)).max(-1).min(-1)  # each product is some element
    assert dist.max() < 1e-9


def test_continuous_discretisation_steps():
    cone = get_shape("cone").symmetries
    angles = so3.geodesic_distance(torch.from_numpy(cone[:1]), torch.from_numpy(cone)).numpy()
    assert np.isclose(np.sort(angles)[1:3], np.deg2rad(1.0)).all()
    cyl = get_shape("cyl").symmetries
    axis_images = cyl @ np.array([0.0, 0.0, 1.0])
    assert np.isclose(axis_images[:, 2], 1).sum() == 360 and np.isclose(axis_images[:, 2], -1).sum() == 360


def test_symmetry_group_of_generic_points_is_trivial():
    pts = np.random.default_rng(0).normal(size=(7, 3))
    assert symmetry_group_of_points(pts).shape == (1, 3, 3)


@pytest.mark.parametrize("name", SYMSOL_I)
def test_equivalent_rotations_render_identically(renderer, name):
    shape = get_shape(name)
    R, R_other = _rotations(2, seed=10 + len(name))
    eq = shape.equivalent_rotations(R)
    np.testing.assert_allclose(eq[0], R)
    base = renderer.render(shape.mesh, R)
    picks = np.random.default_rng(1).choice(np.arange(1, len(eq)), size=4, replace=False)
    diffs = [_mad(base, renderer.render(shape.mesh, eq[k])) for k in picks]
    other = _mad(base, renderer.render(shape.mesh, R_other))
    assert max(diffs) < 0.1, diffs
    assert other > 20 * max(max(diffs), 0.05), (other, diffs)


def _find_pose(shape, visible: bool, renderer, min_count: int = 1, seed: int = 0):
    """A pose with the mark clearly visible (>= 15 mark pixels) or hidden, and its equivalents."""
    for R in _rotations(400, seed):
        if bool(shape.mark_hidden(R)) == visible:
            continue
        eq = shape.equivalent_rotations(R)
        if len(eq) >= min_count and (not visible or _mark_pixels(renderer.render(shape.mesh, R)) >= 15):
            return R, eq
    raise AssertionError("no such pose found")


def _mark_pixels(img: np.ndarray) -> int:
    img = img.astype(int)
    return int(((img[..., 0] > 2 * img[..., 1] + 20)).sum())


@pytest.mark.parametrize("name, visible_count", [("tetX", 3), ("cylO", 1), ("sphereX", 1)])
def test_marked_shapes(renderer, name, visible_count):
    shape = get_shape(name)
    R_vis, eq_vis = _find_pose(shape, True, renderer)
    R_hid, eq_hid = _find_pose(shape, False, renderer, min_count=visible_count + 1)
    assert len(eq_vis) == visible_count
    assert len(eq_hid) > len(eq_vis)
    np.testing.assert_allclose(eq_vis[0], R_vis)
    np.testing.assert_allclose(eq_hid[0], R_hid)
    img_vis = renderer.render(shape.mesh, R_vis)
    img_hid = renderer.render(shape.mesh, R_hid)
    assert _mark_pixels(img_vis) > 5 and _mark_pixels(img_hid) == 0
    # Every equivalent pose renders the same image; others show the mark somewhere else.
    rng = np.random.default_rng(0)
    for eq, img in ((eq_vis, img_vis), (eq_hid, img_hid)):
        for k in rng.choice(len(eq), size=min(len(eq), 4), replace=False):
            assert _mad(img, renderer.render(shape.mesh, eq[k])) < 0.3
    # A non-equivalent pose (the symmetry moving the mark furthest) changes the mark's pixels.
    centre = shape.mark_points.mean(0)
    k = int(np.argmax(np.linalg.norm(shape.symmetries @ centre - centre, axis=1)))
    assert not shape.stabilizer[k]
    changed = np.abs(img_vis.astype(int) - renderer.render(shape.mesh, R_vis @ shape.symmetries[k])).max(-1) > 40
    assert changed.sum() >= 10


def test_mark_counts_tet_x():
    shape = get_shape("tetX")
    counts = {len(shape.equivalent_rotations(R)) for R in _rotations(300, seed=3)}
    assert counts <= {3, 6, 9} and {3, 6} <= counts


def _write_textured_quad(tmp_path):
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:4] = (255, 0, 0)  # top half red
    tex[4:] = (0, 0, 255)  # bottom half blue
    Image.fromarray(tex).save(tmp_path / "tex.png")
    (tmp_path / "quad.mtl").write_text("newmtl m\nKd 0.5 0.5 0.5\nmap_Kd tex.png\n")
    (tmp_path / "quad.obj").write_text(
        "mtllib quad.mtl\nv -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\nusemtl m\nf 1/1/1 2/2/1 3/3/1 4/4/1\n"
    )
    (tmp_path / "quad.urdf").write_text(
        '<robot name="q"><link name="l"><visual><origin xyz="0 0 0" rpy="0 0 0"/>'
        '<geometry><mesh filename="quad.obj" scale="2 2 2"/></geometry></visual></link></robot>'
    )


def test_textured_obj_and_urdf(tmp_path, renderer):
    _write_textured_quad(tmp_path)
    mesh = load_obj(tmp_path / "quad.obj")
    assert mesh.num_triangles == 2 and mesh.texture is not None
    for path in ("quad.obj", "quad.urdf"):
        shape = mesh_shape(tmp_path / path)
        assert np.isclose(np.linalg.norm(shape.mesh.positions, axis=1).max(), 1.0)
        # Pose: object +y (texture top, v = 1) to camera -y (up), object +z towards the camera.
        R = np.diag([1.0, -1.0, -1.0])
        img = renderer.render(shape.mesh, R).astype(int)
        c = SIZE // 2
        top, bottom = img[c - 15, c], img[c + 15, c]
        assert top[0] > 100 and top[2] < 30, top
        assert bottom[2] > 100 and bottom[0] < 30, bottom


def test_missing_mesh_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.obj"):
        load_obj(tmp_path / "nothing.obj")


def test_pybullet_duck(renderer):
    pybullet_data = pytest.importorskip("pybullet_data")
    from pathlib import Path

    shape = mesh_shape(Path(pybullet_data.getDataPath()) / "duck_vhacd.urdf")
    assert shape.mesh.texture is not None and shape.symmetries.shape == (1, 3, 3)
    img = renderer.render(shape.mesh, np.eye(3))
    assert (img.max(-1) > 0).mean() > 0.1
