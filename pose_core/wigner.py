"""Spherical harmonics and Wigner-D matrices (e3nn's real basis), and the SO(3) Fourier basis.

Basis: e3nn's real spherical harmonics with ``normalization="component"``
(``mean over the sphere of Y_l(x)^2 = 1`` per component) and e3nn's real Wigner-D matrices, which
satisfy ``Y_l(R @ x) = D_l(R) @ Y_l(x)`` for our rotation matrices ``R`` (:mod:`pose_core.so3`).
e3nn stops at degree 12; degrees ``l > 12`` (the spherical CNNs' bandwidths) use the standard real
basis with ``z`` as polar axis, ``m = -l .. l``: ``sqrt(2) N P_l^|m|(cos b) sin(|m| a)`` for
``m < 0``, ``N P_l(cos b)`` for ``m = 0``, ``sqrt(2) N P_l^m(cos b) cos(m a)`` for ``m > 0``, no
Condon-Shortley phase, component-normalised too. Any orthonormal basis of each degree works with
everything here (:func:`wigner_D` is built from the same functions), so the two never meet.

Layouts (``L = lmax``):

* an S² signal is ``(..., (L+1)**2)``: ``f(x) = sum_l c_l . Y_l(x)``, blocks ordered by ``l``;
* an SO(3) signal is ``(..., so3_dim(L))`` with ``so3_dim(L) = sum_l (2l+1)**2`` (455 for
  ``L = 6``): blocks ``F_l`` of shape ``(2l+1, 2l+1)`` flattened row-major, and
  ``f(R) = sum_l sqrt(2l+1) * <F_l, D_l(R)>`` — the functions ``sqrt(2l+1) D_l[m, n]`` are
  orthonormal for the mean over SO(3), so ``mean_R f(R)**2 = |F|**2`` (Parseval).

:func:`wigner_D` builds ``D_l(R)`` from spherical harmonics at fixed points,
``D_l(R) = Y_l(R P) Y_l(P)^+``: no Euler angles (no gimbal singularity), batched, any device.
It agrees with ``e3nn.o3.wigner_D`` at ``e3nn.o3.matrix_to_angles(R)`` (tested).
"""

from __future__ import annotations

import functools
import math

import torch
from e3nn import o3

__all__ = [
    "s2_dim",
    "so3_dim",
    "spherical_harmonics",
    "wigner_D",
    "flat_wigner",
    "fibonacci_sphere",
    "E3NN_LMAX",
]


def s2_dim(lmax: int) -> int:
    """Number of S² Fourier coefficients up to degree ``lmax``: ``(lmax + 1)**2``."""
    return (lmax + 1) ** 2


def so3_dim(lmax: int) -> int:
    """Number of SO(3) Fourier coefficients up to degree ``lmax``: ``sum_l (2l+1)**2``."""
    return sum((2 * l + 1) ** 2 for l in range(lmax + 1))


#: The highest degree e3nn's spherical harmonics provide; above it, :func:`_high_degree_harmonics`.
E3NN_LMAX = 12


def spherical_harmonics(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """Real spherical harmonics ``(..., (lmax+1)**2)`` of directions ``x`` ``(..., 3)`` (normalised first)."""
    if x.shape[-1:] != (3,):
        raise ValueError(f"x must have shape (..., 3), got {tuple(x.shape)}")
    if lmax > E3NN_LMAX:
        low = _e3nn_harmonics(x, E3NN_LMAX)
        return torch.cat((low, _high_degree_harmonics(x, E3NN_LMAX + 1, lmax)), -1)
    return _e3nn_harmonics(x, lmax)


def _high_degree_harmonics(x: torch.Tensor, lmin: int, lmax: int) -> torch.Tensor:
    """Degrees ``lmin .. lmax`` ``(..., (lmax+1)**2 - lmin**2)`` in the z-polar real basis (module docstring),
    from the fully normalised associated Legendre recurrences (stable at any degree used here)."""
    u = x / x.norm(dim=-1, keepdim=True)
    px, py, z = u.unbind(-1)
    # Q_l^m = sqrt((2l+1)(l-m)!/(l+m)!) P_l^m(z) / sin^m;  Y_lm = sqrt(2) Q_l^m (C_m or S_m), where
    # C_m + i S_m = (x + i y)^m = sin^m(b) e^{i m a}
    cos_m, sin_m = torch.ones_like(z), torch.zeros_like(z)
    out: dict[tuple[int, int], torch.Tensor] = {}
    q_mm = torch.ones_like(z)
    for m in range(lmax + 1):
        if m > 0:
            q_mm = q_mm * math.sqrt((2 * m + 1) / (2 * m))
            cos_m, sin_m = cos_m * px - sin_m * py, sin_m * px + cos_m * py
        q_prev2, q_prev = None, q_mm
        for l in range(m, lmax + 1):
            if l == m:
                q = q_mm
            elif l == m + 1:
                q = math.sqrt(2 * m + 3) * z * q_mm
            else:
                a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
                b = math.sqrt((2 * l + 1) * ((l - 1) ** 2 - m * m) / ((2 * l - 3) * (l * l - m * m)))
                q = a * z * q_prev - b * q_prev2
            if l > m:
                q_prev2, q_prev = q_prev, q
            if l >= lmin:
                if m == 0:
                    out[(l, 0)] = q
                else:
                    out[(l, m)] = math.sqrt(2) * q * cos_m
                    out[(l, -m)] = math.sqrt(2) * q * sin_m
    return torch.stack([out[(l, m)] for l in range(lmin, lmax + 1) for m in range(-l, l + 1)], -1)


def _e3nn_harmonics(x: torch.Tensor, lmax: int) -> torch.Tensor:
    if x.dtype == torch.float64 and torch.get_default_dtype() != torch.float64:
        # e3nn builds its constants in the default dtype; keep float64 inputs exact.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return o3.spherical_harmonics(list(range(lmax + 1)), x, normalize=True, normalization="component")
        finally:
            torch.set_default_dtype(previous)
    return o3.spherical_harmonics(list(range(lmax + 1)), x, normalize=True, normalization="component")


def fibonacci_sphere(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` nearly uniform unit vectors ``(n, 3)`` on the sphere (Fibonacci lattice)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = (1 - z * z).sqrt()
    return torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), -1).to(dtype)


@functools.lru_cache(maxsize=8)
def _probe(lmax: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Probe points ``P`` ``(n, 3)`` and, per ``l``, the pseudo-inverse of ``Y_l(P)^T``, float64 CPU."""
    P = fibonacci_sphere(4 * lmax + 2)  # condition number of every Y_l(P) <= 3.6 for lmax <= 6
    Y = spherical_harmonics(P, lmax)  # (n, (L+1)^2)
    pinvs = []
    for l in range(lmax + 1):
        Yl = Y[:, l * l : (l + 1) ** 2]  # (n, 2l+1)
        if torch.linalg.cond(Yl) > 1e3:
            raise RuntimeError(f"ill-conditioned probe set for l={l}")
        pinvs.append(torch.linalg.pinv(Yl))  # (2l+1, n)
    return P, tuple(pinvs)


@functools.lru_cache(maxsize=32)
def _probe_on(lmax: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    P, pinvs = _probe(lmax)
    return P.to(dtype=dtype, device=device), tuple(p.to(dtype=dtype, device=device) for p in pinvs)


def wigner_D(R: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Wigner-D matrices ``[D_0(R), ..., D_lmax(R)]``, each ``(..., 2l+1, 2l+1)``, for ``R`` ``(..., 3, 3)``."""
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    P, pinvs = _probe_on(lmax, R.dtype, str(R.device))
    Y = spherical_harmonics(torch.einsum("...ij,nj->...ni", R, P), lmax)  # (..., n, (L+1)^2)
    # Columns Y_l(R p_j) = D_l(R) Y_l(p_j), so D_l(R) = Y_l(RP) Y_l(P)^+.
    return [Y[..., l * l : (l + 1) ** 2].transpose(-1, -2) @ pinvs[l].T for l in range(lmax + 1)]


def flat_wigner(R: torch.Tensor, lmax: int, chunk: int = 65536) -> torch.Tensor:
    """The SO(3) Fourier basis at ``R`` ``(..., 3, 3)``: ``(..., so3_dim(lmax))``.

    Entry block ``l`` is ``sqrt(2l+1) * D_l(R)`` flattened row-major, so that an SO(3) signal
    ``F`` ``(..., so3_dim)`` evaluates as ``f(R) = F @ flat_wigner(R).T``. Evaluated in chunks of
    ``chunk`` rotations to bound memory.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    batch = R.shape[:-2]
    flat = R.reshape(-1, 3, 3)
    out = torch.empty(flat.shape[0], so3_dim(lmax), dtype=R.dtype, device=R.device)
    P, pinvs = _probe_on(lmax, R.dtype, str(R.device))
    for start in range(0, flat.shape[0], chunk):
        Rc = flat[start : start + chunk]
        Y = spherical_harmonics(torch.einsum("bij,nj->bni", Rc, P), lmax)  # (b, n, (L+1)^2)
        col = 0
        for l in range(lmax + 1):
            d = 2 * l + 1
            D = Y[..., l * l : (l + 1) ** 2].transpose(-1, -2) @ pinvs[l].T  # (b, d, d)
            out[start : start + chunk, col : col + d * d] = math.sqrt(d) * D.reshape(-1, d * d)
            col += d * d
    return out.reshape(batch + (so3_dim(lmax),))
