"""Surface sampling: points on the surface, area-uniform face choice, uniform in-triangle, gradients, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from pose_core.surface import sample_surface, triangle_areas

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
