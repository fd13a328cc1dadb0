"""Wigner-D matrices and the SO(3) Fourier basis, against e3nn and their defining identities."""

import torch
from e3nn import o3

from pose_core import fourier, grids, so3, wigner


def test_matches_e3nn_wigner_d(generator):
    R = so3.random_rotations(50, generator=generator, dtype=torch.float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its generators in the default dtype
    try:
        expected = [o3.wigner_D(l, *o3.matrix_to_angles(R)) for l in range(7)]
    finally:
        torch.set_default_dtype(previous)
    for l, D in enumerate(wigner.wigner_D(R, 6)):
        torch.testing.assert_close(D, expected[l], atol=1e-10, rtol=0)


def test_rotates_spherical_harmonics_and_is_a_homomorphism(dtype, tol, generator):
    A, B = (so3.random_rotations(20, generator=generator, dtype=dtype) for _ in range(2))
    x = torch.randn(7, 3, generator=generator, dtype=torch.float64).to(dtype)
    DA, DB, DAB = wigner.wigner_D(A, 6), wigner.wigner_D(B, 6), wigner.wigner_D(A @ B, 6)
    Y = wigner.spherical_harmonics(x, 6)  # (7, 49)
    YA = wigner.spherical_harmonics(torch.einsum("bij,nj->bni", A, x), 6)  # (20, 7, 49)
    for l in range(7):
        s = slice(l * l, (l + 1) ** 2)
        torch.testing.assert_close(YA[..., s], Y[:, s] @ DA[l].transpose(-1, -2), atol=200 * tol, rtol=0)
        torch.testing.assert_close(DAB[l], DA[l] @ DB[l], atol=200 * tol, rtol=0)
        eye = torch.eye(2 * l + 1, dtype=dtype).expand_as(DA[l])
        torch.testing.assert_close(DA[l] @ DA[l].transpose(-1, -2), eye, atol=200 * tol, rtol=0)


def test_flat_basis_is_orthonormal_under_exact_quadrature():
    from pose_core.layers import so3_quadrature

    R, w = so3_quadrature(12)  # exact for products of two degree-6 functions
    W = wigner.flat_wigner(R, 6)
    gram = W.T @ (w[:, None] * W)
    torch.testing.assert_close(gram, torch.eye(wigner.so3_dim(6), dtype=torch.float64), atol=1e-10, rtol=0)


def test_cell_tables_match_direct_evaluation(generator):
    idx = torch.randint(0, grids.num_cells(3), (300,), generator=generator)
    direct = wigner.flat_wigner(grids.cell_rotations(3, idx, dtype=torch.float64), 6)
    torch.testing.assert_close(fourier.cell_flat_wigner(3, idx, 6, torch.float64), direct, atol=1e-10, rtol=0)
