"""S² grids, quadrature and harmonics (pose_core.s2, the high degrees of pose_core.wigner), with controls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import s2, wigner


def _random_rotation(seed: int, dtype=torch.float64) -> torch.Tensor:
    q = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    from pose_core import so3

    return so3.quat_to_matrix(q / q.norm()).to(dtype)


def _gram(points: torch.Tensor, weights: torch.Tensor, lmax: int) -> torch.Tensor:
    Y = wigner.spherical_harmonics(points.reshape(-1, 3), lmax)
    return (Y * weights.reshape(-1, 1)).T @ Y


def test_equiangular_grid_layout():
    d = s2.equiangular_directions(4)
    assert d.shape == (8, 8, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(8, 8, dtype=torch.float64))
    beta, alpha = s2.equiangular_angles(4)
    torch.testing.assert_close(d[3, 2, 2], torch.cos(beta[3]))  # rows by colatitude
    torch.testing.assert_close(torch.atan2(d[3, 2, 1], d[3, 2, 0]), alpha[2])  # columns by longitude
    assert beta.min() > 0 and beta.max() < math.pi  # no point on a pole
    with pytest.raises(ValueError, match="bandwidth"):
        s2.equiangular_angles(0)


@pytest.mark.parametrize("b", [4, 8, 16])
def test_equiangular_weights_integrate_products_exactly(b):
    """Driscoll-Healy weights: mean of Y_l Y_l' exact for l, l' < b (degree < 2b); uniform rows fail."""
    w = s2.equiangular_weights(b)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-14)
    lmax = b - 1
    pts = s2.equiangular_directions(b)
    per_point = (w[:, None] / (2 * b)).expand(2 * b, 2 * b)
    G = _gram(pts, per_point, lmax)
    assert (G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max() < 1e-12
    naive = torch.full_like(per_point, 1 / (4 * b * b))  # negative control: unweighted mean
    assert (_gram(pts, naive, lmax) - torch.eye(G.shape[0], dtype=G.dtype)).abs().max() > 1e-2


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_equiangular_analysis_round_trip(dtype, tol):
    b, lmax = 8, 7
    c = torch.randn(wigner.s2_dim(lmax), dtype=torch.float64)
    f = wigner.spherical_harmonics(s2.equiangular_directions(b), lmax) @ c  # (2b, 2b)
    out = f.to(dtype).reshape(-1) @ s2.equiangular_analysis_matrix(b, lmax, dtype)
    assert out.dtype == dtype
    assert (out.double() - c).abs().max() < tol * c.abs().max()
    with pytest.raises(ValueError, match="lmax"):
        s2.equiangular_analysis_matrix(b, 2 * b)


@pytest.mark.parametrize("degree", [0, 5, 12, 30])
def test_gauss_legendre_grid_exact_to_its_degree(degree):
    pts, w = s2.gauss_legendre_grid(degree)
    assert pts.shape[0] == (degree // 2 + 1) * (degree + 1) and w.sum().item() == pytest.approx(1.0, abs=1e-13)
    lmax = degree // 2
    G = _gram(pts, w, lmax)
    assert (G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max() < 1e-12
    if degree >= 4:  # negative control: degree + 2 exceeds the rule, the Gram matrix is off
        G2 = _gram(pts, w, lmax + 1)
        assert (G2 - torch.eye(G2.shape[0], dtype=G2.dtype)).abs().max() > 1e-3


@pytest.mark.parametrize("lmax", [15, 31])
def test_high_degree_harmonics_orthonormal_and_equivariant(lmax):
    """Degrees above e3nn's 12: orthonormal (component normalisation) and Y(Rx) = D(R) Y(x)."""
    pts, w = s2.gauss_legendre_grid(2 * lmax)
    G = _gram(pts, w, lmax)
    assert (G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max() < 1e-11
    R = _random_rotation(3)
    x = torch.randn(16, 3, dtype=torch.float64)
    Y, YR = wigner.spherical_harmonics(x, lmax), wigner.spherical_harmonics(x @ R.T, lmax)
    D = wigner.wigner_D(R, lmax)
    for l in (0, 5, 12, 13, lmax):
        blk = slice(l * l, (l + 1) ** 2)
        assert (YR[:, blk] - Y[:, blk] @ D[l].T).abs().max() < 1e-10, l
    # negative control: the wrong rotation direction
    l = lmax
    blk = slice(l * l, (l + 1) ** 2)
    assert (YR[:, blk] - Y[:, blk] @ D[l]).abs().max() > 1e-2


def test_high_degree_harmonics_match_scipy():
    """The z-polar real basis against scipy's complex harmonics: sqrt(4 pi) times sqrt(2) Re / Im, |m| > 0."""
    from scipy.special import sph_harm_y

    l = 17
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    theta, phi = np.arccos(x[:, 2]), np.arctan2(x[:, 1], x[:, 0])
    Y = wigner.spherical_harmonics(torch.from_numpy(x), l)[:, l * l:].numpy()  # (6, 2l+1), m = -l..l
    for m in (0, 1, 4, 17):
        ref = np.sqrt(4 * np.pi) * sph_harm_y(l, m, theta, phi)
        if m == 0:
            np.testing.assert_allclose(np.abs(Y[:, l]), np.abs(ref.real), atol=1e-10)
        else:  # up to the Condon-Shortley sign (-1)^m, the same for every point
            np.testing.assert_allclose(np.abs(Y[:, l + m]), np.sqrt(2) * np.abs(ref.real), atol=1e-10)
            np.testing.assert_allclose(np.abs(Y[:, l - m]), np.sqrt(2) * np.abs(ref.imag), atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-11)])
def test_rotate_coefficients_turns_the_signal(dtype, tol):
    lmax = 14
    c = torch.randn(3, wigner.s2_dim(lmax), dtype=torch.float64)
    R = _random_rotation(5)
    x = torch.randn(20, 3, dtype=torch.float64)
    rotated = s2.rotate_coefficients(c.to(dtype), R.to(dtype), lmax).double()
    # f'(x) = f(R^-1 x): evaluate f' at x and f at R^T x
    lhs = rotated @ wigner.spherical_harmonics(x, lmax).T
    rhs = c @ wigner.spherical_harmonics(x @ R, lmax).T
    assert (lhs - rhs).abs().max() < tol * rhs.abs().max()
    wrong = c @ wigner.spherical_harmonics(x @ R.T, lmax).T  # control: f(R x)
    assert (lhs - wrong).abs().max() > 1e-2 * rhs.abs().max()
    with pytest.raises(ValueError, match="entries"):
        s2.rotate_coefficients(c[:, :-1], R, lmax)
