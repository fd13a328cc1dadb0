"""Tests of pose_core.data.render: determinism, framing, intrinsics and the camera convention."""

import math
import pickle

import numpy as np
import pytest
import torch

from pose_core import so3
from pose_core.data import get_shape
from pose_core.data.render import Camera, Mesh, Occluder, Renderer
from pose_core.data.shapes import _convex_polyhedron_faces, _cube_vertices

SIZE = 96
RED = (1.0, 0.0, 0.0)
GREY = (0.6, 0.6, 0.6)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(Camera(SIZE, SIZE))


@pytest.fixture(scope="module")
def cube_px() -> Mesh:
    """Grey cube whose +x face (object frame) is red."""
    v = _cube_vertices()
    f = _convex_polyhedron_faces(v)
    normal_x = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])[:, 0]
    cols = np.where((normal_x > 1e-6)[:, None], RED, GREY)
    return Mesh.from_indexed(v, f, cols, per_face=True)


def _rotation_taking(a, b) -> np.ndarray:
    """Shortest rotation (3, 3) taking unit vector a to direction b."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    axis = np.cross(a, b)
    angle = math.atan2(np.linalg.norm(axis), a @ b)
    omega = torch.tensor(axis / np.linalg.norm(axis) * angle)
    return so3.rotvec_to_matrix(omega).numpy()


def _random_rotation(seed: int) -> np.ndarray:
    return so3.random_rotations(1, torch.Generator().manual_seed(seed), dtype=torch.float64)[0].numpy()


def _red_mask(img: np.ndarray) -> np.ndarray:
    img = img.astype(int)
    return (img[..., 0] > 60) & (img[..., 1] < 20) & (img[..., 2] < 20)


def test_same_pose_same_pixels(renderer, cube_px):
    R = _random_rotation(0)
    a = renderer.render(cube_px, R)
    b = renderer.render(cube_px, torch.from_numpy(R))  # torch input too
    fresh = Renderer(Camera(SIZE, SIZE)).render(cube_px, R)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, fresh)


def test_different_pose_different_image(renderer, cube_px):
    a = renderer.render(cube_px, _random_rotation(1))
    b = renderer.render(cube_px, _random_rotation(2))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2.0


def test_object_centred_and_intrinsics(renderer, cube_px):
    cam = renderer.camera
    img = renderer.render(cube_px, np.eye(3))
    mask = img.max(-1) > 0
    rows, cols = np.nonzero(mask)
    c = (SIZE - 1) / 2
    assert abs(rows.mean() - c) < 0.5 and abs(cols.mean() - c) < 0.5
    np.testing.assert_allclose(cam.project(np.array([0.0, 0.0, cam.distance])), [c, c])
    # The silhouette's bounding box is that of the projected vertices (pinhole K), to a pixel.
    R = _random_rotation(3)
    img = renderer.render(cube_px, R)
    rows, cols = np.nonzero(img.max(-1) > 40)
    uv = cam.project(_cube_vertices() @ R.T + cam.translation)
    assert abs(cols.min() - uv[:, 0].min()) < 1.0 and abs(cols.max() - uv[:, 0].max()) < 1.0
    assert abs(rows.min() - uv[:, 1].min()) < 1.0 and abs(rows.max() - uv[:, 1].max()) < 1.0


@pytest.mark.parametrize(
    "direction, axis, side",
    [((1, 0, -1), 1, "high"), ((-1, 0, -1), 1, "low"), ((0, 1, -1), 0, "high"), ((0, -1, -1), 0, "low")],
)
def test_camera_convention(renderer, cube_px, direction, axis, side):
    """Object +x turned towards camera +x (right) / +y (down): the red face is in that image half."""
    R = _rotation_taking((1, 0, 0), direction)
    red = _red_mask(renderer.render(cube_px, R))
    assert red.sum() > 50
    centre = np.nonzero(red)[axis].mean()  # axis 0: rows (down = +y), 1: columns (right = +x)
    assert (centre > SIZE / 2 + 10) if side == "high" else (centre < SIZE / 2 - 10)


def test_background_and_occluders(renderer, cube_px):
    R = _random_rotation(4)
    plain = renderer.render(cube_px, R)
    bg = np.zeros((SIZE, SIZE, 3), np.uint8)
    bg[..., 2] = 200
    with_bg = renderer.render(cube_px, R, background=bg)
    empty = plain.max(-1) == 0
    assert (with_bg[empty] == [0, 0, 200]).all()
    inside = plain.max(-1) > 0
    full = inside.copy()
    full[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    np.testing.assert_array_equal(with_bg[full], plain[full])  # interior pixels untouched
    colour = renderer.render(cube_px, R, background=(0.0, 1.0, 0.0))
    assert (colour[empty] == [0, 255, 0]).all()
    occ = Occluder(center=(0.0, 0.0, 2.0), half_size=(0.2, 0.2), color=(0.0, 0.0, 1.0))
    occluded = renderer.render(cube_px, R, occluders=[occ])
    c = SIZE // 2
    assert (occluded[c - 2 : c + 3, c - 2 : c + 3] == [0, 0, 255]).all()
    assert np.array_equal(occluded, renderer.render(cube_px, R, occluders=[occ]))


def test_pickled_renderer_renders_the_same(renderer, cube_px):
    R = _random_rotation(5)
    clone = pickle.loads(pickle.dumps(renderer))
    np.testing.assert_array_equal(clone.render(cube_px, R), renderer.render(cube_px, R))


def test_bad_input(renderer, cube_px):
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        renderer.render(cube_px, np.eye(4))
    with pytest.raises(ValueError):
        renderer.render(cube_px, np.eye(3), background=np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        Mesh(np.zeros((4, 3)), np.zeros((4, 3)), (1.0, 1.0, 1.0))


def test_two_renderers_in_one_process_each_render_their_own_view():
    """Each Renderer makes its own GL context current: a second one (another camera) created in the
    same process must not change what the first one draws (it used to, by up to 216/255 a pixel)."""
    mesh = get_shape("cube").mesh
    R = so3.random_rotations(1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)[0].numpy()
    first = Renderer(camera=Camera(width=64, height=64))
    alone = first.render(mesh, R)
    second = Renderer(camera=Camera(width=128, height=96))
    other = second.render(mesh, R)
    assert other.shape == (96, 128, 3)
    np.testing.assert_array_equal(first.render(mesh, R), alone)
    np.testing.assert_array_equal(second.render(mesh, R), other)
    first.close()
    second.close()


def _unit_sphere_mesh(radius: float) -> Mesh:
    """A fine icosphere-like mesh (the SYMSOL ``sphereX``) scaled to ``radius``."""
    base = get_shape("sphereX").mesh
    return Mesh(base.positions * np.float32(radius), base.normals, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("t", [(0.0, 0.0, 0.3), (0.21, -0.13, 0.6), (-0.55, 0.4, 1.5)])
def test_translation_projects_the_centroid_where_K_says(t):
    """``translation=t`` puts the object origin at ``t``: a small sphere's silhouette centre is ``K @ t``, also
    off-axis with a shifted principal point and fx != fy; a 15 cm object renders whole from 0.3 to 1.5 m
    with near 0.05 and far 10 (metres)."""
    cam = Camera(160, 120, focal=150.0, near=0.05, distance=1.0, far=10.0)
    K = np.array([[150.0, 0.0, 83.0], [0.0, 140.0, 57.5], [0.0, 0.0, 1.0]])
    r = Renderer(cam, samples=0)
    t = np.asarray(t)
    small = r.render(_unit_sphere_mesh(0.01), np.eye(3), intrinsics=K, translation=t).max(-1) > 0
    ys, xs = np.nonzero(small)
    uvw = K @ t
    assert len(xs) > 2
    assert abs(xs.mean() - uvw[0] / uvw[2]) < 0.5 and abs(ys.mean() - uvw[1] / uvw[2]) < 0.5
    # a 15 cm cube centred on the axis at that depth: whole (not clipped by near / far), as big as K says
    cube = get_shape("cube").mesh
    cube = Mesh(cube.positions * np.float32(0.075), cube.normals, cube.colors)
    z = float(t[2])
    mask = r.render(cube, np.eye(3), translation=(0.0, 0.0, z)).max(-1) > 0
    side = 0.15 / np.sqrt(3)  # the cube of bounding radius 0.075
    front = 150.0 * side / (z - side / 2)  # its front face, nearest the camera, px
    rows, cols = np.nonzero(mask)
    assert abs((cols.max() - cols.min() + 1) - min(front, 160)) <= 1.5
    # negative control: the same render with the default on-axis distance is elsewhere
    moved = r.render(_unit_sphere_mesh(0.01), np.eye(3), intrinsics=K, distance=z).max(-1) > 0
    if abs(t[0]) > 0:
        assert not (moved & small).any()


def test_translation_is_checked():
    r = Renderer(Camera(32, 32, near=0.05, distance=1.0, far=10.0), samples=0)
    mesh = get_shape("cube").mesh
    with pytest.raises(ValueError, match="not both"):
        r.render(mesh, np.eye(3), translation=(0.0, 0.0, 1.0), distance=1.0)
    with pytest.raises(ValueError, match="not both"):
        r.render_layer(mesh, np.eye(3), translation=(0.0, 0.0, 1.0), distance=1.0)
    with pytest.raises(ValueError, match="near"):
        r.render(mesh, np.eye(3), translation=(0.0, 0.0, 50.0))
    with pytest.raises(ValueError, match="near"):
        r.render_layer(mesh, np.eye(3), translation=(0.0, 0.0, 0.01))
    with pytest.raises(ValueError, match="3 finite"):
        r.render(mesh, np.eye(3), translation=(0.0, np.nan, 1.0))
    layer = r.render_layer(mesh, np.eye(3), translation=(0.0, 0.0, 8.0))
    assert layer.shape == (32, 32, 4) and 0 < layer[..., 3].sum() < 32 * 32
