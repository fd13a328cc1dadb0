"""Tests of pose_core.raycast: spheres, cubes, misses, chunking, max_distance, and trimesh as a reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from trimesh.ray.ray_triangle import ray_triangle_id

from pose_core.raycast import RayHits, cast_rays

# unit cube [-0.5, 0.5]^3, 12 outward-wound triangles
CUBE = trimesh.creation.box(extents=(1.0, 1.0, 1.0))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sphere(subdivisions: int = 4) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)


def test_sphere_from_outside(dtype):
    mesh = _sphere()
    rng = np.random.default_rng(0)
    d = _unit(rng.normal(size=(500, 3)))
    radius = rng.uniform(1.5, 4.0, size=500)
    origins = d * radius[:, None]
    hits = cast_rays(torch.tensor(mesh.vertices, dtype=dtype), mesh.faces, origins.astype(np.float64), -d)
    assert isinstance(hits, RayHits)
    assert hits.distance.dtype == torch.float64  # origins were float64: promoted
    hits = cast_rays(
        torch.tensor(mesh.vertices, dtype=dtype),
        mesh.faces,
        torch.tensor(origins, dtype=dtype),
        torch.tensor(-d, dtype=dtype),
    )
    assert hits.distance.dtype == dtype and hits.normal.dtype == dtype and hits.face.dtype == torch.int64
    assert hits.hit.all()
    # a tessellated unit sphere lies between its inscribed radius and 1
    inner = np.cos(np.max(mesh.edges_unique_length))  # generous: chord-to-face depth is far less
    dist = hits.distance.numpy()
    assert np.all(dist >= radius - 1 - 1e-5) and np.all(dist <= radius - inner + 1e-5)
    np.testing.assert_allclose(dist, radius - 1, atol=5e-3)
    # outward normals from the winding, facing the ray
    n = hits.normal.numpy()
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    assert np.all((n * d).sum(1) > 0.99)
    np.testing.assert_allclose(n, mesh.face_normals[hits.face.numpy()], atol=1e-5)


def test_cube_faces_exact(dtype, tol):
    # rays along the axes and oblique rays onto known faces of the unit cube
    origins = np.array([[3.0, 0.1, 0.2], [0.1, -2.0, 0.3], [0.2, 0.3, 5.0], [2.0, 0.25, 0.0], [-1.0, -0.3, 0.45]])
    target = np.array([[0.5, 0.1, 0.2], [0.1, -0.5, 0.3], [0.2, 0.3, 0.5], [0.5, 0.3, 0.2], [-0.5, 0.1, 0.4]])
    d = target - origins
    hits = cast_rays(
        torch.tensor(CUBE.vertices, dtype=dtype),
        torch.tensor(CUBE.faces),
        torch.tensor(origins, dtype=dtype),
        torch.tensor(d * 3.7, dtype=dtype),  # direction length does not matter: t is a length
    )
    np.testing.assert_allclose(hits.distance.numpy(), np.linalg.norm(d, axis=1), atol=tol * 10)
    expected_normals = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 1], [1, 0, 0], [-1, 0, 0]], dtype=np.float64)
    np.testing.assert_allclose(hits.normal.numpy(), expected_normals, atol=tol)


def test_miss_and_inside(dtype):
    V = torch.tensor(CUBE.vertices, dtype=dtype)
    origins = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.2, 0.3]], dtype=dtype)
    d = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=dtype)
    hits = cast_rays(V, CUBE.faces, origins, d)
    # parallel to the cube and pointing away: miss
    assert hits.hit.tolist() == [False, False, True, True]
    assert torch.isinf(hits.distance[:2]).all() and (hits.face[:2] == -1).all() and (hits.normal[:2] == 0).all()
    # from inside: the far wall, normal pointing along the ray (outward)
    assert hits.distance[2].item() == pytest.approx(0.5, abs=1e-6)
    assert hits.distance[3].item() == pytest.approx(0.4, abs=1e-6)
    np.testing.assert_allclose(hits.normal[2].numpy(), [0, 0, -1], atol=1e-6)
    np.testing.assert_allclose(hits.normal[3].numpy(), [1, 0, 0], atol=1e-6)


def test_origin_on_surface_is_not_a_hit():
    # a ray leaving the +x face outward misses; one leaving it inward hits the -x face at 1
    hits = cast_rays(CUBE.vertices, CUBE.faces, [[0.5, 0.1, 0.1], [0.5, 0.1, 0.1]], [[1.0, 0, 0], [-1.0, 0, 0]])
    assert hits.hit.tolist() == [False, True]
    assert hits.distance[1].item() == pytest.approx(1.0, abs=1e-12)


def test_max_distance():
    origins = np.array([[3.0, 0.0, 0.1]] * 3)
    d = np.array([[-1.0, 0.0, 0.0]] * 3)
    for max_distance, expect in ((2.4, False), (2.5, True), (10.0, True)):
        hits = cast_rays(CUBE.vertices, CUBE.faces, origins, d, max_distance=max_distance)
        assert hits.hit.tolist() == [expect] * 3, max_distance
    # inside the cube: the near wall beyond max_distance means no hit at all, not a farther one
    hits = cast_rays(CUBE.vertices, CUBE.faces, [[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]], max_distance=0.49)
    assert not hits.hit.any()


def test_degenerate_triangles_never_hit():
    V = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    F = np.array([[0, 1, 2], [0, 1, 1], [0, 1, 3]])  # collinear, repeated vertex, real
    hits = cast_rays(V, F, [[0.5, 0.0, 1.0], [0.2, 0.2, 1.0]], [[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    # the first ray passes exactly through the degenerate faces' line, on the real face's edge
    assert hits.face.tolist() == [2, 2]
    np.testing.assert_allclose(hits.normal.numpy(), [[0, 0, 1], [0, 0, 1]])
    only_degenerate = cast_rays(V, F[:2], [[0.5, 0.0, 1.0]], [[0.0, 0.0, -1.0]])
    assert not only_degenerate.hit.any()


def test_shared_edge_is_watertight():
    # rays through the diagonal shared by the two triangles of each cube face still hit
    t = np.linspace(-0.45, 0.45, 19)
    origins = np.stack((t, t, np.full_like(t, 2.0)), 1)
    hits = cast_rays(CUBE.vertices, CUBE.faces, origins, np.tile([0.0, 0.0, -1.0], (len(t), 1)))
    assert hits.hit.all()
    np.testing.assert_allclose(hits.distance.numpy(), 1.5, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, 100, 333])
def test_chunking_does_not_change_results(chunk, dtype):
    mesh = _sphere(3)
    rng = np.random.default_rng(1)
    n = 1000  # not a multiple of any chunk above
    origins = torch.tensor(rng.normal(size=(n, 3)) * 2, dtype=dtype)
    d = torch.tensor(rng.normal(size=(n, 3)), dtype=dtype)
    V = torch.tensor(mesh.vertices, dtype=dtype)
    full = cast_rays(V, mesh.faces, origins, d, chunk=n)
    part = cast_rays(V, mesh.faces, origins, d, chunk=chunk)
    assert full.hit.any() and (~full.hit).any()
    assert torch.equal(full.face, part.face)
    assert torch.equal(full.distance, part.distance)
    assert torch.equal(full.normal, part.normal)


def _reference_first_hits(tri: np.ndarray, origins: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hits by trimesh's own ray/triangle code (no embree, no rtree: every triangle is a candidate)."""

    class AllCandidates:
        bounds = np.concatenate((tri.reshape(-1, 3).min(0), tri.reshape(-1, 3).max(0)))

        @staticmethod
        def intersection(_bounds):
            return range(len(tri))

    index_tri, index_ray, loc = ray_triangle_id(tri, origins, d, tree=AllCandidates(), multiple_hits=True)
    dist = np.full(len(origins), np.inf)
    face = np.full(len(origins), -1)
    t = ((loc - origins[index_ray]) * _unit(d)[index_ray]).sum(1)
    for r, f, tt in zip(index_ray, index_tri, t):
        if tt > 1e-6 and tt < dist[r]:
            dist[r], face[r] = tt, f
    return dist, face


def test_agrees_with_trimesh_on_random_mesh(dtype):
    rng = np.random.default_rng(2)
    V = rng.uniform(-1, 1, size=(200, 3))
    F = np.stack([rng.choice(200, 3, replace=False) for _ in range(300)])
    n = 400
    origins = _unit(rng.normal(size=(n, 3))) * 3
    d = rng.uniform(-0.8, 0.8, size=(n, 3)) - origins  # towards random points inside the mesh's box
    dist, face = _reference_first_hits(V[F], origins, d)
    assert (face >= 0).sum() > n // 2
    hits = cast_rays(torch.tensor(V, dtype=dtype), F, torch.tensor(origins, dtype=dtype), torch.tensor(d, dtype=dtype))
    np.testing.assert_array_equal(hits.face.numpy(), face)
    hit = face >= 0
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(hits.distance.numpy()[hit], dist[hit], atol=atol)
    assert np.isinf(hits.distance.numpy()[~hit]).all()
    # negative control: a slightly moved mesh does not agree
    moved = cast_rays(
        torch.tensor(V + 0.01, dtype=dtype), F, torch.tensor(origins, dtype=dtype), torch.tensor(d, dtype=dtype)
    )
    assert not np.allclose(moved.distance.numpy()[hit], dist[hit], atol=atol)


def test_numpy_and_torch_inputs_agree():
    mesh = _sphere(2)
    rng = np.random.default_rng(3)
    o = rng.normal(size=(50, 3)) * 3
    d = -o + rng.normal(size=(50, 3)) * 0.3
    a = cast_rays(mesh.vertices, mesh.faces, o, d)
    b = cast_rays(torch.tensor(mesh.vertices), torch.tensor(mesh.faces), torch.tensor(o), torch.tensor(d))
    assert a.distance.dtype == torch.float64
    assert torch.equal(a.face, b.face) and torch.equal(a.distance, b.distance)
    c = cast_rays(mesh.vertices.astype(np.float32), mesh.faces, o.astype(np.float32), d.astype(np.float32))
    assert c.distance.dtype == torch.float32
    assert torch.equal(a.face, c.face)


def test_empty_inputs():
    h = cast_rays(CUBE.vertices, CUBE.faces, np.zeros((0, 3)), np.zeros((0, 3)))
    assert h.distance.shape == (0,) and h.normal.shape == (0, 3)
    h = cast_rays(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), [[0.0, 0, 0]], [[1.0, 0, 0]])
    assert not h.hit.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vertices": np.zeros((4, 2))}, "vertices must have shape"),
        ({"faces": np.zeros((2, 3))}, "integer"),
        ({"faces": np.array([[0, 1, 99]])}, "faces index vertices"),
        ({"origins": np.zeros((2, 3))}, "same length"),
        ({"directions": np.zeros((1, 3))}, "non-zero"),
        ({"max_distance": 0.0}, "max_distance"),
        ({"chunk": 0}, "chunk"),
        ({"origins": "nope"}, "numpy array or torch tensor"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"vertices": CUBE.vertices, "faces": CUBE.faces, "origins": [[2.0, 0, 0]], "directions": [[-1.0, 0, 0]]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cast_rays(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    mesh = _sphere(3)
    rng = np.random.default_rng(4)
    o = torch.tensor(rng.normal(size=(3000, 3)) * 3, dtype=torch.float32)
    d = torch.tensor(rng.normal(size=(3000, 3)), dtype=torch.float32)
    V = torch.tensor(mesh.vertices, dtype=torch.float32)
    cpu = cast_rays(V, mesh.faces, o, d)
    gpu = cast_rays(V.cuda(), torch.tensor(mesh.faces).cuda(), o.cuda(), d.cuda())
    assert gpu.distance.device.type == "cuda"
    assert (gpu.face.cpu() == cpu.face).float().mean() > 0.999
    same = gpu.face.cpu() == cpu.face
    torch.testing.assert_close(gpu.distance.cpu()[same], cpu.distance[same], atol=1e-5, rtol=0)
    assert math.isfinite(float(gpu.distance[gpu.hit].max()))


def _sphere_depths(monkeypatch=None) -> np.ndarray:
    """Distances of 64x64 rays from the origin onto a radius-0.1 sphere 0.9 ahead (a symmetric setup:
    the centre column of rays lies in the plane x = 0 through edges and vertices of the icosphere)."""
    mesh = _sphere(4)
    u, v = np.meshgrid(np.arange(64.0), np.arange(64.0))
    d = np.stack(((u - 32) / 200, (v - 32) / 200, np.ones_like(u)), -1).reshape(-1, 3)
    hits = cast_rays(mesh.vertices * 0.1 + [0, 0, 0.9], mesh.faces, np.zeros_like(d), d)
    return hits.distance.numpy()[hits.hit.numpy()]


def test_closed_mesh_has_no_cracks(monkeypatch):
    import pose_core.raycast as raycast

    assert _sphere_depths().max() < 0.9  # every hit on the near half
    # negative control: without the round-off slack, rays through shared edges slip through to the far side
    monkeypatch.setattr(raycast, "_SLACK_ULPS", 0)
    assert _sphere_depths().max() > 0.9
