"""Conventions of pose_core.so3: quaternion order, round trips, geodesic distance, Haar sampling."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pose_core import so3


def test_quaternion_order_against_hand_computed_90deg_about_z(dtype):
    s = math.sqrt(0.5)
    q = torch.tensor([0.0, 0.0, s, s], dtype=dtype)  # (x, y, z, w): +90 deg about z
    R = so3.quat_to_matrix(q)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(R, expected, atol=1e-6, rtol=0)
    # it maps x onto y (column vectors, active rotation)
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=dtype), torch.tensor([0.0, 1, 0], dtype=dtype))
    torch.testing.assert_close(so3.matrix_to_quat(expected), q, atol=1e-6, rtol=0)


def test_quaternion_round_trips(dtype, tol, generator):
    q = torch.randn(500, 4, generator=generator, dtype=torch.float64).to(dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    q2 = so3.matrix_to_quat(so3.quat_to_matrix(q))
    assert (q2[..., 3] >= 0).all()
    sign = torch.sign((q * q2).sum(-1, keepdim=True))
    torch.testing.assert_close(q2, sign * q, atol=50 * tol, rtol=0)  # q == -q
    R = so3.random_rotations(500, generator=generator, dtype=dtype)
    torch.testing.assert_close(so3.quat_to_matrix(so3.matrix_to_quat(R)), R, atol=50 * tol, rtol=0)


def test_quaternion_product_is_matrix_product(dtype, tol, generator):
    R1 = so3.random_rotations(300, generator=generator, dtype=dtype)
    R2 = so3.random_rotations(300, generator=generator, dtype=dtype)
    q = so3.quat_multiply(so3.matrix_to_quat(R1), so3.matrix_to_quat(R2))
    torch.testing.assert_close(so3.quat_to_matrix(q), R1 @ R2, atol=50 * tol, rtol=0)
    # broadcasting, and the conjugate is the inverse
    q1 = so3.matrix_to_quat(R1)
    ident = so3.quat_multiply(q1[:, None], so3.quat_conjugate(q1)[:, None])[:, 0]
    torch.testing.assert_close(
        so3.quat_to_matrix(ident), torch.eye(3, dtype=dtype).expand(300, 3, 3), atol=50 * tol, rtol=0
    )
    # hand-computed: +90 deg about z then +90 deg about x (R = Rz @ Rx) maps y onto z onto... check one vector
    s = math.sqrt(0.5)
    qz, qx = torch.tensor([0, 0, s, s], dtype=dtype), torch.tensor([s, 0, 0, s], dtype=dtype)
    Rzx = so3.quat_to_matrix(so3.quat_multiply(qz, qx))
    y, z = torch.tensor([0.0, 1, 0], dtype=dtype), torch.tensor([0.0, 0, 1], dtype=dtype)
    torch.testing.assert_close(Rzx @ y, z, atol=1e-6, rtol=0)  # Rx: y -> z, then Rz leaves z


def test_quat_right_matrix_is_the_product(dtype, tol, generator):
    a = so3.matrix_to_quat(so3.random_rotations(200, generator=generator, dtype=dtype))
    b = so3.matrix_to_quat(so3.random_rotations(200, generator=generator, dtype=dtype))
    got = (a[:, None] @ so3.quat_right_matrix(b))[:, 0]
    torch.testing.assert_close(got, so3.quat_multiply(a, b), atol=10 * tol, rtol=0)
    # negative control: the left-multiplication matrix is a different thing (quaternions do not commute)
    assert not torch.allclose((b[:, None] @ so3.quat_right_matrix(a))[:, 0], got, atol=1e-3)


def test_quat_to_rotvec_either_sign(dtype, tol, generator):
    R = so3.random_rotations(200, generator=generator, dtype=dtype)
    q = so3.matrix_to_quat(R)
    omega = so3.quat_to_rotvec(q)
    torch.testing.assert_close(so3.quat_to_rotvec(-q), omega, atol=0, rtol=0)
    torch.testing.assert_close(so3.rotvec_to_matrix(omega), R, atol=50 * tol, rtol=0)
    assert float(omega.norm(dim=-1).max()) <= math.pi + 1e-6


@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, math.pi / 2, math.pi - 1e-4, math.pi])
def test_angles_near_zero_and_pi(dtype, angle):
    axis = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    axis = axis / axis.norm()
    R = so3.rotvec_to_matrix((axis * angle).to(dtype))
    atol = 1e-3 if dtype == torch.float32 else 1e-7
    assert abs(float(so3.geodesic_distance(torch.eye(3, dtype=dtype), R)) - angle) < atol
    omega = so3.matrix_to_rotvec(R)
    assert abs(float(omega.norm()) - angle) < (1e-3 if dtype == torch.float32 else 1e-7)
    torch.testing.assert_close(so3.rotvec_to_matrix(omega), R, atol=1e-5 if dtype == torch.float32 else 1e-9, rtol=0)
    q = so3.matrix_to_quat(R)
    assert q[3] >= 0 and abs(float(q.norm()) - 1) < 1e-6


def test_geodesic_distance_properties(dtype, generator):
    A, B, C = (so3.random_rotations(200, generator=generator, dtype=dtype) for _ in range(3))
    dAB = so3.geodesic_distance(A, B)
    assert ((dAB >= 0) & (dAB <= math.pi + 1e-6)).all()
    torch.testing.assert_close(dAB, so3.geodesic_distance(B, A))
    assert (so3.geodesic_distance(A, A) < 1e-3).all()
    assert (so3.geodesic_distance(A, C) <= dAB + so3.geodesic_distance(B, C) + 1e-5).all()
    # bi-invariance and the trace formula
    torch.testing.assert_close(so3.geodesic_distance(C @ A, C @ B), dAB, atol=1e-4, rtol=0)
    torch.testing.assert_close(so3.geodesic_distance(A @ C, B @ C), dAB, atol=1e-4, rtol=0)
    trace = (A.transpose(-1, -2) @ B).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(dAB, torch.arccos(((trace - 1) / 2).clamp(-1, 1)), atol=2e-3, rtol=0)
    # broadcasting (M, 1) x (N,) -> (M, N)
    assert so3.geodesic_distance(A[:5, None], B[None, :7]).shape == (5, 7)


def test_random_rotations_are_haar_uniform(generator):
    R = so3.random_rotations(20000, generator=generator, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    assert torch.allclose(torch.det(R), torch.ones(20000, dtype=torch.float64))
    # Haar: the rotation angle has density (1 - cos t) / pi on [0, pi]
    t = so3.geodesic_distance(torch.eye(3, dtype=torch.float64), R).numpy()
    cdf = lambda x: (x - np.sin(x)) / np.pi  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3
    # and the direction R e_z is uniform on the sphere: z uniform in [-1, 1]
    assert stats.kstest(R[:, 2, 2].numpy(), stats.uniform(-1, 2).cdf).pvalue > 1e-3


def test_euler_helpers_round_trip(dtype, generator):
    R = so3.random_rotations(300, generator=generator, dtype=dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(so3.zyz_to_matrix(*so3.matrix_to_zyz(R)), R, atol=atol, rtol=0)
    torch.testing.assert_close(so3.e3nn_angles_to_matrix(*so3.matrix_to_e3nn_angles(R)), R, atol=atol, rtol=0)
    poles = so3.zyz_to_matrix(
        torch.tensor([0.3, 0.7], dtype=dtype),
        torch.tensor([0.0, math.pi], dtype=dtype),
        torch.tensor([0.2, -0.4], dtype=dtype),
    )
    torch.testing.assert_close(so3.zyz_to_matrix(*so3.matrix_to_zyz(poles)), poles, atol=atol, rtol=0)


def test_left_perturbation_convention(dtype):
    R0 = so3.rotvec_to_matrix(torch.tensor([0.3, -1.2, 0.4], dtype=dtype))
    omega = torch.tensor([0.05, 0.0, 0.0], dtype=dtype)
    R = so3.rotvec_to_matrix(omega) @ R0
    torch.testing.assert_close(so3.matrix_to_rotvec(R @ R0.T), omega, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "fn, arg",
    [
        (so3.quat_to_matrix, torch.zeros(3)),
        (so3.matrix_to_quat, torch.zeros(3, 4)),
        (so3.matrix_to_rotvec, torch.zeros(2, 9)),
        (so3.rotvec_to_matrix, torch.zeros(4)),
    ],
)
def test_bad_shapes_raise_value_error_with_shape(fn, arg):
    with pytest.raises(ValueError, match=str(tuple(arg.shape)).replace("(", r"\(").replace(")", r"\)")):
        fn(arg)
