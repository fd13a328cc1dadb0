"""Tests of pose_core.data.sphere_projection: analytic spheres and cubes, hulls, equivariance, depth images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pose_core import s2
from pose_core.data.sphere_projection import (
    SIGNAL_CHANNELS,
    depth_points,
    depth_to_mesh,
    project_depth,
    project_mesh,
    render_depth,
)

B = 16
SPHERE = trimesh.creation.icosphere(subdivisions=4)
CUBE = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
K = np.array([[200.0, 0.0, 32.0], [0.0, 200.0, 32.0], [0.0, 0.0, 1.0]])


def _rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _lumpy_mesh() -> trimesh.Trimesh:
    """A generic (asymmetric, non-convex) closed mesh: a randomly bumped icosphere, off-centre."""
    rng = np.random.default_rng(0)
    m = trimesh.creation.icosphere(subdivisions=3)
    radius = 1 + 0.3 * np.sin(3 * m.vertices[:, 0]) * np.cos(2 * m.vertices[:, 1]) + 0.05 * rng.random(len(m.vertices))
    return trimesh.Trimesh(m.vertices * radius[:, None] * [1.0, 0.7, 0.5] + [0.3, -0.2, 0.1], m.faces, process=False)


def test_channels_and_shape():
    s = project_mesh(SPHERE.vertices, SPHERE.faces, B)
    assert SIGNAL_CHANNELS == ("distance", "cos", "sin", "hull_distance", "hull_cos", "hull_sin")
    assert s.shape == (6, 2 * B, 2 * B) and s.dtype == torch.float32


def test_sphere_not_normalized():
    s = project_mesh(SPHERE.vertices * 0.5, SPHERE.faces, B, normalize=False).numpy()
    np.testing.assert_allclose(s[0], 0.5, atol=2e-3)  # tessellation: faces lie inside the sphere
    assert np.all(s[0] >= 0.5 - 1e-6)
    np.testing.assert_allclose(s[1], 1.0, atol=2e-3)
    np.testing.assert_allclose(s[1] ** 2 + s[2] ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(s[3:], s[:3], atol=1e-6)  # convex: hull == shape
    # normalised, the same sphere touches the unit sphere: distance ~ 0
    n = project_mesh(SPHERE.vertices * 0.5, SPHERE.faces, B).numpy()
    np.testing.assert_allclose(n[0], 0.0, atol=4e-3)


def test_normalized_cube_is_analytic():
    # centred cube of half-side 0.5 scaled by 1 / (sqrt(3)/2): half-side h = 1/sqrt(3). The ray from
    # x towards the centre meets the face of the largest |x_i| at radius h / max|x_i|, at cos = max|x_i|.
    s = project_mesh(CUBE.vertices + [5.0, -2.0, 1.0], CUBE.faces, B).numpy()
    x = s2.equiangular_directions(B).numpy()
    m = np.abs(x).max(-1)
    np.testing.assert_allclose(s[0], 1 - (1 / math.sqrt(3)) / m, atol=1e-6)
    np.testing.assert_allclose(s[1], m, atol=1e-6)
    np.testing.assert_allclose(s[2], np.sqrt(1 - m**2), atol=1e-6)
    np.testing.assert_allclose(s[3:], s[:3], atol=1e-6)


def test_hull_differs_for_non_convex_shape():
    a = trimesh.creation.box(extents=(0.4, 1.0, 1.0))
    b = a.copy()
    a.apply_translation([-0.6, 0, 0])
    b.apply_translation([0.6, 0, 0])
    two = trimesh.util.concatenate([a, b])
    s = project_mesh(two.vertices, two.faces, B).numpy()
    x = s2.equiangular_directions(B).numpy()
    gap = (np.abs(x[..., 0]) < 0.05) & (np.abs(x[..., 2]) > 0.7)  # top/bottom over the gap between the boxes
    assert gap.any()
    assert np.all(s[3][gap] < s[0][gap] - 0.1)  # the hull is hit much earlier than the shape
    assert np.abs(s[3:] - s[:3]).max() > 0.5
    assert np.all((s[1] >= 0) & (s[1] <= 1))


def test_miss_gives_distance_two():
    # a small square at z = 0.5 above the centre: only rays from near the north pole hit it
    V = np.array([[-0.2, -0.2, 0.5], [0.2, -0.2, 0.5], [0.2, 0.2, 0.5], [-0.2, 0.2, 0.5]])
    F = np.array([[0, 1, 2], [0, 2, 3]])
    s = project_mesh(V, F, B, center=np.zeros(3), normalize=False).numpy()
    x = s2.equiangular_directions(B).numpy()
    hit = s[1] > 0
    # the ray from x through 0 meets z = 0.5 at distance 1 - 0.5 / x_z (beyond the centre where x_z < 0),
    # inside the square where |x_i| <= 0.4 |x_z|; it ends at distance 2
    z = x[..., 2]
    with np.errstate(divide="ignore"):
        expected = 1 - 0.5 / z
    inside = (np.abs(x[..., :2]).max(-1) <= 0.4 * np.abs(z)) & (expected <= 2)
    assert inside[z > 0].any() and inside[z < 0].any()
    np.testing.assert_array_equal(hit, inside)
    np.testing.assert_allclose(s[0][hit], expected[hit], atol=1e-6)
    np.testing.assert_allclose(s[1][hit], np.abs(z[hit]), atol=1e-6)
    assert np.all(s[0][~hit] == 2.0) and np.all(s[1][~hit] == 0) and np.all(s[2][~hit] == 0)
    # 4 coplanar points have no 3D hull; the joggled one is the same flat square (up to ~1e-10)
    assert np.mean((s[4] > 0) == hit) > 0.99
    np.testing.assert_allclose(s[3][hit & (s[4] > 0)], s[0][hit & (s[4] > 0)], atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 13])
def test_grid_rotation_about_z_rolls_columns(k):
    mesh = _lumpy_mesh()
    base = project_mesh(mesh.vertices, mesh.faces, B)
    turned = project_mesh(mesh.vertices, mesh.faces, B, rotation=_rz(2 * math.pi * k / (2 * B)))
    torch.testing.assert_close(turned, torch.roll(base, k, dims=-1), atol=1e-5, rtol=0)
    assert not torch.allclose(turned, base, atol=1e-2)  # the signal does change


def test_non_grid_rotation_is_not_a_roll():
    mesh = _lumpy_mesh()
    base = project_mesh(mesh.vertices, mesh.faces, B)
    for R in (_rz(2 * math.pi * 0.5 / (2 * B)), trimesh.transformations.rotation_matrix(0.3, [1, 0, 0])[:3, :3]):
        turned = project_mesh(mesh.vertices, mesh.faces, B, rotation=R)
        errors = [(turned - torch.roll(base, k, dims=-1)).abs().max().item() for k in range(2 * B)]
        assert min(errors) > 1e-2


def test_default_centre_is_the_objects_own():
    # moving the mesh does not change its signal; an explicit other centre does
    mesh = _lumpy_mesh()
    a = project_mesh(mesh.vertices, mesh.faces, B)
    b = project_mesh(mesh.vertices + [10.0, 3.0, -2.0], mesh.faces, B)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    c = project_mesh(mesh.vertices, mesh.faces, B, center=mesh.vertices.mean(0) + 0.2)
    assert (a - c).abs().max() > 0.05


def test_input_types_and_errors():
    a = project_mesh(torch.tensor(CUBE.vertices, dtype=torch.float32), torch.tensor(CUBE.faces), 4)
    b = project_mesh(CUBE.vertices, CUBE.faces, 4)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="vertices must have shape"):
        project_mesh(CUBE.vertices[:, :2], CUBE.faces, 4)
    with pytest.raises(ValueError, match="integer"):
        project_mesh(CUBE.vertices, CUBE.faces.astype(float), 4)
    with pytest.raises(ValueError, match="rotation"):
        project_mesh(CUBE.vertices, CUBE.faces, 4, rotation=np.eye(3) * 2)
    with pytest.raises(ValueError, match="bandwidth"):
        project_mesh(CUBE.vertices, CUBE.faces, 0)


# ----------------------------------------------------------------------------- depth


def _sphere_depth(radius: float = 0.1, distance: float = 0.9, size: int = 65) -> np.ndarray:
    c = (size - 1) / 2
    Kc = np.array([[200.0, 0.0, c], [0.0, 200.0, c], [0.0, 0.0, 1.0]])
    return render_depth(SPHERE.vertices * radius, SPHERE.faces, Kc, np.eye(3), [0, 0, distance], size, size), Kc


def test_render_depth_of_sphere():
    depth, _ = _sphere_depth(0.1, 0.9, 65)
    assert depth.shape == (65, 65) and depth.dtype == np.float32
    assert depth[32, 32] == pytest.approx(0.8, abs=1e-4)
    assert depth[0, 0] == 0 and depth[0, -1] == 0 and depth[-1, 0] == 0 and depth[-1, -1] == 0
    valid = depth > 0
    assert np.all(depth[valid] >= 0.8 - 1e-4) and np.all(depth[valid] <= 0.9)
    # the silhouette radius, pixels: f * r / sqrt(d^2 - r^2)
    radius_px = 200 * 0.1 / math.sqrt(0.9**2 - 0.1**2)
    assert valid.sum() == pytest.approx(math.pi * radius_px**2, rel=0.05)


def test_render_depth_pose():
    # the cube turned 45 degrees about the optical axis: its nearest face is still at t_z - 0.5
    depth = render_depth(CUBE.vertices, CUBE.faces, K, _rz(math.pi / 4), [0.0, 0.0, 3.0], 64, 64)
    assert depth[32, 32] == pytest.approx(2.5, abs=1e-6)
    # shifted right by 1 m: the centre of the image sees nothing, the object appears at u ~ 32 + 200/2.5 * 1
    depth = render_depth(CUBE.vertices, CUBE.faces, K, np.eye(3), [0.1, 0.0, 3.0], 64, 64)
    assert depth[32, 32 + int(200 * 0.1 / 2.5)] == pytest.approx(2.5, abs=1e-6)


def test_depth_to_mesh_drops_discontinuities():
    depth = np.full((6, 8), 1.0)
    depth[:, 4:] = 2.0  # a step
    V, F = depth_to_mesh(depth, K)
    assert V.shape == (48, 3) and F.shape[1] == 3
    z = V[:, 2]
    assert np.all(np.ptp(z[F], axis=1) == 0)  # no triangle across the step
    assert len(F) == 2 * 5 * 3 + 2 * 5 * 3  # two triangles per 2x2 block on each side (3 + 3 block columns)
    # without the jump test, the blocks across the step are kept
    _, F_all = depth_to_mesh(depth, K, max_jump=10.0)
    assert len(F_all) == 2 * 5 * 7
    # fronto-parallel triangles face the camera
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    assert np.all(n[:, 2] < 0)
    # back-projection through K
    np.testing.assert_allclose(V[0], [(0 - 32) / 200, (0 - 32) / 200, 1.0])


def test_depth_to_mesh_invalid_pixels():
    depth = np.ones((4, 4))
    depth[1, 1] = np.nan
    depth[2, 2] = 0.0
    depth[0, 3] = np.inf
    V, F = depth_to_mesh(depth, K)
    assert len(V) == 13
    assert np.isfinite(V).all()
    # a triangle survives only where its three pixels are valid
    ok = np.isfinite(depth) & (depth > 0)
    expected = 0
    for v in range(3):
        for u in range(3):
            expected += ok[v, u] and ok[v + 1, u] and ok[v, u + 1]
            expected += ok[v, u + 1] and ok[v + 1, u] and ok[v + 1, u + 1]
    assert len(F) == expected


def test_project_depth_of_sphere():
    depth, Kc = _sphere_depth(0.1, 0.9, 65)
    s = project_depth(depth, Kc, B).numpy()
    assert s.shape == (6, 2 * B, 2 * B)
    x = s2.equiangular_directions(B).numpy()
    front = x[..., 2] < -0.8  # directions towards the camera (camera frame z forward)
    hit = s[1] > 0
    assert hit[front].all()
    d = s[0][front]
    assert d.max() - d.min() < 0.1  # roughly constant over the visible cap's middle
    assert np.all(s[1][front] > 0.8)  # seen nearly head-on


def test_project_depth_matches_project_mesh_of_its_mesh():
    depth, Kc = _sphere_depth(0.05, 0.9, 33)
    R = trimesh.transformations.rotation_matrix(0.7, [1, 1, 0])[:3, :3]
    V, F = depth_to_mesh(depth, Kc)
    a = project_depth(depth, Kc, 8, frame_rotation=R)
    b = project_mesh(V, F, 8, rotation=R, center=V.mean(0))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - project_depth(depth, Kc, 8)).abs().max() > 0.1  # the frame rotation matters


def test_depth_points_are_the_frame_of_project_depth():
    """A point-set model sees the crop in the frame the spherical signal is cast in: the depth mesh's vertices."""
    depth, Kc = _sphere_depth(0.05, 0.9, 33)
    R = trimesh.transformations.rotation_matrix(0.7, [1, 1, 0])[:3, :3]
    p = depth_points(depth, Kc, frame_rotation=R)
    assert p.shape == (int((depth > 0).sum()), 3)
    np.testing.assert_allclose(p.mean(0), 0, atol=1e-12)
    assert np.linalg.norm(p, axis=1).max() == pytest.approx(1.0)
    V, F = depth_to_mesh(depth, Kc)
    torch.testing.assert_close(project_mesh(p, F, 8, center=np.zeros(3), normalize=False),
                               project_depth(depth, Kc, 8, frame_rotation=R), atol=1e-5, rtol=0)
    np.testing.assert_allclose(depth_points(depth, Kc) @ R.T, p, atol=1e-12)  # the rotation is applied, once
    with pytest.raises(ValueError, match="valid pixels"):
        depth_points(np.zeros_like(depth), Kc)


def test_project_depth_ignores_nan_and_respects_mask():
    depth, Kc = _sphere_depth(0.05, 0.9, 33)
    assert depth[0].max() == 0 and depth[:, 0].max() == 0
    base = project_depth(depth, Kc, 8)
    noisy = depth.copy()
    noisy[0, :] = np.nan  # background pixels: NaN instead of 0
    noisy[:, 0] = np.inf
    torch.testing.assert_close(project_depth(noisy, Kc, 8), base, atol=0, rtol=0)
    # NaN on object pixels == masking them out
    holed = depth.copy()
    holed[10:14, 10:20] = np.nan
    mask = np.ones(depth.shape, dtype=bool)
    mask[10:14, 10:20] = False
    torch.testing.assert_close(project_depth(holed, Kc, 8), project_depth(depth, Kc, 8, mask=mask), atol=0, rtol=0)
    assert (project_depth(holed, Kc, 8) - base).abs().max() > 1e-3


def test_project_depth_errors():
    depth = np.zeros((32, 32), dtype=np.float32)
    depth[5, 5:14] = 1.0  # 9 pixels
    with pytest.raises(ValueError, match="9 valid pixels"):
        project_depth(depth, K, 4)
    depth[6, 5] = 1.0
    project_depth(depth, K, 4)  # 10 pixels: enough
    with pytest.raises(ValueError, match="depth must be an image"):
        project_depth(np.ones((4, 4, 1)), K, 4)
    with pytest.raises(ValueError, match="floating point metres"):
        project_depth(np.ones((4, 4), dtype=np.uint16), K, 4)
    with pytest.raises(ValueError, match="mask"):
        project_depth(depth, K, 4, mask=np.ones((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="K must"):
        project_depth(depth, np.eye(2), 4)
    with pytest.raises(ValueError, match="mask"):
        project_depth(depth, K, 4, mask=np.ones(depth.shape))
