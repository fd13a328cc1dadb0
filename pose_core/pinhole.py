"""Pinhole geometry: intrinsics, viewing rays, back-projection, image regions, translation estimates.

Conventions (on top of those of :mod:`pose_core.so3`), stated once for the project:

* **Camera frame**: the optical frame, x right, y down, z forward (REP 103's ``*_optical``).
  Pixel coordinates ``(u, v)`` are (column, row) with pixel centres at integers (OpenCV /
  ``sensor_msgs/CameraInfo``), and ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` maps a
  camera-frame point ``p`` to ``(u, v, 1) ~ K p``.
* **Regions** (crops, boxes) are integer pixel boxes ``(u0, v0, u1, v1)`` with exclusive ends
  (:data:`Region`); a region may extend past the image (what lies outside is black in a crop).
* **Depth** is the z coordinate of the surface point (what depth cameras and
  ``sensor_msgs/Image`` ``16UC1`` / ``32FC1`` depth images store), not the distance along the ray.
  A depth of 0, NaN or +-inf means "no measurement".
* **Distance** (``distance=`` arguments) is measured *along the ray* from the camera centre.
* **Translations** are metres in the camera frame; their covariances ``(3, 3)`` m².

Everything here is numpy ``float64``. Bad shapes or values raise :class:`ValueError` naming
what was received.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Region",
    "look_at",
    "intrinsics_matrix",
    "pixel_ray",
    "backproject",
    "clip_region",
    "region_center",
    "square_region",
    "detection_region",
    "TranslationEstimate",
    "valid_depths",
    "median_depth",
    "translation_from_depth",
    "translation_from_nominal",
    "translation_from_box",
    "object_crop",
    "crop_intrinsics",
    "apparent_size",
]

#: Integer pixel box ``(u0, v0, u1, v1)``, ``u1`` and ``v1`` exclusive (module docstring).
Region = tuple[int, int, int, int]

#: ``1.4826 * MAD`` estimates the standard deviation of normally distributed values.
_MAD_TO_STD = 1.4826


# ----------------------------------------------------------------------------- pinhole model


def intrinsics_matrix(K: np.ndarray | list[float]) -> np.ndarray:
    """``K`` as a checked ``(3, 3)`` float64 matrix (accepts the 9 row-major values of ``CameraInfo.k``)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (9,):
        K = K.reshape(3, 3)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3) or (9,), got {K.shape}")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.isfinite(K).all()):
        raise ValueError(f"K must have finite entries and positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def _uv(u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.broadcast_arrays(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
    return u, v


def pixel_ray(K: np.ndarray, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """Unit direction ``(..., 3)`` of the ray through pixel ``(u, v)`` (broadcast ``(...)``), camera frame."""
    K = intrinsics_matrix(K)
    u, v = _uv(u, v)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]  # skew-aware inverse of K
    y = (v - K[1, 2]) / K[1, 1]
    d = np.stack((x, y, np.ones_like(x)), axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def backproject(K: np.ndarray, u: np.ndarray | float, v: np.ndarray | float, depth: np.ndarray | float) -> np.ndarray:
    """Camera-frame point ``(..., 3)`` at pixel ``(u, v)`` with depth (z, m) ``depth``: ``depth * K^-1 (u, v, 1)``.

    Invalid depths (0, NaN, inf) give NaN points.
    """
    K = intrinsics_matrix(K)
    u, v = _uv(u, v)
    z = np.asarray(depth, dtype=np.float64)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
    d = pixel_ray(K, u, v)
    return d / d[..., 2:3] * z[..., None]


# ----------------------------------------------------------------------------- regions


def clip_region(
    region: Region | tuple[float, float, float, float] | None, width: int, height: int
) -> Region:
    """Integer pixel box ``(u0, v0, u1, v1)`` (u1, v1 exclusive) clipped to the image; whole image for ``None``."""
    if region is None:
        return 0, 0, width, height
    if len(region) != 4:
        raise ValueError(f"region must be (u_min, v_min, u_max, v_max), got {region!r}")
    u0, v0, u1, v1 = (float(x) for x in region)
    if not (u1 > u0 and v1 > v0):
        raise ValueError(f"region must have u_max > u_min and v_max > v_min, got {region!r}")
    iu0, iv0 = max(0, int(math.floor(u0))), max(0, int(math.floor(v0)))
    iu1, iv1 = min(width, int(math.ceil(u1))), min(height, int(math.ceil(v1)))
    if iu1 <= iu0 or iv1 <= iv0:
        raise ValueError(f"region {region!r} lies outside the {width}x{height} image")
    return iu0, iv0, iu1, iv1


def region_center(region: tuple[float, float, float, float] | None, width: int, height: int) -> tuple[float, float]:
    """Centre pixel of ``region`` (pixel centres at integers), image centre for ``None``."""
    if region is None:
        return (width - 1) / 2, (height - 1) / 2
    u0, v0, u1, v1 = (float(x) for x in region)
    return (u0 + u1 - 1) / 2, (v0 + v1 - 1) / 2


def square_region(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square ``(u0, v0, u1, v1)`` (exclusive ends) of a ``width x height`` image."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    s = min(width, height)
    u0, v0 = (width - s) // 2, (height - s) // 2
    return u0, v0, u0 + s, v0 + s


def detection_region(
    center: tuple[float, float], box_size: tuple[float, float], scale: float = 1.0
) -> tuple[int, int, int, int]:
    """Square crop ``(u0, v0, u1, v1)`` (exclusive ends) around a detection box; may extend past the image.

    Args:
        center: box centre ``(u, v)`` in pixels (pixel centres at integers, as
            ``vision_msgs/BoundingBox2D.center``).
        box_size: box ``(width, height)`` in pixels, both > 0.
        scale: crop side / the box's longer side (> 0): context kept around the object, to match
            how much of the frame the object filled in training.

    The side is ``max(1, round(scale * max(width, height)))`` and :func:`region_center` of the
    result is ``center`` up to half a pixel, so the crop's viewing ray is the box's.
    """
    cu, cv = (float(x) for x in center)
    w, h = (float(x) for x in box_size)
    if not all(math.isfinite(x) for x in (cu, cv, w, h, float(scale))):
        raise ValueError(f"detection box must be finite, got center {center!r}, size {box_size!r}, scale {scale!r}")
    if w <= 0 or h <= 0 or scale <= 0:
        raise ValueError(f"detection box size and scale must be > 0, got size {box_size!r}, scale {scale!r}")
    side = max(1, round(scale * max(w, h)))
    u0, v0 = round(cu - (side - 1) / 2), round(cv - (side - 1) / 2)
    return u0, v0, u0 + side, v0 + side


# ----------------------------------------------------------------------------- translation


@dataclass(frozen=True)
class TranslationEstimate:
    """Position of the object origin in the camera frame and how well it is known.

    Attributes:
        translation: ``(3,)`` m, camera frame.
        covariance: ``(3, 3)`` m², symmetric positive semi-definite.
        source: ``"depth"`` (measured) or ``"nominal"`` (assumed distance along a ray).
    """

    translation: np.ndarray
    covariance: np.ndarray
    source: str


def valid_depths(depth: np.ndarray, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Valid depths ``(N,)`` float64 inside ``region`` of a depth image ``(H, W)`` (0, NaN, inf dropped)."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be a non-empty image (H, W), got shape {depth.shape}")
    u0, v0, u1, v1 = clip_region(region, depth.shape[1], depth.shape[0])
    values = depth[v0:v1, u0:u1].astype(np.float64).ravel()
    return values[np.isfinite(values) & (values > 0)]


def median_depth(depth: np.ndarray, region: tuple[float, float, float, float] | None = None) -> float | None:
    """Median of the valid depths (m) in ``region`` of ``depth`` ``(H, W)``; ``None`` when there is none."""
    values = valid_depths(depth, region)
    return float(np.median(values)) if values.size else None


def _ray_frame_covariance(ray: np.ndarray, lateral_std: float, along_std: float) -> np.ndarray:
    """``(3, 3)`` covariance with std ``along_std`` along unit ``ray`` and ``lateral_std`` across it."""
    P = np.outer(ray, ray)
    cov = along_std**2 * P + lateral_std**2 * (np.eye(3) - P)
    return (cov + cov.T) / 2


def translation_from_depth(
    K: np.ndarray,
    depth: np.ndarray,
    region: tuple[float, float, float, float] | None = None,
    min_std: float = 0.01,
) -> TranslationEstimate | None:
    """Object position from the median valid depth inside ``region`` of an aligned depth image.

    The point is the back-projection of the region centre at the median depth (the visible
    surface, so it lies in front of the object's origin by up to the object's radius; not
    corrected). Covariance: along the ray, the spread of the depths (``1.4826 * MAD``, at least
    ``min_std``); across it, a quarter of the region's size at that depth (the region centre is
    only roughly the object's centre).

    Args:
        K: intrinsics ``(3, 3)`` of the depth image (aligned: same as the colour image).
        depth: ``(H, W)`` depth in m; 0, NaN and inf are ignored.
        region: ``(u_min, v_min, u_max, v_max)`` pixel box, ``u_max``/``v_max`` exclusive; whole image if None.
        min_std: floor (m) of the standard deviations.

    Returns:
        ``None`` when the region holds no valid depth.
    """
    K = intrinsics_matrix(K)
    depth = np.asarray(depth)
    values = valid_depths(depth, region)
    if values.size == 0:
        return None
    z = float(np.median(values))
    u, v = region_center(region, depth.shape[1], depth.shape[0])
    point = backproject(K, u, v, z)
    ray = point / np.linalg.norm(point)
    along = max(min_std, _MAD_TO_STD * float(np.median(np.abs(values - z))))
    u0, v0, u1, v1 = clip_region(region, depth.shape[1], depth.shape[0])
    half = 0.25 * max((u1 - u0) / K[0, 0], (v1 - v0) / K[1, 1])  # quarter of the region, in rad
    lateral = max(min_std, z * half)
    return TranslationEstimate(point, _ray_frame_covariance(ray, lateral, along), "depth")


def translation_from_nominal(
    distance: float,
    K: np.ndarray | None = None,
    center: tuple[float, float] | None = None,
    along_std: float | None = None,
    lateral_std: float | None = None,
) -> TranslationEstimate:
    """Object assumed at ``distance`` (m) along the ray through ``center``: a guess, and its covariance says so.

    Args:
        distance: nominal distance along the ray (m), > 0.
        K: intrinsics; with ``center`` (pixel ``(u, v)``, e.g. a region centre) they give the ray.
            Without them the ray is the optical axis.
        along_std: std (m) along the ray; default ``distance`` itself (the range is essentially
            unknown: only "in front of the camera, about this far").
        lateral_std: std (m) across the ray; default ``0.1 * distance`` (the direction is known
            from the image much better than the range), or ``distance`` too when there is no
            ``K`` (the direction is then only assumed).
    """
    if not (distance > 0 and math.isfinite(distance)):
        raise ValueError(f"distance must be a finite number > 0, got {distance!r}")
    if (K is None) != (center is None):
        raise ValueError("give both K and center, or neither")
    if K is None:
        ray = np.array([0.0, 0.0, 1.0])
        lateral = distance if lateral_std is None else lateral_std
    else:
        ray = pixel_ray(K, center[0], center[1])
        lateral = 0.1 * distance if lateral_std is None else lateral_std
    along = distance if along_std is None else along_std
    if along < 0 or lateral < 0:
        raise ValueError(f"standard deviations must be >= 0, got along {along}, lateral {lateral}")
    return TranslationEstimate(distance * ray, _ray_frame_covariance(ray, lateral, along), "nominal")


# ----------------------------------------------------------------------------- object-centred crops (SE(3) models)


def apparent_size(vertices: np.ndarray, n_rotations: int = 256, seed: int = 0) -> float:
    """The object's typical size across the view (m): the median, over ``n_rotations`` seeded random
    rotations, of the longer side of the orthographic bounding box of the rotated ``vertices`` ``(N, 3)``
    (m, object frame). A tight detection box of the object at depth ``z`` is then about
    ``f * apparent_size / z`` pixels long (:func:`translation_from_box`)."""
    import torch

    from pose_core import so3

    V = np.asarray(vertices, dtype=np.float64)
    if V.ndim != 2 or V.shape[1] != 3 or len(V) < 2 or not np.isfinite(V).all():
        raise ValueError(f"vertices must be finite (N >= 2, 3), got shape {V.shape}")
    R = so3.random_rotations(n_rotations, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    P = np.einsum("kij,nj->kni", R[:, :2], V)  # (k, N, 2): the x, y of the rotated points
    extent = (P.max(1) - P.min(1)).max(-1)  # (k,)
    return float(np.median(extent))


def translation_from_box(
    K: np.ndarray, box_center: tuple[float, float], box_size: tuple[float, float], apparent_size_m: float
) -> np.ndarray:
    """Initial translation ``(3,)`` (m) of an object from its detection box: depth
    ``z = f * apparent_size_m / max(w, h)`` (``f`` the mean focal length; see :func:`apparent_size`),
    the box centre back-projected at that depth."""
    K = intrinsics_matrix(K)
    u, v = (float(x) for x in box_center)
    w, h = (float(x) for x in box_size)
    if not all(math.isfinite(x) for x in (u, v, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box must be finite with a positive size, got center {box_center!r}, size {box_size!r}")
    if not (apparent_size_m > 0 and math.isfinite(apparent_size_m)):
        raise ValueError(f"apparent_size_m must be a finite number > 0, got {apparent_size_m!r}")
    z = 0.5 * (K[0, 0] + K[1, 1]) * apparent_size_m / max(w, h)
    return backproject(K, u, v, z)


def crop_intrinsics(K: np.ndarray, region: Region | tuple[int, int, int, int], size: int) -> np.ndarray:
    """Intrinsics ``(3, 3)`` of the ``size x size`` model input that :func:`pose_core.preprocess.crop_input`
    makes of the square ``region``: a point's pixel ``u`` in the image is ``(u - u0 + 0.5) * size / side - 0.5``
    in the crop (pixel centres at integers, as the resize keeps them)."""
    K = intrinsics_matrix(K)
    u0, v0, u1, v1 = (int(x) for x in region)
    if u1 - u0 != v1 - v0 or u1 <= u0 or size < 1:
        raise ValueError(f"region must be a non-empty square and size >= 1, got {region!r}, {size!r}")
    s = size / (u1 - u0)
    A = np.array([[s, 0.0, (0.5 - u0) * s - 0.5], [0.0, s, (0.5 - v0) * s - 0.5], [0.0, 0.0, 1.0]])
    return A @ K


def object_crop(
    K: np.ndarray, t_hat: np.ndarray, radius_m: float, size_px: int, padding: float = 1.1
) -> tuple[Region, np.ndarray]:
    """The square crop an SE(3) model sees of an object guessed at ``t_hat`` ``(3,)`` (m, z > 0): centred on
    its projection, side ``2 * padding * radius_m * f / z`` pixels (the bounding sphere's projected diameter
    times ``padding``; ``f`` the mean focal length), and the intrinsics ``(3, 3)`` of its ``size_px`` input
    (:func:`crop_intrinsics`). The region (exclusive ends) may extend past the image."""
    K = intrinsics_matrix(K)
    t = np.asarray(t_hat, dtype=np.float64)
    if t.shape != (3,) or not np.isfinite(t).all() or t[2] <= 0:
        raise ValueError(f"t_hat must be 3 finite numbers with z > 0, got {t_hat!r}")
    if not (radius_m > 0 and padding > 0 and math.isfinite(radius_m * padding)):
        raise ValueError(f"radius_m and padding must be finite and > 0, got {radius_m!r}, {padding!r}")
    uvw = K @ t
    u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
    side = max(1, int(round(2.0 * padding * radius_m * 0.5 * (K[0, 0] + K[1, 1]) / t[2])))
    u0 = int(math.floor(u - (side - 1) / 2 + 0.5))
    v0 = int(math.floor(v - (side - 1) / 2 + 0.5))
    region = (u0, v0, u0 + side, v0 + side)
    return region, crop_intrinsics(K, region, size_px)


def look_at(eye: np.ndarray, target: np.ndarray | None = None,
            up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """World -> camera rotation ``R_cw`` ``(3, 3)`` of an optical-frame camera at ``eye`` ``(3,)`` looking at
    ``target`` (default the origin), image "up" towards ``up``: rows are the camera's x (right), y (down)
    and z (forward) axes in world coordinates, so ``x_camera = R_cw @ (x_world - eye)``. ValueError when
    the camera looks along ``up``."""
    eye = np.asarray(eye, dtype=np.float64)
    tgt = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = tgt - eye
    n = np.linalg.norm(forward)
    if eye.shape != (3,) or tgt.shape != (3,) or not n > 0:
        raise ValueError(f"need eye and target (3,) apart, got {eye} and {tgt}")
    forward = forward / n
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"the camera at {eye} looks along up {up}: its image rotation is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack((right, down, forward))
