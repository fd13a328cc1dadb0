"""The demo trajectory: a smooth, known rotation over time (the simulated camera and the temporal benchmark).

The object turns at ``speed_deg_s`` about a fixed tilted axis, and at 0.37 times that about a
second axis, from a fixed tilted start, so every view direction comes by in a minute or so at
20 deg/s. Rotations follow :mod:`pose_core.so3` (object -> camera, acting on column vectors).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pose_core import so3

__all__ = ["axis_angle_matrix", "rotation_at"]


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` float64 of ``angle`` rad about ``axis`` ``(3,)`` (any length > 0):
    :func:`pose_core.so3.rotvec_to_matrix` of the unit axis times the angle."""
    a = np.asarray(axis, dtype=np.float64)
    n = np.linalg.norm(a)
    if a.shape != (3,) or not n > 0:
        raise ValueError(f"axis must be a non-zero vector (3,), got {a!r}")
    return so3.rotvec_to_matrix(torch.from_numpy(a * (angle / n))).numpy()


def rotation_at(t: float, speed_deg_s: float = 20.0) -> np.ndarray:
    """Pose rotation ``(3, 3)`` float64 (object -> camera) at time ``t`` s of the demo trajectory."""
    w = math.radians(speed_deg_s)
    R1 = axis_angle_matrix(np.array([0.3, 1.0, 0.2]), w * t)
    R2 = axis_angle_matrix(np.array([1.0, 0.0, 0.4]), 0.37 * w * t)
    return R2 @ R1 @ axis_angle_matrix(np.array([1.0, 1.0, 0.0]), 0.6)
