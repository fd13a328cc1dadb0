"""The Image2Sphere head: image features → S² signal → SO(3) signal, all in the Fourier domain.

Signals use the layouts of :mod:`pose_core.wigner` (S²: ``(B, C, (L+1)**2)``; SO(3):
``(B, C, so3_dim(L))``). Everything after :class:`SphereProjector` is exactly SO(3)-equivariant:
if the S² input is rotated by ``g`` (coefficients ``c_l -> D_l(g) c_l``), the output SO(3)
signal is left-translated, ``f'(R) = f(g^-1 R)`` (coefficients ``F_l -> D_l(g) F_l``), up to
floating-point round-off. :class:`SO3Activation` keeps that exact by using a polynomial
nonlinearity and a quadrature rule that integrates its result exactly (see its docstring).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pose_core import grids, so3, wigner

__all__ = [
    "SphereProjector",
    "S2Convolution",
    "SO3Convolution",
    "SO3Activation",
    "SO3Norm",
    "s2_near_pole_grid",
    "so3_near_identity_grid",
    "so3_quadrature",
]


def _blocks(lmax: int, square: bool) -> list[tuple[int, int, int]]:
    """``(l, start, dim)`` of each degree's block in an S² (``square=False``) or SO(3) signal."""
    out, start = [], 0
    for l in range(lmax + 1):
        d = 2 * l + 1
        size = d * d if square else d
        out.append((l, start, d))
        start += size
    return out


def s2_near_pole_grid(max_beta: float = math.pi / 8, n_beta: int = 3, n_alpha: int = 8) -> torch.Tensor:
    """Filter support on S²: ``(1 + n_beta * n_alpha, 3)`` unit vectors within ``max_beta`` of ``e_z``."""
    pts = [torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)]
    for i in range(1, n_beta + 1):
        b = max_beta * i / n_beta
        for j in range(n_alpha):
            a = 2 * math.pi * j / n_alpha
            pts.append(torch.tensor([math.sin(b) * math.cos(a), math.sin(b) * math.sin(a), math.cos(b)]))
    return torch.stack(pts).to(torch.float64)


def so3_near_identity_grid(
    max_beta: float = math.pi / 8, n_beta: int = 2, n_alpha: int = 8, n_gamma: int = 8
) -> torch.Tensor:
    """Filter support on SO(3): rotations ``(n, 3, 3)`` that tilt ``e_z`` by at most ``max_beta``.

    ``Rz(a) Ry(b) Rz(-a) Rz(c)`` for tilts ``b`` in ``{0} + {max_beta * i / n_beta}``, tilt
    directions ``a`` and all in-plane angles ``c`` (``n_gamma`` of them).
    """
    rots = []
    gammas = torch.arange(n_gamma, dtype=torch.float64) * (2 * math.pi / n_gamma)
    zero = torch.zeros_like(gammas)
    rots.append(so3.zyz_to_matrix(gammas, zero, zero))
    for i in range(1, n_beta + 1):
        b = torch.full_like(gammas, max_beta * i / n_beta)
        for j in range(n_alpha):
            a = torch.full_like(gammas, 2 * math.pi * j / n_alpha)
            rots.append(so3.zyz_to_matrix(a, b, gammas - a))
    return torch.cat(rots)


def so3_quadrature(bandlimit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Product quadrature on SO(3) exact for band-limited functions of degree ``<= bandlimit``.

    Returns rotations ``(Q, 3, 3)`` and weights ``(Q,)`` summing to 1 (the mean over SO(3)):
    ``bandlimit + 1`` equispaced Z-Y-Z angles ``alpha`` and ``gamma``, and Gauss-Legendre nodes
    in ``cos(beta)`` (exact for degree ``2 n - 1 >= bandlimit``).
    """
    n_ag = bandlimit + 1
    n_b = bandlimit // 2 + 1
    x, w = np.polynomial.legendre.leggauss(n_b)
    beta = torch.from_numpy(np.arccos(x))
    wb = torch.from_numpy(w) / 2
    ag = torch.arange(n_ag, dtype=torch.float64) * (2 * math.pi / n_ag)
    A, Bt, G = torch.meshgrid(ag, beta, ag, indexing="ij")
    W = (torch.ones(n_ag, dtype=torch.float64)[:, None, None] * wb[None, :, None] * torch.ones(n_ag)[None, None, :])
    W = W / (n_ag * n_ag)
    return so3.zyz_to_matrix(A.reshape(-1), Bt.reshape(-1), G.reshape(-1)), W.reshape(-1)


class SphereProjector(nn.Module):
    """Image features ``(B, C_in, h, w)`` → S² signal ``(B, C_out, (lmax+1)**2)``.

    A 1x1 convolution, then orthographic projection: the feature at image point ``(u, v)``
    (normalised to ``[-1, 1]``, ``u`` right, ``v`` down, as the optical frame's x and y) is placed
    on the unit sphere at ``(u, v, -sqrt(1 - u**2 - v**2))``, the hemisphere facing the camera,
    sampled at the HEALPix points of level ``sphere_level`` (bilinear), and turned into spherical
    harmonic coefficients by equal-area quadrature (zero on the far hemisphere). All points are
    used, in training and inference alike (deterministic).
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int, sphere_level: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        pts = grids.s2_healpix_points(sphere_level, torch.float64)
        n_full = pts.shape[0]
        pts = pts[pts[:, 2] < 0]  # facing the camera
        self.register_buffer("grid", pts[:, :2].to(torch.float32)[None, None], persistent=False)  # (1, 1, n, 2)
        Y = wigner.spherical_harmonics(pts, lmax) / n_full  # (n, (L+1)^2): mean over the whole sphere
        self.register_buffer("Y", Y, persistent=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        B = feats.shape[0]
        x = self.conv(feats)  # (B, C, h, w)
        grid = self.grid.expand(B, -1, -1, -1).to(x.dtype)
        samples = nn.functional.grid_sample(x, grid, mode="bilinear", align_corners=False)  # (B, C, 1, n)
        return samples[:, :, 0] @ self.Y.to(x.dtype)  # (B, C, (L+1)^2)


class S2Convolution(nn.Module):
    """S² signal ``(B, C_in, (L+1)**2)`` → SO(3) signal ``(B, C_out, so3_dim(L))``.

    Correlation with learned filters supported near ``e_z`` (:func:`s2_near_pole_grid`):
    ``f_out(R) = mean_x f(x) psi(R^-1 x)``; in the Fourier domain ``F_l = c_l p_l^T`` per channel pair.
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int, kernel_points: torch.Tensor | None = None):
        super().__init__()
        kernel_points = s2_near_pole_grid() if kernel_points is None else kernel_points
        n = kernel_points.shape[0]
        self.lmax = lmax
        self.weight = nn.Parameter(torch.randn(in_channels, out_channels, n) / math.sqrt(n))
        Y = wigner.spherical_harmonics(kernel_points.to(torch.float64), lmax)
        self.register_buffer("Y", Y, persistent=False)  # (n, (L+1)^2)
        self.scale = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Y = self.Y.to(self.weight.dtype)
        psi = torch.einsum("ion,nk->iok", self.weight, Y) * self.scale  # (C_in, C_out, (L+1)^2)
        out = []
        for _, s, d in _blocks(self.lmax, square=False):
            F = torch.einsum("bim,ion->bomn", x[..., s : s + d], psi[..., s : s + d])  # (B, C_out, d, d)
            out.append(F.reshape(F.shape[0], F.shape[1], d * d))
        return torch.cat(out, dim=-1)


class SO3Convolution(nn.Module):
    """SO(3) signal ``(B, C_in, so3_dim)`` → ``(B, C_out, so3_dim)``.

    Group correlation with learned filters supported near the identity
    (:func:`so3_near_identity_grid`); in the Fourier domain ``F_l <- H_l K_l^T``.
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int, kernel_rotations: torch.Tensor | None = None):
        super().__init__()
        kernel_rotations = so3_near_identity_grid() if kernel_rotations is None else kernel_rotations
        n = kernel_rotations.shape[0]
        self.lmax = lmax
        self.weight = nn.Parameter(torch.randn(in_channels, out_channels, n) / math.sqrt(n))
        D = wigner.flat_wigner(kernel_rotations.to(torch.float64), lmax)  # (n, so3_dim)
        self.register_buffer("D", D, persistent=False)
        self.scale = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D = self.D.to(self.weight.dtype)
        K = torch.einsum("ion,nk->iok", self.weight, D) * self.scale  # (C_in, C_out, so3_dim)
        out = []
        for _, s, d in _blocks(self.lmax, square=True):
            H = x[..., s : s + d * d].reshape(x.shape[0], x.shape[1], d, d)
            Kl = K[..., s : s + d * d].reshape(K.shape[0], K.shape[1], d, d)
            F = torch.einsum("bimk,iotk->bomt", H, Kl) / math.sqrt(d)
            out.append(F.reshape(F.shape[0], F.shape[1], d * d))
        return torch.cat(out, dim=-1)


class SO3Norm(nn.Module):
    """Scale an SO(3) signal ``(B, C, so3_dim)`` to unit RMS over channels and rotations (invariant).

    By Parseval the RMS over SO(3) is the coefficient norm, so this is exactly equivariant.
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).sum(-1).mean(-1, keepdim=True).add(self.eps).sqrt()  # (B, 1)
        return x / rms[..., None]


class SO3Activation(nn.Module):
    """Pointwise nonlinearity on an SO(3) signal ``(B, C, so3_dim)``, exactly equivariant.

    Evaluates the signal on a quadrature grid, applies ``y = h + a_c * h**2`` (``a_c`` learned per
    channel), and projects back onto degrees ``<= lmax``. ``y`` has band limit ``2 * lmax``, so the
    projection integrals have band limit ``3 * lmax`` and :func:`so3_quadrature` computes them
    exactly: the layer commutes with rotations to round-off. (A ReLU on a grid, as in the
    Image2Sphere reference, is only approximately equivariant.)
    """

    def __init__(self, channels: int, lmax: int):
        super().__init__()
        R, w = so3_quadrature(3 * lmax)
        W = wigner.flat_wigner(R, lmax)  # (Q, so3_dim), float64
        self.register_buffer("to_grid", W.T.contiguous(), persistent=False)  # (so3_dim, Q)
        self.register_buffer("from_grid", (w[:, None] * W), persistent=False)  # (Q, so3_dim)
        self.quad = nn.Parameter(torch.full((channels, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.to_grid.to(x.dtype)  # (B, C, Q)
        y = h + self.quad.to(x.dtype) * h * h
        return y @ self.from_grid.to(x.dtype)  # (B, C, so3_dim)
