"""Grids and quadrature on the sphere S², and the real spherical harmonic transform on them.

**Equiangular grid** (Driscoll & Healy; the grid of Esteves et al.'s spherical CNNs): bandwidth
``b`` gives ``2b x 2b`` points, colatitudes ``beta_j = pi (2j + 1) / (4b)``, ``j = 0 .. 2b-1`` (row
``j``; no point on a pole) and longitudes ``alpha_k = 2 pi k / (2b)``, ``k = 0 .. 2b-1`` (column
``k``); the direction of point ``(j, k)`` is ``(sin b cos a, sin b sin a, cos b)``. A signal on it
is ``(..., 2b, 2b)``, rows by colatitude. Its quadrature weights (:func:`equiangular_weights`)
integrate every band-limited function of degree ``< 2b`` exactly, as a mean over the sphere.

**Gauss-Legendre grid** (:func:`gauss_legendre_grid`): ``n`` Gauss nodes in ``cos(beta)`` times
``2n`` equispaced longitudes, exact for degree ``<= 2n - 1``; the smallest exact rule used to
evaluate a pointwise nonlinearity of a band-limited signal without aliasing.

Spherical harmonics, their basis and layout ``(..., (L+1)**2)`` are those of :mod:`pose_core.wigner`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from pose_core import wigner

__all__ = [
    "equiangular_angles",
    "equiangular_directions",
    "equiangular_weights",
    "equiangular_analysis_matrix",
    "gauss_legendre_grid",
    "rotate_coefficients",
]


def equiangular_angles(bandwidth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Colatitudes ``beta`` ``(2b,)`` and longitudes ``alpha`` ``(2b,)`` (radians, float64) of the
    equiangular grid of bandwidth ``b``."""
    if int(bandwidth) != bandwidth or bandwidth < 1:
        raise ValueError(f"bandwidth must be a positive integer, got {bandwidth!r}")
    b = int(bandwidth)
    j = torch.arange(2 * b, dtype=torch.float64)
    return math.pi * (2 * j + 1) / (4 * b), 2 * math.pi * j / (2 * b)


def equiangular_directions(bandwidth: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unit vectors ``(2b, 2b, 3)`` of the equiangular grid: entry ``[j, k]`` at colatitude
    ``beta_j`` and longitude ``alpha_k``."""
    beta, alpha = equiangular_angles(bandwidth)
    B, A = torch.meshgrid(beta, alpha, indexing="ij")
    return torch.stack((B.sin() * A.cos(), B.sin() * A.sin(), B.cos()), -1).to(dtype)


def equiangular_weights(bandwidth: int) -> torch.Tensor:
    """Row weights ``w_j`` ``(2b,)`` float64 of the equiangular grid, summing to 1: the mean over the
    sphere of ``f`` is ``sum_j w_j * mean_k f[j, k]``, exactly when ``f`` has degree ``< 2b``
    (Driscoll & Healy's weights, normalised)."""
    beta, _ = equiangular_angles(bandwidth)
    b = int(bandwidth)
    k = torch.arange(b, dtype=torch.float64)
    j = torch.arange(2 * b, dtype=torch.float64)
    s = (torch.sin((2 * j[:, None] + 1) * (2 * k[None, :] + 1) * math.pi / (4 * b)) / (2 * k[None, :] + 1)).sum(1)
    w = torch.sin(beta) * s
    return w / w.sum()


@functools.lru_cache(maxsize=16)
def _equiangular_analysis(bandwidth: int, lmax: int) -> torch.Tensor:
    b = int(bandwidth)
    Y = wigner.spherical_harmonics(equiangular_directions(b), lmax)  # (2b, 2b, (L+1)^2)
    w = equiangular_weights(b)[:, None, None] / (2 * b)
    return (Y * w).reshape(4 * b * b, -1)


def equiangular_analysis_matrix(bandwidth: int, lmax: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``A`` ``(4b**2, (L+1)**2)``: the coefficients of a grid signal ``f`` ``(..., 2b, 2b)`` are
    ``f.flatten(-2) @ A`` (``c_lm = mean(f Y_lm)`` by quadrature; exact when ``f`` has degree
    ``<= 2b - 1 - lmax``, a least-squares band-``lmax`` projection otherwise). ``lmax < 2b``."""
    if not 0 <= lmax < 2 * bandwidth:
        raise ValueError(f"lmax must be in [0, 2b) = [0, {2 * bandwidth}), got {lmax}")
    return _equiangular_analysis(int(bandwidth), int(lmax)).to(dtype)


def gauss_legendre_grid(degree: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(Q, 3)`` and weights ``(Q,)`` (summing to 1, the mean over the sphere) of the product
    rule exact for every polynomial of degree ``<= degree``: ``degree // 2 + 1`` Gauss-Legendre nodes in
    ``cos(beta)`` times ``degree + 1`` equispaced longitudes (``Q = (degree // 2 + 1) (degree + 1)``)."""
    if int(degree) != degree or degree < 0:
        raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
    n_b, n_a = int(degree) // 2 + 1, int(degree) + 1
    x, w = np.polynomial.legendre.leggauss(n_b)
    z = torch.from_numpy(x)
    r = (1 - z * z).clamp_min(0).sqrt()
    a = torch.arange(n_a, dtype=torch.float64) * (2 * math.pi / n_a)
    pts = torch.stack((r[:, None] * a.cos()[None], r[:, None] * a.sin()[None], z[:, None].expand(-1, n_a)), -1)
    wts = (torch.from_numpy(w) / 2)[:, None].expand(-1, n_a) / n_a
    return pts.reshape(-1, 3).to(dtype), wts.reshape(-1).to(dtype)


def rotate_coefficients(coeffs: torch.Tensor, R: torch.Tensor, lmax: int) -> torch.Tensor:
    """Coefficients ``(..., (L+1)**2)`` of ``f(R^-1 x)`` (the signal turned by ``R`` ``(3, 3)``):
    block ``l`` becomes ``D_l(R) @ c_l`` (:mod:`pose_core.wigner`)."""
    if coeffs.shape[-1] != wigner.s2_dim(lmax):
        raise ValueError(f"coeffs must have {wigner.s2_dim(lmax)} entries for lmax={lmax}, got {tuple(coeffs.shape)}")
    D = wigner.wigner_D(R.to(coeffs.dtype), lmax)
    return torch.cat([coeffs[..., l * l : (l + 1) ** 2] @ D[l].transpose(-1, -2) for l in range(lmax + 1)], -1)
