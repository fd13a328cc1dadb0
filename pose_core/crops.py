"""Crop rotation correction: a rotation predicted on an off-centre crop, in the real camera frame.

A model that sees a crop centred on pixel ``c`` behaves as if it looked through a *virtual
camera* whose optical axis is the ray ``d`` through ``c``. Let ``R_ray`` be the smallest rotation
with ``R_ray @ e_z = d`` (:func:`ray_rotation`; its axis is ``e_z x d``, so the virtual camera has
no extra roll). Virtual-camera coordinates map into the real camera frame by
``x_camera = R_ray @ x_virtual``, so a pose rotation ``R_crop`` predicted in the virtual camera
(object -> virtual camera, :mod:`pose_core.so3`) becomes ``R = R_ray @ R_crop`` in the real camera
frame: the correction is applied **on the left**, i.e. about the fixed camera axes, like the
perturbations of :mod:`pose_core.so3`. Consequently a rotation-vector covariance ``C`` (left
perturbation about the virtual camera axes) becomes ``R_ray C R_ray^T``, and entropy and
log-densities are unchanged (left translation preserves the Haar measure). This is the same
convention as :func:`pose_core.data.pascal3d.crop_camera`, whose ``R_c`` (old camera -> new) is
``R_ray^T`` up to an in-plane roll. For a plain (not re-projected) crop it is an approximation that
is exact at the crop centre; fine for the small angles of a typical crop.

Pixels, ``K`` and regions follow :mod:`pose_core.pinhole`. Rotations are torch tensors like
:mod:`pose_core.so3`.
"""

from __future__ import annotations

import numpy as np
import torch

from pose_core import so3
from pose_core.pinhole import pixel_ray

__all__ = ["ray_rotation", "crop_ray_rotation", "correct_crop_rotation", "correct_covariance"]


def ray_rotation(ray: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Smallest rotation ``(..., 3, 3)`` with ``R @ e_z = ray / |ray|`` for rays ``(..., 3)`` with ``z > 0``.

    Rotation axis ``e_z x ray``, angle ``atan2(|e_z x ray|, ray_z)`` (so no roll about the ray).
    """
    d = torch.as_tensor(ray, dtype=dtype)
    so3._check_trailing(d, (3,), "ray")
    n = d.norm(dim=-1, keepdim=True)
    if not bool((n > 0).all()) or not bool((d[..., 2] > 0).all()):
        raise ValueError(f"rays must point in front of the camera (z > 0), got {d.tolist()}")
    d = d / n
    axis = torch.stack((-d[..., 1], d[..., 0], torch.zeros_like(d[..., 0])), dim=-1)  # e_z x d
    s = axis.norm(dim=-1, keepdim=True)
    angle = torch.atan2(s, d[..., 2:3])
    unit = torch.where(s > 0, axis / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(axis))
    return so3.rotvec_to_matrix(unit * angle)


def crop_ray_rotation(K: np.ndarray, center: tuple[float, float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``R_ray`` ``(3, 3)`` of a crop centred on pixel ``center`` ``(u, v)``: :func:`ray_rotation` of the ray
    through it, the correction :func:`correct_crop_rotation` and the pipeline apply on the left."""
    return ray_rotation(pixel_ray(K, center[0], center[1]), dtype=dtype)


def correct_crop_rotation(R_crop: torch.Tensor, K: np.ndarray, center: tuple[float, float]) -> torch.Tensor:
    """Camera-frame pose rotation(s) ``(..., 3, 3)`` from ``R_crop`` ``(..., 3, 3)`` predicted on a crop.

    ``center``: the crop's centre pixel ``(u, v)``.

    ``R = ray_rotation(ray through center) @ R_crop`` (see the module docstring).
    """
    so3._check_trailing(R_crop, (3, 3), "R_crop")
    R_ray = crop_ray_rotation(K, center, dtype=R_crop.dtype).to(R_crop.device)
    return R_ray @ R_crop


def correct_covariance(cov: torch.Tensor, R_ray: torch.Tensor) -> torch.Tensor:
    """Left-perturbation covariance ``(..., 3, 3)``: virtual-camera axes → camera axes, ``R_ray C R_ray^T``."""
    so3._check_trailing(cov, (3, 3), "cov")
    so3._check_trailing(R_ray, (3, 3), "R_ray")
    R_ray = R_ray.to(cov.dtype)
    return R_ray @ cov @ R_ray.transpose(-1, -2)
