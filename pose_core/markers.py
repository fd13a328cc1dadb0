"""Geometry of what a viewer (RViz, Foxglove) draws for one pose estimate: pure numpy, no ROS.

The ROS adapter (:mod:`pose_distribution_ros.outputs`) copies these numbers into
``visualization_msgs/Marker`` messages; nothing is computed there.

Conventions (those of :mod:`pose_core.so3` and :mod:`pose_core.pinhole`): rotations map object
axes into the camera frame; points and lengths are metres in the camera frame; quaternions
``(x, y, z, w)``; colours ``(r, g, b, a)`` in ``[0, 1]``. Axis colours follow RViz: x red,
y green, z blue.

* :func:`axes_segments`: the three axes of a pose as line segments.
* :func:`sample_axes`: short axis triads of weighted rotation samples, their opacity
  proportional to the weight (the most probable sample opaque).
* :func:`translation_ellipsoid`: the ellipsoid holding a given probability of a Gaussian
  translation (centre, orientation, full axis lengths), as a scaled sphere is drawn.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from pose_core import so3

__all__ = [
    "AXIS_COLORS",
    "ELLIPSOID_PROBABILITY",
    "Ellipsoid",
    "axes_segments",
    "sample_axes",
    "translation_ellipsoid",
    "chi_square_3_quantile",
]

#: ``(3, 4)`` RGBA of the x, y and z axes.
AXIS_COLORS = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
#: Probability the drawn translation ellipsoid holds.
ELLIPSOID_PROBABILITY = 0.95


def axes_segments(rotation: np.ndarray, origin: np.ndarray, length: float) -> np.ndarray:
    """Segments of a pose's axes: ``(3, 2, 3)`` = axis (x, y, z), (start, end), point (m).

    Args:
        rotation: ``(3, 3)`` object -> camera.
        origin: ``(3,)`` the object origin in the camera frame (m).
        length: axis length (m).
    """
    R = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    ends = o[None, :] + length * R.T  # row i: origin + length * (column i of R)
    return np.stack([np.broadcast_to(o, (3, 3)), ends], axis=1)


def sample_axes(
    quaternions: np.ndarray, weights: np.ndarray, origin: np.ndarray, length: float, min_alpha: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Axis triads of ``N`` rotation samples at one origin, as a line list.

    Args:
        quaternions: ``(N, 4)`` samples (x, y, z, w).
        weights: ``(N,)`` their weights (any positive scale).
        origin: ``(3,)`` m; ``length``: axis length (m).
        min_alpha: opacity of the least probable sample (the most probable one is 1).

    Returns:
        ``points (N * 3 * 2, 3)``: for each sample, for x, y, z, its start and end point;
        ``colors (N * 3 * 2, 4)``: the axis colour with alpha ``max(min_alpha, w / max(w))``.
    """
    q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if q.shape[0] != w.shape[0]:
        raise ValueError(f"{q.shape[0]} samples but {w.shape[0]} weights")
    if q.shape[0] == 0:
        return np.zeros((0, 3)), np.zeros((0, 4))
    R = so3.quat_to_matrix(torch.from_numpy(q)).numpy()  # (N, 3, 3)
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    ends = o + length * np.transpose(R, (0, 2, 1))  # (N, axis, 3)
    points = np.stack([np.broadcast_to(o, ends.shape), ends], axis=2).reshape(-1, 3)
    top = w.max()
    alpha = np.clip(w / top if top > 0 else np.ones_like(w), min_alpha, 1.0)
    colors = np.repeat(AXIS_COLORS[None, :, None, :], q.shape[0], axis=0).repeat(2, axis=2).copy()
    colors[..., 3] = alpha[:, None, None]
    return points, colors.reshape(-1, 4)


@functools.lru_cache(maxsize=8)
def chi_square_3_quantile(p: float) -> float:
    """The ``p`` quantile of the chi-square distribution with 3 degrees of freedom (bisection; cached:
    every drawn ellipsoid asks for the same one)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")

    def cdf(x: float) -> float:  # chi2(3) CDF: erf(sqrt(x/2)) - sqrt(2x/pi) exp(-x/2)
        return math.erf(math.sqrt(x / 2)) - math.sqrt(2 * x / math.pi) * math.exp(-x / 2)

    lo, hi = 0.0, 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Ellipsoid:
    """A drawn ellipsoid: ``center (3,)`` m, ``orientation (4,)`` (x, y, z, w) of its principal
    axes (columns: eigenvectors, right-handed), ``diameters (3,)`` m along them."""

    center: np.ndarray
    orientation: np.ndarray
    diameters: np.ndarray


def translation_ellipsoid(
    mean: np.ndarray, covariance: np.ndarray, probability: float = ELLIPSOID_PROBABILITY
) -> Ellipsoid | None:
    """The region of a Gaussian translation ``N(mean, covariance)`` holding ``probability``.

    Args:
        mean: ``(3,)`` m; covariance: ``(3, 3)`` m², symmetric.

    Returns:
        The ellipsoid (diameters ``2 sqrt(chi2_3(p) * eigenvalue)``), or ``None`` when there is
        no translation uncertainty (all eigenvalues 0) or the covariance is not finite.
    """
    C = np.asarray(covariance, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(C).all():
        return None
    values, vectors = np.linalg.eigh((C + C.T) / 2)
    values = np.clip(values, 0.0, None)
    if values.max() <= 0:
        return None
    if np.linalg.det(vectors) < 0:
        vectors[:, 2] = -vectors[:, 2]
    q = so3.matrix_to_quat(torch.from_numpy(vectors)).numpy()
    k = math.sqrt(chi_square_3_quantile(probability))
    return Ellipsoid(np.asarray(mean, dtype=np.float64).reshape(3).copy(), q, 2 * k * np.sqrt(values))
