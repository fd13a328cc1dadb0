"""An object's reconstructed shape in metres, in its own frame, scaled and fused with depth.

Conventions (on top of :mod:`pose_core.pinhole` and :mod:`pose_core.data.reconstruction`):

* A reconstruction (:meth:`pose_core.models.reconstruction.ShapeReconstructor.reconstruct`) is in the object
  frame in **unit-diagonal units**: the shape's bounding-box diagonal is 1. Its **size** ``size_m`` is that
  diagonal in metres, so points in metres are ``size_m * points``.
* The object frame is the one of the pose estimate (TF camera -> object): a camera point ``p`` is
  ``R.T @ (p - t)`` in it, ``R`` the mode (object -> camera) and ``t`` the translation (m).
* With depth, the visible surface (the depth pixels of the object's crop, back-projected and moved into the
  object frame) fixes the size: :func:`fit_scale` picks the size under which the visible points lie closest
  to the predicted surface (median distance, robust to background pixels and a wrong part of the shape);
  :func:`fuse` then keeps the measured points where they are and the prediction where nothing was seen.

Everything is numpy float64 except the returned clouds (float32, what ``sensor_msgs/PointCloud2`` carries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pose_core import pinhole, preprocess

__all__ = ["ShapeEstimate", "ShapeEstimator", "observed_points_object", "fit_scale", "fuse", "MIN_OBSERVED"]

#: Fewest visible depth points :func:`fit_scale` works from.
MIN_OBSERVED = 20


def _points(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite (N, 3) array, got shape {a.shape}")
    return a


def observed_points_object(depth: np.ndarray, K: np.ndarray, region: tuple[int, int, int, int], rotation: np.ndarray,
                           translation: np.ndarray, max_radius_m: float | None = None) -> np.ndarray:
    """The valid depth pixels of ``region`` ``(u0, v0, u1, v1)`` of ``depth`` ``(H, W)`` (m; 0 / NaN / inf: none),
    back-projected with ``K`` and moved into the object frame of pose (``rotation`` ``(3, 3)`` object -> camera,
    ``translation`` ``(3,)`` m): ``(M, 3)`` m. ``max_radius_m``: drop points farther from the object origin
    (the background behind the object)."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    K = pinhole.intrinsics_matrix(K)
    u0, v0, u1, v1 = pinhole.clip_region(region, depth.shape[1], depth.shape[0])
    patch = depth[v0:v1, u0:u1]
    vv, uu = np.nonzero(np.isfinite(patch) & (patch > 0))
    if len(vv) == 0:
        return np.zeros((0, 3))
    p = pinhole.backproject(K, uu + u0, vv + v0, patch[vv, uu])  # (M, 3) camera frame
    R = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    q = (p - t) @ R  # R.T @ (p - t), row-wise
    if max_radius_m is not None:
        q = q[np.linalg.norm(q, axis=1) <= max_radius_m]
    return q


def _nearest(points: np.ndarray, query: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(points).query(query, k=1)[0]


def fit_scale(points_unit: np.ndarray, observed: np.ndarray, initial_m: float, span: float = 3.0,
              steps: int = 48) -> float:
    """The size (m) ``s`` minimising the median distance from each ``observed`` point ``(M, 3)`` (object frame,
    m) to the scaled prediction ``s * points_unit`` ``(N, 3)``: a log-spaced search over
    ``[initial_m / span, initial_m * span]`` (``steps`` values), refined by golden section around the best.
    ValueError with fewer than :data:`MIN_OBSERVED` points or a non-positive ``initial_m``."""
    pts = _points(points_unit, "points_unit")
    obs = _points(observed, "observed")
    if len(obs) < MIN_OBSERVED:
        raise ValueError(f"fit_scale needs at least {MIN_OBSERVED} observed points, got {len(obs)}")
    if not (math.isfinite(initial_m) and initial_m > 0 and span > 1):
        raise ValueError(f"need initial_m > 0 and span > 1, got {initial_m!r}, {span!r}")

    def cost(log_s: float) -> float:
        return float(np.median(_nearest(math.exp(log_s) * pts, obs)))

    grid = np.linspace(math.log(initial_m / span), math.log(initial_m * span), steps)
    costs = [cost(g) for g in grid]
    k = int(np.argmin(costs))
    lo, hi = grid[max(0, k - 1)], grid[min(len(grid) - 1, k + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = cost(a), cost(b)
    for _ in range(20):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = cost(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = cost(b)
    best = (lo + hi) / 2
    return float(math.exp(best if cost(best) <= costs[k] else grid[k]))


def fuse(points_m: np.ndarray, observed: np.ndarray, voxel_m: float) -> np.ndarray:
    """One cloud ``(K, 3)`` (m, object frame): the ``observed`` points ``(M, 3)`` and the predicted ``points_m``
    ``(N, 3)`` that lie farther than ``voxel_m`` from every observed point (where something was measured, the
    measurement wins), thinned to one point per ``voxel_m`` cube (the first of each)."""
    pts, obs = _points(points_m, "points_m"), _points(observed, "observed")
    if not voxel_m > 0:
        raise ValueError(f"voxel_m must be > 0, got {voxel_m!r}")
    keep = pts if len(obs) == 0 else pts[_nearest(obs, pts) > voxel_m]
    cloud = np.concatenate([obs, keep])
    if len(cloud) == 0:
        return cloud
    _, first = np.unique(np.floor(cloud / voxel_m).astype(np.int64), axis=0, return_index=True)
    return cloud[np.sort(first)]


@dataclass
class ShapeEstimate:
    """One object's shape: ``points`` ``(N, 3)`` float32 m in the object frame; ``size_m`` the bounding-box
    diagonal used; ``source``: ``"depth"`` (size fitted to the visible depth points and fused with them) or
    ``"nominal"`` (the configured size, no depth); ``observed``: the depth points used."""

    points: np.ndarray
    size_m: float
    source: str
    observed: int = 0


class ShapeEstimator:
    """Reconstruct each object of a frame (:class:`pose_core.pipeline.ObjectEstimate`) from its crop.

    Args:
        model: a :class:`pose_core.models.reconstruction.ShapeReconstructor` (eval mode).
        size_m: the object's bounding-box diagonal (m) used without depth, and the centre of the depth search.
        n_points: points asked of the model (the points decoder gives its own number).
        fuse_voxel_m: the grid of :func:`fuse`, as a fraction of the size (default 1 %).
    """

    def __init__(self, model: Any, size_m: float = 0.2, n_points: int | None = None, fuse_voxel: float = 0.01):
        if not (math.isfinite(size_m) and size_m > 0):
            raise ValueError(f"size_m must be > 0 (m), got {size_m!r}")
        if getattr(model, "kind", None) != "reconstruction":
            raise ValueError(f"a ShapeEstimator needs a reconstruction model, got {getattr(model, 'kind', model)!r}")
        self.model, self.size_m, self.n_points, self.fuse_voxel = model, float(size_m), n_points, float(fuse_voxel)
        self.input_size = int(model.config.image_size)

    def estimate(self, rgb: np.ndarray, K: np.ndarray | None, depth: np.ndarray | None,
                 objects: list[Any]) -> list[ShapeEstimate]:
        """The shape of each of ``objects`` (their ``region``, ``rotation``, ``translation``) in ``rgb``
        ``(H, W, 3)``; with ``depth`` ``(H, W)`` m and ``K``, sized and fused by the visible points (when at
        least :data:`MIN_OBSERVED` lie near the object), else at ``size_m``."""
        import torch

        if not objects:
            return []
        x = torch.cat([preprocess.crop_input(rgb, o.region, self.input_size) for o in objects])
        pts = self.model.reconstruct(x.to(self.model.device), n_points=self.n_points).cpu().double().numpy()
        out = []
        for o, p in zip(objects, pts, strict=True):
            obs = np.zeros((0, 3))
            if depth is not None and K is not None:
                obs = observed_points_object(depth, K, o.region, o.rotation, o.translation)
                # the object's own points lie within its radius; a generous bound keeps background out
                radius = 1.5 * max(self.size_m, float(np.median(np.linalg.norm(obs, axis=1))) if len(obs) else 0.0)
                obs = obs[np.linalg.norm(obs, axis=1) <= radius] if len(obs) else obs
            if len(obs) >= MIN_OBSERVED:
                size = fit_scale(p, obs, self.size_m)
                cloud = fuse(size * p, obs, self.fuse_voxel * size)
                out.append(ShapeEstimate(cloud.astype(np.float32), size, "depth", len(obs)))
            else:
                out.append(ShapeEstimate((self.size_m * p).astype(np.float32), self.size_m, "nominal", len(obs)))
        return out
