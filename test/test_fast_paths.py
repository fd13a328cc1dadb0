"""Fast inference paths against their plain twins: factored grid evaluation, cell quaternions, summaries."""

import math

import pytest
import torch

from pose_core import SO3Distribution, fourier, grids, so3


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
@pytest.mark.parametrize("level", [1, 3])
def test_evaluate_grid_matches_flat_wigner_matrix(dtype, tol, level):
    coeffs = torch.randn(3, 455, generator=torch.Generator().manual_seed(level), dtype=dtype)
    expected = coeffs @ fourier.grid_flat_wigner(level, 6, dtype).T
    got = fourier.evaluate_grid(coeffs, level, 6)
    assert got.shape == (3, grids.num_cells(level))
    torch.testing.assert_close(got, expected, atol=tol * expected.abs().max().item(), rtol=0)


def test_evaluate_grid_rejects_bad_shape():
    with pytest.raises(ValueError, match="coeffs must have shape"):
        fourier.evaluate_grid(torch.zeros(2, 10), 2, 6)


@pytest.mark.parametrize("level", [2, 5])
def test_cell_quaternions_are_the_cell_rotations(level):
    index = torch.randint(0, grids.num_cells(level), (4, 7), generator=torch.Generator().manual_seed(0))
    q = grids.cell_quaternions(level, index, dtype=torch.float64)
    assert q.shape == (4, 7, 4) and bool((q[..., 3] >= 0).all())
    R = grids.cell_rotations(level, index, dtype=torch.float64)
    torch.testing.assert_close(so3.quat_to_matrix(q), R, atol=1e-12, rtol=0)


def _naive_covariance_and_modes(dist: SO3Distribution, k: int, radius: float):
    """Plain matrix versions (the code before the quaternion paths), for comparison."""
    center = dist.mode()
    R = dist.cell_rotations()  # (B, C, 3, 3)
    p = dist.log_mass.exp()
    omega = so3.matrix_to_rotvec(R @ center[:, None].transpose(-1, -2))
    second = torch.einsum("bc,bci,bcj->bij", p, omega, omega)
    cell_var = torch.tensor([grids.resolution(lv) ** 2 / 12 for lv in range(dist.finest_level + 1)], dtype=p.dtype)
    cov = second + (p * cell_var[dist.cell_level]).sum(1)[:, None, None] * torch.eye(3, dtype=p.dtype)
    density = dist.cell_log_density()
    free = torch.isfinite(density)
    masses = []
    for _ in range(k):
        d = torch.where(free, density, torch.full_like(density, -math.inf))
        best = d.argmax(dim=1)
        c = R[torch.arange(dist.batch_size), best]
        near = (so3.geodesic_distance(c[:, None], R) <= radius) & free
        masses.append((p * near).sum(1))
        free = free & ~near
    return cov, torch.stack(masses, dim=1)


def test_covariance_and_top_modes_match_matrix_versions():
    coeffs = 3 * torch.randn(2, 455, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dist = SO3Distribution.from_fourier(coeffs, 6, target_level=4, top_k=16)
    cov, masses = _naive_covariance_and_modes(dist, 3, math.radians(20))
    torch.testing.assert_close(dist.covariance(), (cov + cov.transpose(-1, -2)) / 2, atol=1e-9, rtol=1e-7)
    _, got = dist.top_modes(k=3, radius=math.radians(20))
    torch.testing.assert_close(got, masses, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-3)])
def test_mode_cell_densities_are_log_prob_at_their_centres(dtype, tol):
    """pose_estimate reads the modes' log-densities from their cells instead of evaluating log_prob."""
    coeffs = 3 * torch.randn(3, 455, generator=torch.Generator().manual_seed(4), dtype=dtype)
    dist = SO3Distribution.from_fourier(coeffs, 6, target_level=5)
    cells, mass = dist.top_mode_cells(k=4, radius=math.radians(10))
    assert cells.shape == mass.shape == (3, 4) and bool((cells[:, :2] >= 0).all())
    rots = dist.rotations_at(cells.clamp_min(0))  # (3, 4, 3, 3)
    found = cells >= 0
    from_cells = dist.cell_log_density().gather(1, cells.clamp_min(0))[found]
    exact = dist.log_prob(rots)[found]
    torch.testing.assert_close(from_cells, exact, atol=tol * exact.abs().max().item(), rtol=0)
    r2, m2 = dist.top_modes(k=4, radius=math.radians(10))
    torch.testing.assert_close(r2[found], rots[found])
    torch.testing.assert_close(m2, mass)
    torch.testing.assert_close(dist.rotations_at(cells[:, 0]), dist.mode())  # the first mode is the mode


def test_top_mode_cells_marks_missing_modes():
    logits = torch.full((1, grids.num_cells(0)), float("-inf"))
    logits[0, 5] = 0.0  # all the mass in one cell
    dist = SO3Distribution.from_grid_logits(logits, level=0)
    cells, mass = dist.top_mode_cells(k=3)
    assert cells[0, 0] >= 0 and bool((cells[0, 1:] == -1).all()) and bool((mass[0, 1:] == 0).all())
    assert int(cells[0, 0]) == 5 and float(mass[0, 0]) == pytest.approx(1.0)
    rots, _ = dist.top_modes(k=3)
    torch.testing.assert_close(rots[0, 1:], torch.eye(3).expand(2, 3, 3))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("level", [2, 4])
def test_per_row_cells_and_children_match_the_flat_basis(dtype, tol, level):
    """evaluate_cells (per-row cells) and evaluate_children against the plain flat Wigner-D product."""
    gen = torch.Generator().manual_seed(level)
    coeffs = torch.randn(3, 455, generator=gen, dtype=dtype)
    cells = torch.randint(0, grids.num_cells(level + 1), (3, 50), generator=gen)
    plain = torch.einsum("bd,bmd->bm", coeffs, fourier.cell_flat_wigner(level + 1, cells, 6, dtype))
    scale = plain.abs().max().item()
    torch.testing.assert_close(fourier.evaluate_cells(coeffs, level + 1, cells, 6), plain, atol=tol * scale, rtol=0)
    parents = torch.randint(0, grids.num_cells(level), (3, 7), generator=gen)
    children = grids.children(parents, level).reshape(3, 56)
    plain = torch.einsum("bd,bmd->bm", coeffs, fourier.cell_flat_wigner(level + 1, children, 6, dtype))
    got = fourier.evaluate_children(coeffs, level, parents, 6)
    torch.testing.assert_close(got, plain, atol=tol * plain.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="parents must have shape"):
        fourier.evaluate_children(coeffs, level, parents[:2], 6)
