"""SO3Distribution: normalisation, uniform density, mode/covariance recovery, sampling, entropy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pose_core import SO3Distribution, grids, so3, wigner
from pose_core.layers import so3_quadrature


def _gaussian_logits(level, mode, cov, dtype=torch.float64):
    """Logits of a concentrated Gaussian in the left-perturbation rotation vector about ``mode``."""
    G = grids.so3_healpix_grid(level, dtype=dtype)
    omega = so3.matrix_to_rotvec(G @ mode.T)  # R = exp([omega]x) @ mode
    prec = torch.linalg.inv(cov)
    return -0.5 * torch.einsum("ni,ij,nj->n", omega, prec, omega)[None]


def test_grid_distribution_is_normalised_and_uniform_is_minus_log_pi2(dtype):
    level = 2
    d = SO3Distribution.from_grid_logits(torch.zeros(3, grids.num_cells(level), dtype=dtype), level)
    R = so3.random_rotations(3 * 10, dtype=dtype).reshape(3, 10, 3, 3)
    torch.testing.assert_close(d.log_prob(R), torch.full((3, 10), -math.log(math.pi**2), dtype=dtype))
    torch.testing.assert_close(d.entropy(), torch.full((3,), math.log(math.pi**2), dtype=dtype))
    logits = torch.randn(2, grids.num_cells(level), dtype=dtype)
    d = SO3Distribution.from_grid_logits(logits)
    G = grids.so3_healpix_grid(level, dtype=dtype)
    density = d.log_prob(G.expand(2, -1, -1, -1)).exp()
    mass = density * math.pi**2 / grids.num_cells(level)  # probability x cell volume
    torch.testing.assert_close(mass.sum(1), torch.ones(2, dtype=dtype))
    torch.testing.assert_close(mass, torch.softmax(logits, dim=1))


def test_fourier_distribution_is_normalised(generator):
    coeffs = torch.randn(2, wigner.so3_dim(6), generator=generator, dtype=torch.float64) * 0.08
    d = SO3Distribution.from_fourier(coeffs, 6, base_level=3, target_level=4)
    zero = SO3Distribution.from_fourier(torch.zeros_like(coeffs), 6, base_level=2, target_level=3)
    # A fine product quadrature (exact for band limit 40) integrates the smooth density: E_Haar[p] * pi^2 = 1
    R, w = so3_quadrature(40)
    integral = (d.log_prob(R.expand(2, -1, -1, -1)).exp() * w).sum(1) * math.pi**2
    # the normaliser is a midpoint rule on the adaptive partition: O(h^2), about 1 % for this broad density
    torch.testing.assert_close(integral, torch.ones(2, dtype=torch.float64), atol=0.02, rtol=0)
    uniform = torch.full((2, 4), -math.log(math.pi**2), dtype=torch.float64)
    torch.testing.assert_close(zero.log_prob(R[:4].expand(2, -1, -1, -1)), uniform)
    # the cell masses of the adaptive partition sum to one
    torch.testing.assert_close(d.log_mass.exp().sum(1), torch.ones(2, dtype=torch.float64))


def test_mode_and_covariance_recovery_with_non_identity_mode(dtype):
    """An anisotropic concentrated distribution: recovers the mode and the left-perturbation covariance."""
    mode = so3.rotvec_to_matrix(torch.tensor([0.9, -0.4, 1.3], dtype=torch.float64))
    Q = so3.rotvec_to_matrix(torch.tensor([0.3, 0.5, -0.2], dtype=torch.float64))
    sig = torch.tensor([math.radians(4), math.radians(8), math.radians(14)], dtype=torch.float64)
    cov = Q @ torch.diag(sig**2) @ Q.T
    level = 4
    d = SO3Distribution.from_grid_logits(_gaussian_logits(level, mode, cov).to(dtype), level)
    assert float(so3.geodesic_distance(d.mode()[0].double(), mode)) <= grids.resolution(level)
    est = d.covariance()[0].double()
    torch.testing.assert_close(est, est.T)
    assert torch.linalg.eigvalsh(est).min() > 0
    rel = (est - cov).norm() / cov.norm()
    assert rel < 0.1, (est, cov)
    # the right-perturbation covariance (mode^T cov mode) must NOT match: the convention matters
    wrong = mode.T @ cov @ mode
    assert (wrong - cov).norm() / cov.norm() > 3 * rel


def test_multimodal_covariance_is_large_and_modes_are_found():
    level = 3
    m1 = torch.eye(3, dtype=torch.float64)
    m2 = so3.rotvec_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    cov = torch.eye(3, dtype=torch.float64) * math.radians(5) ** 2
    l1, l2 = _gaussian_logits(level, m1, cov), _gaussian_logits(level, m2, cov)
    d = SO3Distribution.from_grid_logits(torch.logaddexp(l1, l2), level)
    C = d.covariance()[0]
    assert float(torch.linalg.eigvalsh(C).max()) > (math.pi / 4) ** 2 * 0.9  # half the mass 90 deg away
    rots, mass = d.top_modes(k=3, radius=math.radians(25))
    assert mass[0, :2].sum() > 0.97 and mass[0, 2] < 0.03
    found = so3.geodesic_distance(rots[0, :2, None], torch.stack([m1, m2])[None]).min(dim=0).values
    assert (found < grids.resolution(level)).all()


def test_samples_follow_the_distribution(generator):
    """Chi-square goodness of fit of samples binned by coarse cell against the cell masses."""
    coeffs = torch.randn(1, wigner.so3_dim(4), generator=generator, dtype=torch.float64) * 0.5
    d = SO3Distribution.from_fourier(coeffs, 4, base_level=1, target_level=2, top_k=16)
    n = 40_000
    S = d.sample(n, generator=generator)[0]
    assert S.shape == (n, 3, 3)
    # continuous: not grid points
    centres = grids.cell_rotations(2, grids.cell_of(S[:200], 2), dtype=torch.float64)
    assert float(so3.geodesic_distance(S[:200], centres).min()) > 0
    level = 1  # bin by level-1 cell; expected mass = sum over the partition cells inside it
    observed = np.bincount(grids.cell_of(S, level).numpy(), minlength=grids.num_cells(level))
    parent = torch.cat([grids.ancestor(d.cell_index[0][d.cell_level == lv], lv, level) for lv in (1, 2)])
    masses = torch.cat([d.log_mass[0][d.cell_level == lv].exp() for lv in (1, 2)])
    expected = torch.zeros(grids.num_cells(level), dtype=torch.float64).index_add_(0, parent, masses)
    keep = expected.numpy() * n > 5
    want = expected.numpy()[keep]
    chi = stats.chisquare(observed[keep], want * observed[keep].sum() / want.sum())
    assert chi.pvalue > 1e-3
    # and a wrong distribution is rejected by the same test
    flat = np.full(keep.sum(), observed[keep].sum() / keep.sum())
    assert stats.chisquare(observed[keep], flat).pvalue < 1e-6


def test_entropy_of_a_single_cell_and_ordering():
    level = 2
    n = grids.num_cells(level)
    logits = torch.full((1, n), -1e4, dtype=torch.float64)
    logits[0, 17] = 0
    d = SO3Distribution.from_grid_logits(logits)
    torch.testing.assert_close(d.entropy(), torch.tensor([math.log(math.pi**2 / n)], dtype=torch.float64))
    sharp = SO3Distribution.from_grid_logits(torch.randn(1, n, dtype=torch.float64) * 5)
    soft = SO3Distribution.from_grid_logits(torch.randn(1, n, dtype=torch.float64) * 0.1)
    assert sharp.entropy() < soft.entropy() < math.log(math.pi**2)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="grid size"):
        SO3Distribution.from_grid_logits(torch.zeros(1, 100))
    with pytest.raises(ValueError, match="level 1, not 2"):
        SO3Distribution.from_grid_logits(torch.zeros(1, 576), level=2)
    d = SO3Distribution.from_grid_logits(torch.zeros(2, 72))
    with pytest.raises(ValueError, match=r"\(2, 3, 3\)"):
        d.log_prob(torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError):
        d.sample(0)
