"""Numerical SO(3)-equivariance of the S² → SO(3) head (S2Conv, norm, activation, SO3Conv)."""

import math

import torch
from torch import nn

from pose_core import fourier, so3, wigner
from pose_core.layers import S2Convolution, SO3Activation, SO3Convolution, SO3Norm, SphereProjector

LMAX = 6


def _head(dtype):
    torch.manual_seed(0)
    head = nn.Sequential(
        S2Convolution(8, 5, LMAX), SO3Norm(), SO3Activation(5, LMAX), SO3Convolution(5, 1, LMAX)
    ).to(dtype)
    return head


def _rotate_s2(c, g):
    """S² coefficients (B, C, (L+1)^2) of the signal rotated by g: c_l -> D_l(g) c_l."""
    D = wigner.wigner_D(g, LMAX)
    return torch.cat([c[..., l * l : (l + 1) ** 2] @ D[l].T for l in range(LMAX + 1)], dim=-1)


def test_head_output_density_rotates_with_the_input(dtype, generator):
    head = _head(dtype)
    c = torch.randn(3, 8, (LMAX + 1) ** 2, generator=generator, dtype=torch.float64).to(dtype)
    g = so3.random_rotations(1, generator=generator, dtype=dtype)[0]
    with torch.no_grad():
        F = head(c)[:, 0]  # (B, so3_dim)
        Fg = head(_rotate_s2(c, g))[:, 0]
    R = so3.random_rotations(64, generator=generator, dtype=dtype)
    f_g_at_R = fourier.evaluate_rotations(Fg, R, LMAX)  # rotated input, evaluated at R
    f_at_ginvR = fourier.evaluate_rotations(F, g.T @ R, LMAX)  # original, evaluated at g^-1 R
    rel = (f_g_at_R - f_at_ginvR).norm() / f_at_ginvR.norm()
    assert rel < (1e-4 if dtype == torch.float32 else 1e-10), float(rel)
    # the normalised density rotates too (the normaliser is rotation invariant)
    logq_g = f_g_at_R - torch.logsumexp(fourier.evaluate_rotations(Fg, R, LMAX), 1, keepdim=True)
    logq = f_at_ginvR - torch.logsumexp(fourier.evaluate_rotations(F, g.T @ R, LMAX), 1, keepdim=True)
    assert (logq_g - logq).abs().max() < (1e-3 if dtype == torch.float32 else 1e-9)


def test_equivariance_check_fails_for_a_non_equivariant_activation(generator):
    """The same check on a grid ReLU (the reference's activation) shows a clearly larger error."""

    class GridReLU(SO3Activation):
        def forward(self, x):
            h = x @ self.to_grid.to(x.dtype)
            return torch.relu(h) @ self.from_grid.to(x.dtype)

    torch.manual_seed(0)
    head = nn.Sequential(S2Convolution(8, 5, LMAX), SO3Norm(), GridReLU(5, LMAX), SO3Convolution(5, 1, LMAX)).double()
    c = torch.randn(3, 8, (LMAX + 1) ** 2, generator=generator, dtype=torch.float64)
    g = so3.random_rotations(1, generator=generator, dtype=torch.float64)[0]
    with torch.no_grad():
        F, Fg = head(c)[:, 0], head(_rotate_s2(c, g))[:, 0]
    R = so3.random_rotations(64, generator=generator, dtype=torch.float64)
    a, b = fourier.evaluate_rotations(Fg, R, LMAX), fourier.evaluate_rotations(F, g.T @ R, LMAX)
    assert (a - b).norm() / b.norm() > 1e-3


def test_each_layer_commutes_with_rotation(generator):
    g = so3.random_rotations(1, generator=generator, dtype=torch.float64)[0]
    D = wigner.wigner_D(g, LMAX)

    def rotate_so3(F):  # F_l -> D_l(g) F_l
        out, s = [], 0
        for l in range(LMAX + 1):
            d = 2 * l + 1
            block = F[..., s : s + d * d].reshape(F.shape[:-1] + (d, d))
            out.append((D[l] @ block).reshape(F.shape[:-1] + (d * d,)))
            s += d * d
        return torch.cat(out, -1)

    x = torch.randn(2, 4, wigner.so3_dim(LMAX), generator=generator, dtype=torch.float64)
    torch.manual_seed(1)
    for layer in (SO3Convolution(4, 3, LMAX).double(), SO3Activation(4, LMAX).double(), SO3Norm()):
        with torch.no_grad():
            torch.testing.assert_close(layer(rotate_so3(x)), rotate_so3(layer(x)), atol=1e-10, rtol=0)


def test_projector_rotates_with_in_plane_image_rotation(generator):
    """A 90 deg in-plane rotation of the feature map rotates the S² signal about the optical axis."""
    torch.manual_seed(0)
    proj = SphereProjector(4, 6, LMAX, sphere_level=2).double()
    feats = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64)
    # image rotated so that content at (u, v) moves to (-v, u): a +90 deg turn about z (x right, y down)
    rotated = torch.rot90(feats, k=1, dims=(-1, -2))
    g = so3.zyz_to_matrix(torch.tensor(math.pi / 2, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                          torch.tensor(0.0, dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(proj(rotated), _rotate_s2(proj(feats), g), atol=1e-10, rtol=0)
