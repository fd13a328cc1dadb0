"""SO(3) maths and the project's conventions, stated once.

Conventions (every module of ``pose_core``, the node and the scripts use these):

* **Rotation matrices** are tensors of shape ``(..., 3, 3)`` that act on column vectors,
  ``x_camera = R @ x_object``. A *pose rotation* maps object-frame coordinates into the camera
  optical frame (x right, y down, z forward), exactly as the TF transform ``camera -> object``.
* **Quaternions** are ``(..., 4)`` in ROS order ``(x, y, z, w)``, unit norm, canonical ``w >= 0``.
* **Angles** are in radians. The geodesic distance is
  ``d(R1, R2) = arccos((tr(R1^T R2) - 1) / 2)``, in ``[0, pi]``.
* **Rotation vectors** ``omega`` (``(..., 3)``, radians) relate to matrices by
  ``R = exp([omega]_x)``; a perturbation of a rotation ``R0`` is applied on the left,
  ``R = exp([omega]_x) @ R0``, i.e. about the fixed axes of the camera frame.
* **Densities** on SO(3) are with respect to the Haar measure of total volume ``pi**2``
  (the IPDF / Image2Sphere convention): the uniform distribution has log-density
  ``-log(pi**2)``. See :data:`HAAR_VOLUME`.
* **Euler angles** appear only where a library needs them: :func:`matrix_to_zyz` /
  :func:`zyz_to_matrix` (intrinsic Z-Y-Z, ``R = Rz(alpha) Ry(beta) Rz(gamma)``) for the HEALPix
  grid, and :func:`matrix_to_e3nn_angles` for e3nn's Y-X-Y Wigner-D matrices.

All functions take any number of leading batch dimensions, work in float32 and float64, on CPU and
CUDA, and raise :class:`ValueError` naming the shape they got when the trailing shape is wrong.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "HAAR_VOLUME",
    "LOG_HAAR_VOLUME",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_multiply",
    "quat_right_matrix",
    "quat_canonical",
    "quat_conjugate",
    "quat_to_rotvec",
    "geodesic_distance",
    "random_rotations",
    "rotvec_to_matrix",
    "matrix_to_rotvec",
    "skew",
    "zyz_to_matrix",
    "matrix_to_zyz",
    "matrix_to_e3nn_angles",
    "e3nn_angles_to_matrix",
    "project_to_so3",
]

#: Total Haar volume of SO(3) in the density convention of IPDF and Image2Sphere.
HAAR_VOLUME: float = math.pi**2
#: ``log(HAAR_VOLUME)``; the uniform distribution has log-density ``-LOG_HAAR_VOLUME``.
LOG_HAAR_VOLUME: float = math.log(HAAR_VOLUME)


def _check_trailing(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[-len(shape) :]) != shape or x.dim() < len(shape):
        want = "(..., " + ", ".join(str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternion ``(..., 4)`` in ``(x, y, z, w)`` order to rotation matrix ``(..., 3, 3)``.

    The quaternion is normalised first; ``q`` and ``-q`` give the same matrix.
    """
    _check_trailing(q, (4,), "q")
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = (
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` to unit quaternion ``(..., 4)``, ``(x, y, z, w)``, ``w >= 0``.

    Uses the numerically stable branch (largest of ``w, x, y, z``) for every element, so
    rotations by angles near ``pi`` are exact too.
    """
    _check_trailing(R, (3, 3), "R")
    m = R.reshape(R.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4 * (w^2, x^2, y^2, z^2), clamped against round-off.
    four_sq = torch.stack(
        (
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ),
        dim=-1,
    ).clamp_min(0.0)
    # Each candidate row is 4*c*(w, x, y, z) computed from the branch with largest c.
    cand = torch.stack(
        (
            torch.stack((four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20), -1),
            torch.stack((m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21), -1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]), -1),
        ),
        dim=-2,
    )  # (..., 4 branches, 4 components wxyz)
    best = four_sq.argmax(dim=-1)
    wxyz = torch.gather(cand, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    wxyz = wxyz / wxyz.norm(dim=-1, keepdim=True)
    return quat_canonical(torch.cat((wxyz[..., 1:], wxyz[..., :1]), dim=-1))


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle ``(...)`` in radians, in ``[0, pi]``, of ``R1^T R2``; broadcasts like ``R1 @ R2``.

    Computed with ``atan2(|axis part|, cos part)`` of the relative rotation, which is accurate at
    angles near 0 and near ``pi`` (``arccos`` of the trace loses half the digits there), and
    equal to ``arccos((tr(R1^T R2) - 1) / 2)``.
    """
    _check_trailing(R1, (3, 3), "R1")
    _check_trailing(R2, (3, 3), "R2")
    rel = R1.transpose(-1, -2) @ R2
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    sin_vec = (
        torch.stack(
            (rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]),
            dim=-1,
        )
        / 2
    )
    sin = sin_vec.norm(dim=-1)
    angle = torch.atan2(sin, cos)
    # Near pi the antisymmetric part vanishes; fall back on the trace, which is well conditioned there.
    return torch.where(cos < -0.9, torch.arccos(cos.clamp(-1.0, 1.0)), angle)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` Haar-uniform random rotations ``(n, 3, 3)`` (normalised Gaussian quaternions)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gen_device = generator.device if generator is not None else device
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=gen_device)
    return quat_to_matrix(q).to(dtype=dtype, device=device)


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x`` ``(..., 3, 3)`` of vectors ``(..., 3)``."""
    _check_trailing(v, (3,), "v")
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), dim=-1).reshape(v.shape[:-1] + (3, 3))


def rotvec_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``(..., 3)`` (axis * angle, radians) to matrix ``exp([omega]_x)`` ``(..., 3, 3)``."""
    _check_trailing(omega, (3,), "omega")
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    # sqrt only of the large ones: its gradient at 0 is infinite, and 0 * inf would poison the small branch
    safe = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(safe)) / (safe * safe))
    K = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of quaternions ``(..., 4)`` (broadcast), the quaternion of ``R(a) @ R(b)``.

    Not canonicalised (``w`` may be negative); unit inputs give a unit output.
    """
    _check_trailing(a, (4,), "a")
    _check_trailing(b, (4,), "b")
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack(
        (
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ),
        dim=-1,
    )


def quat_canonical(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(..., 4)`` with the sign that makes ``w >= 0`` (the convention above; ``q`` and
    ``-q`` are one rotation)."""
    _check_trailing(q, (4,), "q")
    return torch.where(q[..., 3:4] < 0, -q, q)


def quat_right_matrix(b: torch.Tensor) -> torch.Tensor:
    """``(..., 4, 4)`` matrices ``M(b)`` with ``quat_multiply(a, b) == a @ M(b)`` (row quaternions ``a``).

    One small matrix product instead of the element-wise Hamilton product: many quaternions
    times the same ``b`` (e.g. every grid cell relative to a mode).
    """
    _check_trailing(b, (4,), "b")
    x, y, z, w = b.unbind(-1)
    rows = (
        (w, -z, y, -x),  # coefficient of a_x in (out_x, out_y, out_z, out_w)
        (z, w, -x, -y),  # a_y
        (-y, x, w, -z),  # a_z
        (x, y, z, w),  # a_w
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """Conjugate ``(..., 4)`` of quaternions ``(..., 4)``: the inverse rotation of a unit quaternion."""
    _check_trailing(q, (4,), "q")
    return torch.cat((-q[..., :3], q[..., 3:]), dim=-1)


def quat_to_rotvec(q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Unit quaternion ``(..., 4)`` (either sign) to rotation vector ``(..., 3)`` with angle in ``[0, pi]``.

    ``dim``: the dimension holding ``(x, y, z, w)`` (and then ``(x, y, z)`` of the result); another
    than the last suits many quaternions stored component by component, ``(B, 4, N)``.
    """
    if q.shape[dim] != 4:
        raise ValueError(f"q must have 4 entries along dim {dim}, got shape {tuple(q.shape)}")
    w = q.narrow(dim, 3, 1)
    sign = torch.where(w < 0, -2.0, 2.0).to(q.dtype)  # use the sign with w >= 0: angle 2*atan2(|v|, |w|) in [0, pi]
    w = w.abs()
    v = q.narrow(dim, 0, 3)
    x, y, z = (q.narrow(dim, i, 1) for i in range(3))
    n = torch.sqrt(x * x + y * y + z * z)  # element-wise: a norm reduction over a strided dim is slow
    half_angle = torch.atan2(n, w)
    scale = torch.where(n < 1e-7, 1 / w.clamp_min(1e-12), half_angle / n.clamp_min(1e-30)) * sign
    return v * scale


def matrix_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` to rotation vector ``(..., 3)`` with angle in ``[0, pi]``.

    Goes through the quaternion, which is stable for all angles including ``pi``.
    """
    return quat_to_rotvec(matrix_to_quat(R))


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack((c, -s, o, s, c, o, o, o, i), -1).reshape(a.shape + (3, 3))


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack((c, o, s, o, i, o, -s, o, c), -1).reshape(a.shape + (3, 3))


def _rx(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack((i, o, o, o, c, -s, o, s, c), -1).reshape(a.shape + (3, 3))


def zyz_to_matrix(alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Intrinsic Z-Y-Z Euler angles (radians, broadcast) to ``Rz(alpha) @ Ry(beta) @ Rz(gamma)``."""
    alpha, beta, gamma = torch.broadcast_tensors(alpha, beta, gamma)
    return _rz(alpha) @ _ry(beta) @ _rz(gamma)


def matrix_to_zyz(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`zyz_to_matrix`: ``(alpha, beta, gamma)``, each ``(...)``, beta in ``[0, pi]``.

    At the gimbal poles (beta = 0 or pi) the split between alpha and gamma is arbitrary; gamma = 0.
    """
    _check_trailing(R, (3, 3), "R")
    beta = torch.atan2(torch.hypot(R[..., 0, 2], R[..., 1, 2]), R[..., 2, 2])
    alpha = torch.atan2(R[..., 1, 2], R[..., 0, 2])
    gamma = torch.atan2(R[..., 2, 1], -R[..., 2, 0])
    pole = torch.hypot(R[..., 0, 2], R[..., 1, 2]) < 1e-6
    # On a pole R = Rz(alpha +/- gamma) (times Ry(pi) for the south pole): put it all in alpha.
    alpha_pole = torch.where(
        R[..., 2, 2] > 0, torch.atan2(R[..., 1, 0], R[..., 0, 0]), torch.atan2(-R[..., 0, 1], -R[..., 0, 0])
    )
    alpha = torch.where(pole, alpha_pole, alpha)
    gamma = torch.where(pole, torch.zeros_like(gamma), gamma)
    return alpha, beta, gamma


def e3nn_angles_to_matrix(alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """e3nn's Y-X-Y Euler angles to ``Ry(alpha) @ Rx(beta) @ Ry(gamma)`` (same as ``e3nn.o3.angles_to_matrix``)."""
    alpha, beta, gamma = torch.broadcast_tensors(alpha, beta, gamma)
    return _ry(alpha) @ _rx(beta) @ _ry(gamma)


def matrix_to_e3nn_angles(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`e3nn_angles_to_matrix`, for evaluating e3nn Wigner-D matrices at ``R``.

    Obtained by conjugating with the axis permutation that maps e3nn's (y, x, y) to (z, y, z).
    """
    _check_trailing(R, (3, 3), "R")
    # P maps e3nn's axes onto the Z-Y-Z ones: P e_y = e_z, P e_x = e_y, P e_z = e_x (a rotation).
    P = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=R.dtype, device=R.device)
    return matrix_to_zyz(P @ R @ P.T)


def project_to_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation ``(..., 3, 3)`` to a matrix ``(..., 3, 3)`` in Frobenius norm (SVD, det +1)."""
    _check_trailing(M, (3, 3), "M")
    U, _, Vh = torch.linalg.svd(M)
    d = torch.det(U @ Vh)
    D = torch.ones(M.shape[:-1], dtype=M.dtype, device=M.device)
    D[..., 2] = d
    return U @ (D[..., None] * Vh)
