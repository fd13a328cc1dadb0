"""Surface sampling: points on the surface, area-uniform face choice, uniform in-triangle, gradients, dtypes; the
batched sampler, the ico-sphere, mesh edges and the uniform Laplacian smoothing loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pose_core.surface import (
    ico_sphere,
    laplacian_smoothing,
    mesh_edges,
    sample_surface,
    sample_surfaces,
    triangle_areas,
)

CHI2_1DOF_P001 = 10.83  # chi-square quantile, 1 degree of freedom, p = 0.001


def _cube(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))  # unit cube centred at the origin, outward faces
    return torch.tensor(np.asarray(box.vertices), dtype=dtype), torch.tensor(np.asarray(box.faces), dtype=torch.long)


def _two_triangles(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangle 0 (area 0.5) in the plane z = 0, triangle 1 (area 1.5) in z = 1."""
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]], dtype=dtype)
    return v, torch.tensor([[0, 1, 2], [3, 4, 5]])


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_triangle_areas(dtype):
    v, f = _two_triangles(dtype)
    a = triangle_areas(v, f)
    assert a.dtype == dtype and a.shape == (2,)
    torch.testing.assert_close(a, torch.tensor([0.5, 1.5], dtype=dtype))
    np.testing.assert_allclose(triangle_areas(v.numpy(), f.numpy()).numpy(), [0.5, 1.5], atol=1e-6)


def test_points_on_cube_surface(dtype):
    v, f = _cube(dtype)
    p, n = sample_surface(v, f, 5000, torch.Generator().manual_seed(0), return_normals=True)
    assert p.shape == (5000, 3) and n.shape == (5000, 3) and p.dtype == dtype and n.dtype == dtype
    a = p.abs().max(dim=1).values
    assert torch.allclose(a, torch.full_like(a, 0.5), atol=1e-6)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(5000, dtype=dtype))
    # the unit normal is the outward axis of the face the point lies on
    k = p.abs().argmax(dim=1)
    expected = torch.zeros_like(p)
    expected[torch.arange(5000), k] = torch.sign(p[torch.arange(5000), k])
    torch.testing.assert_close(n, expected, atol=1e-6, rtol=0)
    # every face gets samples in proportion to its area (all equal here)
    on_face = torch.stack([(k == i) & (torch.sign(p[torch.arange(5000), k]) == s) for i in range(3) for s in (-1, 1)])
    assert (on_face.sum(dim=1) > 5000 / 6 * 0.85).all()


def test_face_choice_is_area_weighted_and_control_fails():
    v, f = _two_triangles()
    n = 40000
    p = sample_surface(v, f, n, torch.Generator().manual_seed(1))
    counts = np.array([(p[:, 2] < 0.5).sum().item(), (p[:, 2] > 0.5).sum().item()])
    probs = np.array([0.25, 0.75])
    assert _chi2(counts, probs) < CHI2_1DOF_P001
    # negative control: choosing faces uniformly (ignoring areas) fails the same check
    uniform = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(1))
    control = np.array([(uniform == 0).sum().item(), (uniform == 1).sum().item()])
    assert _chi2(control, probs) > 100 * CHI2_1DOF_P001


def test_uniform_inside_the_triangle_and_control_fails():
    v, f = _two_triangles()
    n = 40000
    p = sample_surface(v[3:], f[1:] - 3, n, torch.Generator().manual_seed(2))
    centroid = v[3:].mean(dim=0)
    sem = p.std(dim=0) / n**0.5
    assert ((p.mean(dim=0) - centroid).abs() <= 4 * sem + 1e-12).all()
    # the points fill the triangle: quarter sub-triangles (midpoint subdivision) get a quarter each
    a, b, c = v[3], v[4], v[5]
    bary = torch.linalg.lstsq(torch.stack([b - a, c - a], dim=1)[:2], (p - a)[:, :2].T).solution.T  # (n, 2)
    corner_a = (bary.sum(dim=1) < 0.5).double().mean().item()
    assert abs(corner_a - 0.25) < 0.01
    # negative control: naive barycentrics (u = r1, v = (1 - r1) r2) cluster at a vertex and fail the mean check
    r = torch.rand((n, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u, w = r[:, :1], (1 - r[:, :1]) * r[:, 1:]
    naive = u * b + w * c + (1 - u - w) * a
    assert ((naive.mean(dim=0) - centroid).abs() > 4 * sem).any()


def test_gradient_flows_to_vertices():
    v, f = _two_triangles()
    v = v.clone().requires_grad_(True)
    n = 1000
    p = sample_surface(v, f, n, torch.Generator().manual_seed(3))
    p.sum().backward()
    # d(sum of points)/d(vertex) = (sum of its barycentric weights) * (1, 1, 1); the weights sum to n
    g = v.grad
    torch.testing.assert_close(g[:, 0], g[:, 1])
    torch.testing.assert_close(g.sum(dim=0), torch.full((3,), float(n), dtype=torch.float64))
    assert (g[:, 0] > 0).all()

    def fn(x):
        pts, nrm = sample_surface(x, f, 7, torch.Generator().manual_seed(4), return_normals=True)
        return pts, nrm

    x = (v.detach() + 0.1 * torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_generator_determinism_and_numpy_input(dtype):
    v, f = _cube(dtype)
    a = sample_surface(v, f, 100, torch.Generator().manual_seed(7))
    b = sample_surface(v, f, 100, torch.Generator().manual_seed(7))
    c = sample_surface(v, f, 100, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    d = sample_surface(v.numpy().astype(np_dtype), f.numpy(), 100, torch.Generator().manual_seed(7))
    assert d.dtype == dtype
    torch.testing.assert_close(d, a, rtol=0, atol=0)
    assert sample_surface(v, f, 0).shape == (0, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda(dtype):
    v, f = _cube(dtype)
    v = v.cuda().requires_grad_(True)
    p, n = sample_surface(v, f.cuda(), 1000, torch.Generator(device="cuda").manual_seed(0), return_normals=True)
    assert p.device.type == "cuda" and p.dtype == dtype and n.device.type == "cuda"
    assert torch.allclose(p.abs().max(dim=1).values, torch.full((1000,), 0.5, dtype=dtype, device="cuda"), atol=1e-6)
    p.sum().backward()
    assert v.grad is not None and v.grad.device.type == "cuda"
    p2 = sample_surface(v.detach(), f, 10, torch.Generator(device="cuda").manual_seed(0))  # CPU faces are moved
    assert p2.device.type == "cuda"


def test_errors():
    v, f = _two_triangles()
    with pytest.raises(ValueError, match="vertices"):
        sample_surface(v[:, :2], f, 5)
    with pytest.raises(ValueError, match="faces"):
        sample_surface(v, f[:, :2], 5)
    with pytest.raises(ValueError, match="faces"):
        sample_surface(v, f.double(), 5)
    with pytest.raises(ValueError, match="indices"):
        sample_surface(v, f + 1, 5)
    with pytest.raises(ValueError, match="n must"):
        sample_surface(v, f, -1)
    with pytest.raises(ValueError, match="positive"):
        sample_surface(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 5)


# --- sample_surfaces: the batched sampler ------------------------------------------------------------------------


def test_sample_surfaces_single_mesh_is_sample_surface(dtype):
    v, f = _cube(dtype)
    v = v * torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    a = sample_surface(v, f, 500, torch.Generator().manual_seed(7))
    b = sample_surfaces(v[None], f, 500, torch.Generator().manual_seed(7))
    assert b.shape == (1, 500, 3) and b.dtype == dtype
    torch.testing.assert_close(b[0], a, rtol=0, atol=0)  # the same draws, in the same order


def test_sample_surfaces_points_on_each_mesh(dtype):
    v, f = _cube(dtype)
    batch = torch.stack([v, 2 * v, v + torch.tensor([3.0, 0.0, 0.0], dtype=dtype)])  # cube, 2x cube, shifted cube
    p = sample_surfaces(batch, f, 2000, torch.Generator().manual_seed(0))
    assert p.shape == (3, 2000, 3) and p.dtype == dtype
    torch.testing.assert_close(p[0].abs().max(dim=1).values, torch.full((2000,), 0.5, dtype=dtype))
    torch.testing.assert_close(p[1].abs().max(dim=1).values, torch.full((2000,), 1.0, dtype=dtype))
    shifted = p[2] - torch.tensor([3.0, 0.0, 0.0], dtype=dtype)
    torch.testing.assert_close(shifted.abs().max(dim=1).values, torch.full((2000,), 0.5, dtype=dtype))
    # the same statistics as sample_surface per mesh: the mean is the centre, every face gets a sixth
    for b in range(3):
        ref = sample_surface(batch[b], f, 2000, torch.Generator().manual_seed(b + 10))
        sem = ref.std(dim=0) / 2000 ** 0.5
        assert ((p[b].mean(dim=0) - ref.mean(dim=0)).abs() < 5 * 2 ** 0.5 * sem).all()
    axis = p[0].abs().argmax(dim=1)
    k = (2 * axis + (p[0][torch.arange(2000), axis] > 0)).numpy()  # which of the 6 faces
    assert _chi2(np.bincount(k, minlength=6).astype(float), np.full(6, 1 / 6)) < 20.5  # 5 dof, p = 0.001


def test_sample_surfaces_draws_by_each_meshs_own_areas():
    # mesh 0: triangle 0 area 0.5, triangle 1 area 1.5 (probabilities 1/4, 3/4);
    # mesh 1: triangle 0 area 2 (scaled by 2), triangle 1 area 0.015 (scaled by 0.1): 2 / 2.015 and 0.015 / 2.015
    v, f = _two_triangles()
    v1 = v.clone()
    v1[:3] *= 2
    v1[3:] = v[3] + 0.1 * (v[3:] - v[3])
    n = 40000
    p = sample_surfaces(torch.stack([v, v1]), f, n, torch.Generator().manual_seed(1))
    counts = [np.array([(p[b, :, 2] < 0.5).sum().item(), (p[b, :, 2] > 0.5).sum().item()]) for b in range(2)]
    probs = [np.array([0.25, 0.75]), np.array([2.0, 0.015]) / 2.015]
    assert _chi2(counts[0], probs[0]) < CHI2_1DOF_P001
    assert _chi2(counts[1], probs[1]) < CHI2_1DOF_P001
    assert 0 < counts[1][1] < 0.02 * n  # the tiny face still drawn, rarely
    # negative control: mesh 1 drawn by mesh 0's areas (a batch sharing one set of weights) fails
    assert _chi2(counts[1], probs[0]) > 100 * CHI2_1DOF_P001


def test_sample_surfaces_gradient_and_determinism():
    v, f = _two_triangles()
    batch = torch.stack([v, v * 1.5]).requires_grad_(True)
    n = 1000
    p = sample_surfaces(batch, f, n, torch.Generator().manual_seed(3))
    p.sum().backward()
    # d(sum of points) / d(vertex) = its barycentric weights summed, the same for x, y, z; n per mesh
    g = batch.grad
    torch.testing.assert_close(g[..., 0], g[..., 1])
    torch.testing.assert_close(g.sum(dim=1), torch.full((2, 3), float(n), dtype=torch.float64))
    x = batch.detach() + 0.1 * torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda y: sample_surfaces(y, f, 7, torch.Generator().manual_seed(4)),
                                    (x.requires_grad_(True),), eps=1e-6, atol=1e-6)
    a = sample_surfaces(batch.detach(), f, 50, torch.Generator().manual_seed(9))
    b = sample_surfaces(batch.detach(), f, 50, torch.Generator().manual_seed(9))
    c = sample_surfaces(batch.detach(), f, 50, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_surfaces_collapsed_mesh_and_errors():
    v, f = _two_triangles()
    batch = torch.stack([v, torch.zeros_like(v)])  # mesh 1 collapsed to a point: its faces drawn uniformly
    p = sample_surfaces(batch, f, 100, torch.Generator().manual_seed(0))
    assert torch.equal(p[1], torch.zeros(100, 3, dtype=torch.float64)) and (p[0].abs().sum(1) > 0).any()
    with pytest.raises(ValueError, match="vertices"):
        sample_surfaces(v, f, 10)  # (V, 3): not a batch
    with pytest.raises(ValueError, match="vertices"):
        sample_surfaces(v[None, :, :2], f, 10)
    with pytest.raises(ValueError, match="n must"):
        sample_surfaces(v[None], f, 0)
    with pytest.raises(ValueError, match="indices"):
        sample_surfaces(v[None], f + 1, 10)
    with pytest.raises(ValueError, match="non-finite"):
        sample_surfaces(torch.full((1, 6, 3), float("nan"), dtype=torch.float64), f, 10)


# --- ico_sphere and mesh_edges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_ico_sphere(level):
    v, f = ico_sphere(level)
    assert v.dtype == torch.float64 and f.dtype == torch.int64
    assert v.shape == (10 * 4 ** level + 2, 3) and f.shape == (20 * 4 ** level, 3)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(len(v), dtype=torch.float64), rtol=0, atol=1e-12)
    assert len(torch.unique(v.round(decimals=9), dim=0)) == len(v)  # no duplicated vertex
    # outward: every face normal points away from the centre; positive enclosed volume, below the ball's
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    normal = torch.linalg.cross(b - a, c - a)
    assert ((normal * (a + b + c)).sum(dim=1) > 0).all()
    volume = (a * torch.linalg.cross(b, c)).sum() / 6
    assert 0.6 * 4 / 3 * math.pi < volume < 4 / 3 * math.pi
    # closed, consistently wound 2-manifold: every directed edge once, and its reverse once
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert len(torch.unique(directed, dim=0)) == len(directed)
    assert torch.equal(torch.unique(directed, dim=0), torch.unique(directed.flip(1), dim=0))
    # Euler characteristic of a sphere: V - E + F = 2, with E = 3F / 2
    E = len(mesh_edges(f))
    assert E == 3 * len(f) // 2 and len(v) - E + len(f) == 2
    mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0


def test_ico_sphere_levels_refine():
    # each level halves the edges (about); the volume approaches the ball's
    volumes = []
    for level in range(4):
        v, f = ico_sphere(level)
        volumes.append(trimesh.Trimesh(v.numpy(), f.numpy(), process=False).volume)
    assert all(x < y for x, y in zip(volumes, volumes[1:])) and abs(volumes[-1] / (4 / 3 * math.pi) - 1) < 0.01
    for bad in (-1, 8, 1.5, True):
        with pytest.raises(ValueError, match="level"):
            ico_sphere(bad)


def test_mesh_edges():
    _, f = _cube()
    e = mesh_edges(f)
    assert e.shape == (18, 2) and e.dtype == torch.int64  # 12 triangles: 3 * 12 / 2
    assert (e[:, 0] < e[:, 1]).all() and len(torch.unique(e, dim=0)) == 18
    assert mesh_edges(torch.tensor([[0, 1, 2]])).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert mesh_edges(np.array([[0, 1, 2], [2, 1, 3]])).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    with pytest.raises(ValueError, match="faces"):
        mesh_edges(torch.tensor([[0, 1]]))


# --- laplacian_smoothing -----------------------------------------------------------------------------------------


def _flat_grid(n: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n x n`` vertices ``(x, y, 0)``, ``x, y`` in ``0..n-1`` (index ``x * n + y``), each unit square split along
    its diagonal ``(x, y) - (x + 1, y + 1)``."""
    g = torch.arange(n, dtype=dtype)
    v = torch.stack([*torch.meshgrid(g, g, indexing="ij"), torch.zeros(n, n, dtype=dtype)], dim=-1).reshape(-1, 3)
    faces = []
    for x in range(n - 1):
        for y in range(n - 1):
            a, b, c, d = x * n + y, (x + 1) * n + y, (x + 1) * n + y + 1, x * n + y + 1
            faces += [(a, b, c), (a, c, d)]
    return v, torch.tensor(faces)


def test_laplacian_flat_grid_hand_value(dtype):
    # 3 x 3 grid, neighbours of each vertex and |v - mean of neighbours|:
    #   (1,1): (0,1) (2,1) (1,0) (1,2) (0,0) (2,2), mean (1,1) -> 0 (a flat, regular interior vertex)
    #   (0,0): (1,0) (0,1) (1,1), mean (2/3, 2/3) -> 2 sqrt(2) / 3; (2,2) the same
    #   (2,0): (1,0) (2,1), mean (1.5, 0.5) -> sqrt(0.5); (0,2) the same
    #   (1,0): (0,0) (2,0) (1,1) (2,1), mean (1.25, 0.5) -> sqrt(0.3125) = sqrt(5) / 4; (0,1), (2,1), (1,2) the same
    # loss = (4 sqrt(2) / 3 + sqrt(2) + sqrt(5)) / 9 = (7 sqrt(2) / 3 + sqrt(5)) / 9 = 0.61510...
    v, f = _flat_grid(3, dtype)
    expected = (7 * math.sqrt(2) / 3 + math.sqrt(5)) / 9
    loss = laplacian_smoothing(v, f)
    assert loss.shape == () and loss.dtype == dtype
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=dtype))
    # invariant to translation and rotation, linear in scale
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(laplacian_smoothing(v @ rot.T * 2.5 + 7, f), torch.tensor(2.5 * expected, dtype=dtype))
    # a vertex on no edge counts 0 (in the mean too)
    torch.testing.assert_close(laplacian_smoothing(torch.cat([v, torch.ones(1, 3, dtype=dtype)]), f),
                               torch.tensor(expected * 9 / 10, dtype=dtype))
    # interior vertices of a larger flat grid are 0: moving one out of the plane costs exactly its own term and
    # those of its 6 neighbours (each sees it with weight 1 / 6)
    v5, f5 = _flat_grid(5, dtype)
    bumped = v5.clone()
    bumped[2 * 5 + 2, 2] = 0.6  # the centre (2, 2)
    # centre: |(0, 0, 0.6)| = 0.6; each of its 6 neighbours, all interior (in-plane part 0), sees it with weight 1 / 6:
    # |(0, 0, -0.1)| = 0.1; no other vertex has it as a neighbour. Sum of the terms (the mean times 25): + 1.2
    base = laplacian_smoothing(v5, f5)
    diff = (laplacian_smoothing(bumped, f5) - base) * 25
    interior_neighbours = 6  # (1,2) (3,2) (2,1) (2,3) (1,1) (3,3) are all interior in a 5 x 5 grid
    torch.testing.assert_close(diff, torch.tensor(0.6 + interior_neighbours * 0.1, dtype=dtype))


def test_laplacian_batch_equals_single_and_noise_costs(dtype):
    v, f = ico_sphere(2)
    v = (0.5 * v).to(dtype)
    noisy = v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    batch = torch.stack([v, noisy, 3 * v])
    loss = laplacian_smoothing(batch, f)
    assert loss.shape == (3,) and loss.dtype == dtype
    for b in range(3):
        torch.testing.assert_close(loss[b], laplacian_smoothing(batch[b], f))
    # the clean sphere is not 0 (a uniform Laplacian of a curved surface points inward) but noise costs more
    assert 0 < loss[0] < loss[1]
    torch.testing.assert_close(loss[2], 3 * loss[0])
    # differentiable: the gradient at the noisy sphere points back to smoother vertices
    x = noisy.clone().requires_grad_(True)
    laplacian_smoothing(x, f).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert laplacian_smoothing(noisy - 0.01 * x.grad / x.grad.norm(), f) < loss[1]
    with pytest.raises(ValueError, match="vertices"):
        laplacian_smoothing(v[:, :2], f)
